//! `KilnModule`: a `cranelift_module::Module` whose definitions kiln links, one unit per
//! definition (or per group of definitions that refer to each other), into its slabs.

use crate::builder::KilnBuilder;
use crate::error::{Error, Result};
use crate::group;
use crate::lazy::{DeclTable, LazyFunctions};
use crate::redefine::RetiredBody;
use crate::resolve::{target_id, DeclInfo, Defined, HostSymbols, Resolver};
use crate::unit::{self, Body, DataInit, Pending};
use cranelift_codegen::binemit::Reloc;
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir;
use cranelift_codegen::isa::unwind::UnwindInfo;
use cranelift_codegen::isa::{OwnedTargetIsa, TargetIsa};
use cranelift_module::{
    DataDescription, DataId, FuncId, FuncOrDataId, Init, Linkage, Module, ModuleDeclarations,
    ModuleError, ModuleReloc, ModuleRelocTarget, ModuleResult,
};
use kiln::{ExecutorAddr, Inputs, Session, UnitId, UnitOptions};
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Cranelift's JIT module on kiln. See the crate documentation.
pub struct KilnModule {
    pub(crate) isa: OwnedTargetIsa,
    pub(crate) declarations: ModuleDeclarations,
    /// Declared ids are below these (to check ids in relocations given to
    /// `define_function_bytes`, which `ModuleDeclarations` would index without a check).
    pub(crate) function_count: u32,
    pub(crate) data_count: u32,
    pub(crate) libcall_names: Arc<dyn Fn(ir::LibCall) -> String + Send + Sync>,
    pub(crate) host: Arc<Mutex<HostSymbols>>,
    /// Shared (weakly) with the resolutions of lazy functions.
    pub(crate) session: Arc<Session>,
    pub(crate) defs: FxHashMap<FuncOrDataId, Def>,
    /// Defined since the last finalize, in definition order.
    pub(crate) pending: Vec<Pending>,
    /// The definitions each live unit holds.
    pub(crate) units: FxHashMap<UnitId, Vec<FuncOrDataId>>,
    /// Why this module cannot define anything (an ISA kiln does not link).
    pub(crate) unsupported: Option<String>,
    /// Bodies replaced by `redefine_function`, not yet reclaimed (`redefine.rs`).
    pub(crate) retired: Vec<RetiredBody>,
    /// The current epoch of the grace protocol.
    pub(crate) epoch: u64,
    /// The declarations, as lazy compilations read them (`lazy.rs`).
    pub(crate) decl_table: Arc<RwLock<DeclTable>>,
    pub(crate) lazy: LazyFunctions,
}

/// Where a definition is.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Def {
    Pending,
    Linked(Linked),
}

#[derive(Copy, Clone, Debug)]
pub(crate) struct Linked {
    pub unit: UnitId,
    pub addr: ExecutorAddr,
    pub size: u64,
}

impl KilnModule {
    /// A module as the builder says: in this process, or in the builder's executor.
    pub fn new(builder: KilnBuilder) -> Self {
        let KilnBuilder {
            isa,
            libcall_names,
            symbols,
            lookup_fns,
            executor,
            debug,
        } = builder;
        let session = Arc::new(match executor {
            Some(e) => Session::new(e),
            None => Session::in_process(),
        });
        if let Some(d) = debug {
            session.set_debug(d);
        }
        // Host names are resolved here, in JITBuilder's order; kiln binds only the module's own
        // names (and its runtime's), so a missing definition is never bound to a host symbol
        // that happens to share its name.
        session.set_process_symbols(false);
        let triple = isa.triple();
        let unsupported = (triple.architecture.to_string() != "x86_64"
            || triple.binary_format.to_string() != "elf")
            .then(|| format!("kiln links x86-64 ELF code; this module's ISA is for {triple}"));
        KilnModule {
            isa,
            declarations: ModuleDeclarations::default(),
            function_count: 0,
            data_count: 0,
            libcall_names: Arc::from(libcall_names),
            host: Arc::new(Mutex::new(HostSymbols::new(symbols, lookup_fns))),
            defs: FxHashMap::default(),
            pending: Vec::new(),
            units: FxHashMap::default(),
            unsupported,
            retired: Vec::new(),
            epoch: 0,
            decl_table: Arc::default(),
            lazy: LazyFunctions::new(session.executor().clone()),
            session,
        }
    }

