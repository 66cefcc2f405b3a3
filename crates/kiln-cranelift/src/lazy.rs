//! Lazy functions: declared with a compile callback, callable at once, compiled on their first
//! call.
//!
//! [`KilnModule::declare_lazy_function`] declares the function and links a **stub** under its
//! name (kiln's `lazy_stub_graph`: `movabs $key, %r11; jmp *slot`, the slot pointing at the
//! executor's resolver trampoline). The module's other functions call the stub like any
//! definition, and [`KilnModule::get_finalized_function`] returns its address. The first call,
//! from any thread, enters the trampoline, which runs the resolution once (concurrent first
//! callers wait for it):
//!
//! 1. the callback fills a [`Context`] whose signature and name are set (it may refer to the
//!    module's functions and data through [`LazyModule`]);
//! 2. Cranelift compiles it, and it is linked as a unit of its own, its code under `NAME.code`
//!    (a hidden symbol; the stub keeps the public name);
//! 3. kiln's `Session::bypass_lazy_stub` points the stub's slot at the code and changes the call
//!    that entered the stub, and every direct call of the stub in the module's units (they keep
//!    relink records), to call the code directly;
//! 4. the trampoline continues into the code with the caller's arguments untouched.
//!
//! A callback error, a Cranelift error or a failed link goes to the handler set with
//! [`KilnModule::set_lazy_error_handler`], which says where that call and every later one
//! continue; without a handler the process that runs the code aborts (a call cannot return an
//! error). [`KilnModule::lazy_status`] tells the message afterwards.
//!
//! This is what kiln-jit's `Jit::declare_lazy` does for graphs linked into its zone; this crate
//! links ELF objects (see `unit.rs`), so it uses the same kiln primitives (the executor's
//! `declare_lazy`, `lazy_stub_graph`, `bypass_lazy_stub`) directly.
//!
//! The callback runs while the module may be in use on another thread: it sees the module
//! through [`LazyModule`] (declarations, ISA), not `&mut KilnModule`. A reference from the
//! lazy body to a module definition binds by name to whatever is linked when it is compiled;
//! one that is not linked fails the resolution. Lazy functions live as long as the module
//! (their stubs and code are reached by callers kiln does not track): they cannot be freed or
//! redefined.

use crate::error::{Error, Result};
use crate::module::{compiled_body, Def, KilnModule, Linked};
use crate::resolve::{lock, DeclInfo, Defined, HostSymbols, Resolver};
use crate::unit::{self, Pending};
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::{self, UserFuncName};
use cranelift_codegen::isa::{OwnedTargetIsa, TargetFrontendConfig, TargetIsa};
use cranelift_codegen::Context;
use cranelift_module::{
    DataDeclaration, DataId, FuncId, FuncOrDataId, FunctionDeclaration, Linkage, Module,
    ModuleResult,
};
use kiln::{Executor, ExecutorAddr, Session, UnitId, UnitOptions};
use kiln_target::{LazyErrorHandler, LazyHandler, LazyRequest, StubKey};
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

/// The module's declarations as lazy compilations see them: copied at every declaration, so
/// that a callback running on another thread can read them without the module.
#[derive(Default)]
pub(crate) struct DeclTable {
    pub functions: Vec<Option<FunctionDeclaration>>,
    pub data: Vec<Option<DataDeclaration>>,
}

impl DeclTable {
    pub fn set_function(&mut self, id: FuncId, decl: &FunctionDeclaration) {
        // (Cranelift's declarations are not `Clone`.)
        let copy = FunctionDeclaration {
            name: decl.name.clone(),
            linkage: decl.linkage,
            signature: decl.signature.clone(),
        };
        set(&mut self.functions, id.as_u32() as usize, copy);
    }

    pub fn set_data(&mut self, id: DataId, decl: &DataDeclaration) {
        let copy = DataDeclaration {
            name: decl.name.clone(),
            linkage: decl.linkage,
            writable: decl.writable,
            tls: decl.tls,
        };
        set(&mut self.data, id.as_u32() as usize, copy);
    }

    fn info(&self, id: FuncOrDataId) -> Option<DeclInfo> {
        Some(match id {
            FuncOrDataId::Func(f) => {
                let d = self.functions.get(f.as_u32() as usize)?.as_ref()?;
                DeclInfo {
                    name: d.linkage_name(f).into_owned(),
                    linkage: d.linkage,
                    tls: false,
                }
            }
            FuncOrDataId::Data(id) => {
                let d = self.data.get(id.as_u32() as usize)?.as_ref()?;
                DeclInfo {
                    name: d.linkage_name(id).into_owned(),
                    linkage: d.linkage,
                    tls: d.tls,
                }
            }
        })
    }
}