    /// The kiln session the module links into: debug sinks ([`Session::set_debug`]), statistics,
    /// dependencies between units.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Link everything defined since the last call, each definition its own unit (definitions
    /// that refer to each other share one). Every name their code refers to must be defined by
    /// now: in this batch, an earlier one, or the host. If a unit fails to link, the units
    /// before it stay linked and the rest stay pending.
    pub fn finalize_definitions(&mut self) -> ModuleResult<()> {
        Ok(self.finalize()?)
    }

    /// Define a function from a `Context` that Cranelift has compiled already (with
    /// `Context::compile` and this module's ISA), without compiling it again: functions can be
    /// compiled on other threads and defined here. `define_function` is `compile` then this.
    pub fn define_compiled_function(
        &mut self,
        id: FuncId,
        ctx: &cranelift_codegen::Context,
    ) -> ModuleResult<()> {
        self.check_declared_function(id)?;
        self.check_definable(FuncOrDataId::Func(id))?;
        let (body, relocs) = self.compiled_body(id, ctx)?;
        self.check_targets(&self.name_of(FuncOrDataId::Func(id)), &relocs)?;
        self.add_pending(FuncOrDataId::Func(id), body, relocs);
        Ok(())
    }

    /// The code, unwind information and relocations of `id` as `ctx` compiled it.
    pub(crate) fn compiled_body(
        &self,
        id: FuncId,
        ctx: &cranelift_codegen::Context,
    ) -> ModuleResult<(Body, Vec<ModuleReloc>)> {
        compiled_body(&*self.isa, id, ctx)
    }
}

/// The code, unwind information and relocations of `id` as `ctx` compiled it for `isa`.
pub(crate) fn compiled_body(
    isa: &dyn TargetIsa,
    id: FuncId,
    ctx: &cranelift_codegen::Context,
) -> ModuleResult<(Body, Vec<ModuleReloc>)> {
    let compiled = ctx.compiled_code().ok_or_else(|| {
        ModuleError::Backend(anyhow::anyhow!(
            "the context holds no compiled code: call Context::compile first"
        ))
    })?;
    let relocs: Vec<ModuleReloc> = compiled
        .buffer
        .relocs()
        .iter()
        .map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, id))
        .collect();
    let unwind = match compiled.create_unwind_info(isa)? {
        Some(UnwindInfo::SystemV(info)) => Some(info),
        _ => None,
    };
    let body = Body::Code {
        bytes: compiled.code_buffer().to_vec(),
        align: code_alignment(isa, compiled.buffer.alignment.into()),
        unwind,
    };
    Ok((body, relocs))
}

/// Code alignment as cranelift-jit computes it.
pub(crate) fn code_alignment(isa: &dyn TargetIsa, alignment: u64) -> u64 {
    alignment
        .max(isa.function_alignment().minimum.into())
        .max(isa.symbol_alignment())
        .max(1)
}

impl KilnModule {
    /// The address of a finalized function: in this process, or in the executor's.
    ///
    /// # Panics
    /// If the function is not finalized (as `JITModule` does); [`KilnModule::function_address`]
    /// returns an error instead.
    pub fn get_finalized_function(&self, func_id: FuncId) -> *const u8 {
        match self.function_address(func_id) {
            Ok(a) => a.0 as usize as *const u8,
            Err(e) => panic!("{e}"),
        }
    }

    /// The address and size of a finalized data object.
    ///
    /// # Panics
    /// If the data object is not finalized; [`KilnModule::data_address`] returns an error
    /// instead.
    pub fn get_finalized_data(&self, data_id: DataId) -> (*const u8, usize) {
        match self.data_address(data_id) {
            Ok((a, size)) => (a.0 as usize as *const u8, size as usize),
            Err(e) => panic!("{e}"),
        }
    }

    /// The executor address of a finalized function.
    pub fn function_address(&self, func_id: FuncId) -> Result<ExecutorAddr> {
        self.linked(FuncOrDataId::Func(func_id)).map(|l| l.addr)
    }

    /// The executor address and size of a finalized data object.
    pub fn data_address(&self, data_id: DataId) -> Result<(ExecutorAddr, u64)> {
        self.linked(FuncOrDataId::Data(data_id))
            .map(|l| (l.addr, l.size))
    }

    pub(crate) fn linked(&self, id: FuncOrDataId) -> Result<Linked> {
        match self.defs.get(&id) {
            Some(Def::Linked(l)) => Ok(*l),
            _ => Err(Error::NotFinalized(self.name_of(id))),
        }
    }

    /// Call `int f(int argc, char **argv, char **envp)` in the executor, with `args` as
    /// `argv`. This is how code runs in another process: an address there cannot be called
    /// from here, and the executor's protocol calls `main`-shaped and `void(void)` functions
    /// (other signatures: compile a wrapper of this shape that calls them).
    pub fn run_main(&self, func_id: FuncId, args: &[String]) -> Result<i32> {
        let addr = self.function_address(func_id)?;
        Ok(self.session.executor().run_main(addr, args)?)
    }

    /// Call `void f(void)` in the executor.
    pub fn call_void(&self, func_id: FuncId) -> Result<()> {
        let addr = self.function_address(func_id)?;
        Ok(self.session.executor().call_void(addr)?)
    }

    /// Call a finalized function with up to six integer or pointer arguments (System V
    /// registers) and return its 64-bit integer result, in the executor: in this process, or
    /// in a `kiln-executor` ([`KilnBuilder::executor`]). The executor checks that the address
    /// is code of a live unit; that the function's signature takes these arguments (and that
    /// pointers are the executor's) is the caller's declaration, as with `run_main`.
    pub fn call(&self, func_id: FuncId, args: &[u64]) -> Result<u64> {
        let addr = self.function_address(func_id)?;
        Ok(self.session.executor().call(addr, args)?)
    }

    /// Free one finalized function: its memory goes back to kiln's slab, its symbol and its
    /// registrations (unwinder, gdb, perf) are gone, and it may be defined again. Refused while
    /// other live definitions refer to it ([`Error::Referenced`]) or while it shares its unit
    /// with others ([`Error::SharesUnit`]; use [`KilnModule::free_definitions`]).
    pub fn free_function(&mut self, func_id: FuncId) -> Result<()> {
        self.free_definitions(&[FuncOrDataId::Func(func_id)])
    }

    /// Free one finalized data object, as [`KilnModule::free_function`].
    pub fn free_data(&mut self, data_id: DataId) -> Result<()> {
        self.free_definitions(&[FuncOrDataId::Data(data_id)])
    }