fn set<T>(v: &mut Vec<Option<T>>, i: usize, value: T) {
    if v.len() <= i {
        v.resize_with(i + 1, || None);
    }
    v[i] = Some(value);
}

/// What lazy resolutions share with the module.
pub(crate) struct LazyShared {
    pub isa: OwnedTargetIsa,
    pub decls: Arc<RwLock<DeclTable>>,
    pub host: Arc<Mutex<HostSymbols>>,
    pub libcall_names: Arc<dyn Fn(ir::LibCall) -> String + Send + Sync>,
    /// Weak: the session's executor holds the resolution handlers.
    pub session: Weak<Session>,
}

/// The module as a compile callback sees it: its ISA and declarations.
pub struct LazyModule<'a> {
    shared: &'a LazyShared,
    id: FuncId,
    name: &'a str,
}

impl LazyModule<'_> {
    /// The function being compiled.
    pub fn func_id(&self) -> FuncId {
        self.id
    }

    /// Its linkage name.
    pub fn name(&self) -> &str {
        self.name
    }

    pub fn isa(&self) -> &dyn TargetIsa {
        &*self.shared.isa
    }

    /// For `FunctionBuilder::finalize`.
    pub fn target_config(&self) -> TargetFrontendConfig {
        self.shared.isa.frontend_config()
    }

    /// `Module::declare_func_in_func`: a reference to module function `id` in `func`.
    pub fn declare_func_in_func(
        &self,
        id: FuncId,
        func: &mut ir::Function,
    ) -> std::result::Result<ir::FuncRef, String> {
        let decls = self.shared.decls.read().unwrap_or_else(|e| e.into_inner());
        let decl = decls
            .functions
            .get(id.as_u32() as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("{id} is not declared"))?;
        let signature = func.import_signature(decl.signature.clone());
        let name = func.declare_imported_user_function(ir::UserExternalName {
            namespace: 0,
            index: id.as_u32(),
        });
        Ok(func.import_function(ir::ExtFuncData {
            name: ir::ExternalName::user(name),
            signature,
            colocated: decl.linkage.is_final(),
            patchable: false,
        }))
    }

    /// `Module::declare_data_in_func`: a reference to module data object `id` in `func`.
    pub fn declare_data_in_func(
        &self,
        id: DataId,
        func: &mut ir::Function,
    ) -> std::result::Result<ir::GlobalValue, String> {
        let decls = self.shared.decls.read().unwrap_or_else(|e| e.into_inner());
        let decl = decls
            .data
            .get(id.as_u32() as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("{id} is not declared"))?;
        let name = func.declare_imported_user_function(ir::UserExternalName {
            namespace: 1,
            index: id.as_u32(),
        });
        Ok(func.create_global_value(ir::GlobalValueData::Symbol {
            name: ir::ExternalName::user(name),
            offset: ir::immediates::Imm64::new(0),
            colocated: decl.linkage.is_final(),
            tls: decl.tls,
        }))
    }
}

/// What a compile callback gets: the context to fill (signature and name set; the callback
/// builds the body, e.g. with `cranelift_frontend::FunctionBuilder` on `ctx.func`) and the
/// module.
pub struct LazyBuild<'a> {
    pub ctx: &'a mut Context,
    pub module: LazyModule<'a>,
}

/// A compile callback of [`KilnModule::declare_lazy_function`].
pub type LazyCompile = dyn Fn(&mut LazyBuild<'_>) -> std::result::Result<(), String> + Send + Sync;

/// Where a lazy function stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LazyStatus {
    /// Not called yet (or being compiled by its first call right now).
    NotCompiled,
    /// Compiled into `unit`, its code at `code`.
    Compiled { unit: UnitId, code: ExecutorAddr },
    /// Its resolution failed with this message; the error handler chose where calls go.
    Failed(String),
}

/// One lazy function, shared by the module and its resolution handler.
pub(crate) struct LazyEntry {
    id: FuncId,
    name: String,
    signature: ir::Signature,
    /// The stub's address, once linked (a first call racing with the declaration leaves the
    /// stub alone: still correct, through the trampoline).
    stub: OnceLock<ExecutorAddr>,
    status: Mutex<LazyStatus>,
}