    /// Free these definitions together (for definitions that refer to each other, which were
    /// linked as one unit). Nothing is freed unless all of them can be.
    pub fn free_definitions(&mut self, ids: &[FuncOrDataId]) -> Result<()> {
        let mut units: Vec<UnitId> = Vec::new();
        for id in ids {
            if let FuncOrDataId::Func(f) = id {
                if self.lazy.contains(*f) {
                    return Err(Error::Unsupported(format!(
                        "{} is a lazy function: it lives as long as the module",
                        self.name_of(*id)
                    )));
                }
            }
            let unit = self.linked(*id)?.unit;
            if !units.contains(&unit) {
                units.push(unit);
            }
        }
        for unit in &units {
            let members = self.units.get(unit).map(Vec::as_slice).unwrap_or(&[]);
            let left_out: Vec<String> = members
                .iter()
                .filter(|m| !ids.contains(m))
                .map(|m| self.name_of(*m))
                .collect();
            if !left_out.is_empty() {
                let name = members
                    .iter()
                    .find(|m| ids.contains(m))
                    .map_or_else(String::new, |m| self.name_of(*m));
                return Err(Error::SharesUnit {
                    name,
                    with: left_out,
                });
            }
            let outside: Vec<UnitId> = self
                .session
                .dependents(*unit)
                .map_err(|e| self.link_error(*unit, e))?
                .into_iter()
                .filter(|d| !units.contains(d))
                .collect();
            if !outside.is_empty() {
                return Err(Error::Referenced {
                    name: self.unit_names(*unit),
                    referenced_by: outside.iter().map(|d| self.unit_names(*d)).collect(),
                });
            }
        }
        // Newest first: a unit's dependents are always newer than it.
        units.sort_unstable_by(|a, b| b.cmp(a));
        for unit in units {
            self.session
                .remove(unit)
                .map_err(|e| self.link_error(unit, e))?;
            for id in self.units.remove(&unit).unwrap_or_default() {
                self.defs.remove(&id);
            }
        }
        Ok(())
    }

    /// Free everything the module linked (as `JITModule::free_memory`).
    pub fn free_memory(self) {
        drop(self);
    }

    /// Free everything, reporting the first failure (an executor that is gone, say).
    pub fn close(self) -> Result<()> {
        let KilnModule { session, lazy, .. } = self;
        drop(lazy);
        let session = Arc::try_unwrap(session).map_err(|_| {
            Error::Unsupported(
                "a lazy function is being compiled on another thread: close the module after it"
                    .into(),
            )
        })?;
        session.close().map_err(|source| Error::Link {
            unit: "the module's units".into(),
            source,
        })
    }

    pub(crate) fn link_error(&self, unit: UnitId, source: kiln::Error) -> Error {
        Error::Link {
            unit: self.unit_names(unit),
            source,
        }
    }

    /// The linkage names of a unit's definitions.
    pub(crate) fn unit_names(&self, unit: UnitId) -> String {
        match self.units.get(&unit) {
            Some(m) => m
                .iter()
                .map(|id| self.name_of(*id))
                .collect::<Vec<_>>()
                .join(" + "),
            None => match self.retired.iter().find(|r| r.unit == unit) {
                Some(r) => format!(
                    "a retired body of {} ({unit}: reclaim it first)",
                    self.name_of(FuncOrDataId::Func(r.function))
                ),
                None => unit.to_string(),
            },
        }
    }

    pub(crate) fn name_of(&self, id: FuncOrDataId) -> String {
        match id {
            FuncOrDataId::Func(f) if f.as_u32() < self.function_count => self
                .declarations
                .get_function_decl(f)
                .linkage_name(f)
                .into_owned(),
            FuncOrDataId::Data(d) if d.as_u32() < self.data_count => self
                .declarations
                .get_data_decl(d)
                .linkage_name(d)
                .into_owned(),
            other => format!("undeclared {other:?}"),
        }
    }

    // ---- finalizing ----

    fn finalize(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let index: FxHashMap<FuncOrDataId, usize> =
            pending.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
        let mut refs: Vec<Vec<usize>> = vec![Vec::new(); pending.len()];
        for (i, p) in pending.iter().enumerate() {
            for r in &p.relocs {
                let Some(&j) = target_id(&r.name).and_then(|id| index.get(&id)) else {
                    continue;
                };
                refs[i].push(j);
                // Kiln binds a TLS reference only inside one unit: code and the thread-local
                // data it uses are linked together.
                if self.is_tls(pending[j].id) {
                    refs[j].push(i);
                }
            }
        }
        let mut linked = vec![false; pending.len()];
        let mut result = Ok(());
        for group in group::link_order(&refs) {
            if let Err(e) = self.link_group(&pending, &group) {
                result = Err(e);
                break;
            }
            for i in group {
                linked[i] = true;
            }
        }
        self.pending = pending
            .into_iter()
            .zip(linked)
            .filter_map(|(p, done)| (!done).then_some(p))
            .collect();
        result
    }

    fn is_tls(&self, id: FuncOrDataId) -> bool {
        match id {
            FuncOrDataId::Data(d) => self.declarations.get_data_decl(d).tls,
            FuncOrDataId::Func(_) => false,
        }
    }

    /// Link one group of pending definitions as a unit and record where they are.
    fn link_group(&mut self, pending: &[Pending], group: &[usize]) -> Result<()> {
        let members: Vec<&Pending> = group.iter().map(|&i| &pending[i]).collect();
        let (inputs, unit_name) = self.unit_inputs(&members)?;
        let scope = self.session.default_scope();
        let unit = self
            .session
            .link_inputs_with(&inputs, &self.unit_options())
            .map_err(|source| Error::Link {
                unit: unit_name,
                source,
            })?;
        for p in &members {
            let linked = self.linked_in(unit, scope, p);
            self.defs.insert(p.id, Def::Linked(linked));
        }
        self.units
            .insert(unit, members.iter().map(|p| p.id).collect());
        Ok(())
    }

    /// How every unit is linked: in the session's default scope, keeping its edges (a relink
    /// record) so that `redefine_function` can point its calls at a new body.
    pub(crate) fn unit_options(&self) -> UnitOptions {
        UnitOptions {
            relink: true,
            ..UnitOptions::new(self.session.default_scope())
        }
    }

    /// Where `p` is, linked in `unit`.
    pub(crate) fn linked_in(&self, unit: UnitId, scope: kiln::ScopeId, p: &Pending) -> Linked {
        let addr = self
            .session
            .lookup_symbol(scope, &p.name)
            .filter(|s| s.unit == unit)
            .map_or(ExecutorAddr::NULL, |s| s.addr);
        Linked {
            unit,
            addr,
            size: p.size(),
        }
    }

    /// The kiln inputs of a unit holding `members` (its ELF object, its hidden symbols as
    /// roots), and the unit's name.
    pub(crate) fn unit_inputs(&self, members: &[&Pending]) -> Result<(Inputs, String)> {
        let member_index: FxHashMap<FuncOrDataId, usize> =
            members.iter().enumerate().map(|(k, p)| (p.id, k)).collect();
        let object = {
            let declarations = &self.declarations;
            let mut host = crate::resolve::lock(&self.host);
            let mut resolver = Resolver {
                decl: &|id| DeclInfo::of(declarations, id),
                defined: Defined::Now(&self.defs),
                members: &member_index,
                host: &mut host,
                session: &self.session,
                libcall_names: &*self.libcall_names,
            };
            unit::build(&*self.isa, members, |p, target| resolver.resolve(p, target))?
        };
        Ok(object.into_inputs())
    }

    // ---- defining ----

    /// Checks every definition makes first.
    pub(crate) fn check_definable(&self, id: FuncOrDataId) -> ModuleResult<()> {
        let (name, linkage) = match id {
            FuncOrDataId::Func(f) => {
                let d = self.declarations.get_function_decl(f);
                (d.linkage_name(f), d.linkage)
            }
            FuncOrDataId::Data(d) => {
                let decl = self.declarations.get_data_decl(d);
                (decl.linkage_name(d), decl.linkage)
            }
        };
        if let Some(why) = &self.unsupported {
            return Err(Error::Unsupported(why.clone()).into());
        }
        if !linkage.is_definable() {
            return Err(ModuleError::InvalidImportDefinition(name.into_owned()));
        }
        if self.defs.contains_key(&id) {
            return Err(ModuleError::DuplicateDefinition(name.into_owned()));
        }
        if name.is_empty() || name.contains('\0') {
            return Err(Error::Unsupported(format!(
                "{name:?} cannot be a symbol name (empty, or containing a NUL byte)"
            ))
            .into());
        }
        Ok(())
    }