/// The lazy functions of a module; forgets their keys in the executor when the module goes.
pub(crate) struct LazyFunctions {
    executor: Arc<dyn Executor>,
    by_id: FxHashMap<FuncId, (Arc<LazyEntry>, StubKey)>,
    /// Key → name, for the error handler (which runs without the module).
    names: Arc<Mutex<FxHashMap<u64, String>>>,
}

impl LazyFunctions {
    pub fn new(executor: Arc<dyn Executor>) -> Self {
        LazyFunctions {
            executor,
            by_id: FxHashMap::default(),
            names: Arc::default(),
        }
    }

    pub fn contains(&self, id: FuncId) -> bool {
        self.by_id.contains_key(&id)
    }
}

impl Drop for LazyFunctions {
    fn drop(&mut self) {
        for (_, key) in self.by_id.values() {
            let _ = self.executor.forget_lazy(*key);
        }
    }
}

/// Where a call of a lazy function that could not be compiled continues: given the function's
/// name (`None` for a key of another module: in process the executor's handler is one per
/// process) and the message, an address taking the same arguments, or `None` to abort.
pub type LazyErrorFn = Arc<dyn Fn(Option<&str>, &str) -> Option<ExecutorAddr> + Send + Sync>;

impl KilnModule {
    /// Declare `name` as a function compiled by `compile` on its first call. It is callable at
    /// once: [`KilnModule::get_finalized_function`] returns its stub's address, and functions of
    /// the module may call it. `compile` runs at most once, on the thread of the first call;
    /// it fills the [`LazyBuild`]'s context (see the module documentation of `lazy.rs`). An
    /// error from it, from Cranelift or from the link goes to the lazy error handler
    /// ([`KilnModule::set_lazy_error_handler`]).
    ///
    /// `linkage` must be definable (not `Import`); the function must not be defined already.
    pub fn declare_lazy_function(
        &mut self,
        name: &str,
        linkage: Linkage,
        signature: &ir::Signature,
        compile: impl Fn(&mut LazyBuild<'_>) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> ModuleResult<FuncId> {
        let id = self.declare_function(name, linkage, signature)?;
        self.check_definable(FuncOrDataId::Func(id))?;
        let fid = FuncOrDataId::Func(id);
        let entry = Arc::new(LazyEntry {
            id,
            name: self.name_of(fid),
            signature: signature.clone(),
            stub: OnceLock::new(),
            status: Mutex::new(LazyStatus::NotCompiled),
        });
        let shared = Arc::new(self.lazy_shared());
        let compile: Arc<LazyCompile> = Arc::new(compile);
        let handler: LazyHandler = {
            let entry = entry.clone();
            Arc::new(move |request| resolve(&shared, &entry, &*compile, request))
        };
        let ex = self.session.executor().clone();
        let key = ex.declare_lazy(handler).map_err(Error::from)?;
        let stub = kiln::lazy_stub_graph(&entry.name, key);
        let linked = self
            .session
            .link_graph_with(&stub, &self.unit_options())
            .map_err(|source| Error::Link {
                unit: format!("the lazy stub of {}", entry.name),
                source,
            })
            .and_then(|unit| {
                let info = self
                    .session
                    .lookup_symbol(self.session.default_scope(), &entry.name)
                    .filter(|s| s.unit == unit)
                    .ok_or_else(|| {
                        Error::Unsupported(format!("{}: the stub is not it", entry.name))
                    })?;
                Ok((unit, info))
            });
        let (unit, info) = match linked {
            Ok(l) => l,
            Err(e) => {
                let _ = ex.forget_lazy(key);
                return Err(e.into());
            }
        };
        let _ = entry.stub.set(info.addr);
        self.defs.insert(
            fid,
            Def::Linked(Linked {
                unit,
                addr: info.addr,
                size: info.size,
            }),
        );
        self.units.insert(unit, vec![fid]);
        lock(&self.lazy.names).insert(key.0, entry.name.clone());
        self.lazy.by_id.insert(id, (entry, key));
        Ok(id)
    }

    /// Where lazy function `id` stands (`None`: not a lazy function of this module).
    pub fn lazy_status(&self, id: FuncId) -> Option<LazyStatus> {
        let (entry, _) = self.lazy.by_id.get(&id)?;
        Some(lock(&entry.status).clone())
    }

    /// Set (or with `None` remove) the handler that says where a call of a lazy function that
    /// could not be compiled continues (see [`LazyErrorFn`]). It runs once per failed
    /// function, on the thread of the call in process, in the controller out of process. In
    /// process it is one for the whole process (the executor's): the last one set wins.
    pub fn set_lazy_error_handler(&self, handler: Option<LazyErrorFn>) -> Result<()> {
        let ex = self.session.executor();
        let Some(handler) = handler else {
            return Ok(ex.set_lazy_error_handler(None)?);
        };
        let names = Arc::downgrade(&self.lazy.names);
        let wrapped: LazyErrorHandler = Arc::new(move |key: StubKey, message: &str| {
            let name = names.upgrade().and_then(|n| lock(&n).get(&key.0).cloned());
            handler(name.as_deref(), message)
        });
        Ok(ex.set_lazy_error_handler(Some(wrapped))?)
    }

    fn lazy_shared(&self) -> LazyShared {
        LazyShared {
            isa: self.isa.clone(),
            decls: self.decl_table.clone(),
            host: self.host.clone(),
            libcall_names: self.libcall_names.clone(),
            session: Arc::downgrade(&self.session),
        }
    }
}

/// A first call of `entry`'s function: compile, link, bypass the stub; the code's address.
fn resolve(
    shared: &LazyShared,
    entry: &LazyEntry,
    compile: &LazyCompile,
    request: LazyRequest,
) -> std::result::Result<ExecutorAddr, String> {
    match compile_and_link(shared, entry, compile, request) {
        Ok(code) => Ok(code),
        Err(message) => {
            let message = format!("lazy function {}: {message}", entry.name);
            *lock(&entry.status) = LazyStatus::Failed(message.clone());
            Err(message)
        }
    }
}

fn compile_and_link(
    shared: &LazyShared,
    entry: &LazyEntry,
    compile: &LazyCompile,
    request: LazyRequest,
) -> std::result::Result<ExecutorAddr, String> {
    let session = shared
        .session
        .upgrade()
        .ok_or("the module that declared it is gone")?;
    let mut ctx = Context::new();
    ctx.func.signature = entry.signature.clone();
    ctx.func.name = UserFuncName::user(0, entry.id.as_u32());
    compile(&mut LazyBuild {
        ctx: &mut ctx,
        module: LazyModule {
            shared,
            id: entry.id,
            name: &entry.name,
        },
    })
    .map_err(|e| format!("the compile callback failed: {e}"))?;
    ctx.compile(&*shared.isa, &mut ControlPlane::default())
        .map_err(|e| format!("Cranelift could not compile it: {:?}", e.inner))?;
    let (body, relocs) = compiled_body(&*shared.isa, entry.id, &ctx).map_err(|e| e.to_string())?;
    let code_name = format!("{}.code", entry.name);
    let pending = Pending {
        id: FuncOrDataId::Func(entry.id),
        name: code_name.clone(),
        linkage: Linkage::Hidden,
        body,
        relocs,
    };
    let (inputs, unit_name) = {
        let decls = shared.decls.read().unwrap_or_else(|e| e.into_inner());
        let members: FxHashMap<FuncOrDataId, usize> = [(pending.id, 0)].into_iter().collect();
        let mut host = lock(&shared.host);
        let mut resolver = Resolver {
            decl: &|id| {
                decls.info(id).unwrap_or(DeclInfo {
                    name: format!("undeclared {id:?}"),
                    linkage: Linkage::Import,
                    tls: false,
                })
            },
            defined: Defined::ByName,
            members: &members,
            host: &mut host,
            session: &session,
            libcall_names: &*shared.libcall_names,
        };
        unit::build(&*shared.isa, &[&pending], |p, t| resolver.resolve(p, t))
            .map_err(|e| e.to_string())?
            .into_inputs()
    };
    let options = UnitOptions {
        relink: true,
        ..UnitOptions::new(session.default_scope())
    };
    let unit = session
        .link_inputs_with(&inputs, &options)
        .map_err(|e| format!("linking {unit_name}: {e}"))?;
    let code = session
        .lookup_symbol(session.default_scope(), &code_name)
        .filter(|s| s.unit == unit)
        .map(|s| s.addr)
        .ok_or_else(|| format!("{unit_name} does not define {code_name}"))?;
    *lock(&entry.status) = LazyStatus::Compiled { unit, code };
    if let Some(stub) = entry.stub.get() {
        if let Err(e) = session.bypass_lazy_stub(*stub, code, request.return_addr) {
            // The stub still leads to the code, through the trampoline's cached answer.
            tracing::warn!("lazy function {}: stub not bypassed: {e}", entry.name);
        }
    }
    Ok(code)
}