    fn add_pending(&mut self, id: FuncOrDataId, body: Body, relocs: Vec<ModuleReloc>) {
        let (name, linkage) = match id {
            FuncOrDataId::Func(f) => {
                let d = self.declarations.get_function_decl(f);
                (d.linkage_name(f).into_owned(), d.linkage)
            }
            FuncOrDataId::Data(d) => {
                let decl = self.declarations.get_data_decl(d);
                (decl.linkage_name(d).into_owned(), decl.linkage)
            }
        };
        self.defs.insert(id, Def::Pending);
        self.pending.push(Pending {
            id,
            name,
            linkage,
            body,
            relocs,
        });
    }

    /// Code alignment as cranelift-jit computes it.
    pub(crate) fn code_alignment(&self, alignment: u64) -> u64 {
        code_alignment(&*self.isa, alignment)
    }

    /// Relocation targets that name declarations must name existing ones.
    pub(crate) fn check_targets(&self, name: &str, relocs: &[ModuleReloc]) -> ModuleResult<()> {
        for r in relocs {
            let known = match target_id(&r.name) {
                Some(FuncOrDataId::Func(f)) => f.as_u32() < self.function_count,
                Some(FuncOrDataId::Data(d)) => d.as_u32() < self.data_count,
                None => !matches!(r.name, ModuleRelocTarget::User { .. }),
            };
            if !known {
                return Err(ModuleError::Undeclared(format!(
                    "{} (relocation at offset {:#x} of {name})",
                    r.name, r.offset
                )));
            }
        }
        Ok(())
    }
}

impl Module for KilnModule {
    fn isa(&self) -> &dyn TargetIsa {
        &*self.isa
    }

    fn declarations(&self) -> &ModuleDeclarations {
        &self.declarations
    }

    fn declare_function(
        &mut self,
        name: &str,
        linkage: Linkage,
        signature: &ir::Signature,
    ) -> ModuleResult<FuncId> {
        let (id, _) = self
            .declarations
            .declare_function(name, linkage, signature)?;
        self.function_count = self.function_count.max(id.as_u32() + 1);
        self.share_function(id);
        Ok(id)
    }

    fn declare_anonymous_function(&mut self, signature: &ir::Signature) -> ModuleResult<FuncId> {
        let id = self.declarations.declare_anonymous_function(signature)?;
        self.function_count = self.function_count.max(id.as_u32() + 1);
        self.share_function(id);
        Ok(id)
    }

    fn declare_data(
        &mut self,
        name: &str,
        linkage: Linkage,
        writable: bool,
        tls: bool,
    ) -> ModuleResult<DataId> {
        if let Some(FuncOrDataId::Data(d)) = self.declarations.get_name(name) {
            // ModuleDeclarations asserts on this; an error is kinder.
            if self.declarations.get_data_decl(d).tls != tls {
                return Err(ModuleError::IncompatibleDeclaration(name.to_string()));
            }
        }
        let (id, _) = self
            .declarations
            .declare_data(name, linkage, writable, tls)?;
        self.data_count = self.data_count.max(id.as_u32() + 1);
        self.share_data(id);
        Ok(id)
    }

    fn declare_anonymous_data(&mut self, writable: bool, tls: bool) -> ModuleResult<DataId> {
        let id = self.declarations.declare_anonymous_data(writable, tls)?;
        self.data_count = self.data_count.max(id.as_u32() + 1);
        self.share_data(id);
        Ok(id)
    }

    fn define_function_with_control_plane(
        &mut self,
        id: FuncId,
        ctx: &mut cranelift_codegen::Context,
        ctrl_plane: &mut ControlPlane,
    ) -> ModuleResult<()> {
        self.check_declared_function(id)?;
        self.check_definable(FuncOrDataId::Func(id))?;
        ctx.compile(&*self.isa, ctrl_plane)?;
        self.define_compiled_function(id, ctx)
    }

    fn define_function_bytes(
        &mut self,
        id: FuncId,
        alignment: u64,
        bytes: &[u8],
        relocs: &[ModuleReloc],
    ) -> ModuleResult<()> {
        self.check_declared_function(id)?;
        self.check_definable(FuncOrDataId::Func(id))?;
        let name = self.name_of(FuncOrDataId::Func(id));
        self.check_targets(&name, relocs)?;
        if !alignment.is_power_of_two() || alignment > 1 << 30 {
            return Err(Error::Unsupported(format!(
                "{name}: alignment {alignment} is not a power of two up to 2^30"
            ))
            .into());
        }
        let body = Body::Code {
            bytes: bytes.to_vec(),
            align: self.code_alignment(alignment),
            unwind: None,
        };
        self.add_pending(FuncOrDataId::Func(id), body, relocs.to_vec());
        Ok(())
    }

    fn define_data(&mut self, id: DataId, data: &DataDescription) -> ModuleResult<()> {
        if id.as_u32() >= self.data_count {
            return Err(ModuleError::Undeclared(format!("{id}")));
        }
        self.check_definable(FuncOrDataId::Data(id))?;
        let decl = self.declarations.get_data_decl(id);
        let (writable, tls) = (decl.writable, decl.tls);
        let name = decl.linkage_name(id).into_owned();
        // cranelift-jit's defaults: pointer alignment for writable data, none for read-only.
        let align = data.align.unwrap_or(if writable { 8 } else { 1 });
        if !align.is_power_of_two() || align > 1 << 30 {
            return Err(Error::Unsupported(format!(
                "{name}: alignment {align} is not a power of two up to 2^30"
            ))
            .into());
        }
        // At least one byte, as in cranelift-jit: every data object has an address of its own.
        let init = match &data.init {
            Init::Uninitialized => {
                return Err(Error::Unsupported(format!(
                    "{name}: the data description has no contents (Init::Uninitialized)"
                ))
                .into())
            }
            Init::Zeros { size } => DataInit::Zeros((*size).max(1) as u64),
            Init::Bytes { contents } if contents.is_empty() => DataInit::Bytes(vec![0]),
            Init::Bytes { contents } => DataInit::Bytes(contents.to_vec()),
        };
        let relocs: Vec<ModuleReloc> = data.all_relocs(Reloc::Abs8).collect();
        self.check_targets(&name, &relocs)?;
        // Relocated fields need bytes to live in (a zero-fill section has none).
        let init = match init {
            DataInit::Zeros(n) if !relocs.is_empty() => DataInit::Bytes(vec![0; n as usize]),
            other => other,
        };
        let body = Body::Data {
            init,
            align,
            writable,
            tls,
        };
        self.add_pending(FuncOrDataId::Data(id), body, relocs);
        Ok(())
    }
}

impl KilnModule {
    /// Copy a function's declaration (new, or changed by a later declaration) for lazy
    /// compilations.
    fn share_function(&self, id: FuncId) {
        let decl = self.declarations.get_function_decl(id);
        let mut table = self.decl_table.write().unwrap_or_else(|e| e.into_inner());
        table.set_function(id, decl);
    }

    fn share_data(&self, id: DataId) {
        let decl = self.declarations.get_data_decl(id);
        let mut table = self.decl_table.write().unwrap_or_else(|e| e.into_inner());
        table.set_data(id, decl);
    }

    pub(crate) fn check_declared_function(&self, id: FuncId) -> ModuleResult<()> {
        if id.as_u32() >= self.function_count {
            return Err(ModuleError::Undeclared(format!("{id}")));
        }
        Ok(())
    }
}

impl std::fmt::Debug for KilnModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KilnModule")
            .field("isa", &self.isa.triple().to_string())
            .field("definitions", &self.defs.len())
            .field("pending", &self.pending.len())
            .field("units", &self.units.len())
            .finish()
    }
}
