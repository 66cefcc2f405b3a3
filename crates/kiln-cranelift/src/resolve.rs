//! What each relocation target of a unit binds to: a definition of the same unit, one linked
//! earlier (by name, through kiln), or a host symbol the module resolves itself.
//!
//! A reference to a module function binds by name to whatever defines it in the session: its
//! unit, the unit of its latest body after `redefine_function` (kiln moves the binding), or
//! the stub of a lazy function. The bodies of lazy functions are resolved without the
//! module's table of definitions ([`Defined::ByName`]): kiln's link says what is there.

use crate::builder::SymbolLookupFn;
use crate::error::{Error, Result};
use crate::module::Def;
use crate::unit::{Pending, Target};
use cranelift_codegen::ir::{self, KnownSymbol};
use cranelift_module::{
    DataId, FuncId, FuncOrDataId, Linkage, ModuleDeclarations, ModuleRelocTarget,
};
use kiln::Session;
use object::SymbolKind;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Host names: the builder's symbols, its lookup functions, and what was found before.
pub(crate) struct HostSymbols {
    symbols: FxHashMap<String, u64>,
    lookup_fns: Vec<SymbolLookupFn>,
    found: FxHashMap<String, u64>,
}

impl HostSymbols {
    pub fn new(symbols: FxHashMap<String, u64>, lookup_fns: Vec<SymbolLookupFn>) -> Self {
        HostSymbols {
            symbols,
            lookup_fns,
            found: FxHashMap::default(),
        }
    }
}

/// The declaration a relocation target names, if it names one.
pub(crate) fn target_id(t: &ModuleRelocTarget) -> Option<FuncOrDataId> {
    match *t {
        ModuleRelocTarget::User {
            namespace: 0,
            index,
        } => Some(FuncOrDataId::Func(FuncId::from_u32(index))),
        ModuleRelocTarget::User {
            namespace: 1,
            index,
        } => Some(FuncOrDataId::Data(DataId::from_u32(index))),
        ModuleRelocTarget::FunctionOffset(f, _) => Some(FuncOrDataId::Func(f)),
        _ => None,
    }
}

/// What the resolver needs to know of a declaration: its linkage name, linkage, and whether it
/// is thread-local data.
pub(crate) struct DeclInfo {
    pub name: String,
    pub linkage: Linkage,
    pub tls: bool,
}

impl DeclInfo {
    pub fn of(declarations: &ModuleDeclarations, id: FuncOrDataId) -> DeclInfo {
        match id {
            FuncOrDataId::Func(f) => {
                let d = declarations.get_function_decl(f);
                DeclInfo {
                    name: d.linkage_name(f).into_owned(),
                    linkage: d.linkage,
                    tls: false,
                }
            }
            FuncOrDataId::Data(d) => {
                let decl = declarations.get_data_decl(d);
                DeclInfo {
                    name: decl.linkage_name(d).into_owned(),
                    linkage: decl.linkage,
                    tls: decl.tls,
                }
            }
        }
    }
}

/// Which module definitions a unit may bind to by name.
pub(crate) enum Defined<'m> {
    /// Those linked (or pending) in the module now.
    Now(&'m FxHashMap<FuncOrDataId, Def>),
    /// Every definable declaration: kiln's link says whether it is there (a lazy function's
    /// body, compiled while the module goes on, cannot see the module's table).
    ByName,
}

/// Says what each relocation target of a unit is.
pub(crate) struct Resolver<'m> {
    pub decl: &'m dyn Fn(FuncOrDataId) -> DeclInfo,
    pub defined: Defined<'m>,
    pub members: &'m FxHashMap<FuncOrDataId, usize>,
    pub host: &'m mut HostSymbols,
    pub session: &'m Session,
    pub libcall_names: &'m (dyn Fn(ir::LibCall) -> String + Send + Sync),
}

impl Resolver<'_> {
    pub fn resolve(&mut self, from: &Pending, target: &ModuleRelocTarget) -> Result<(Target, i64)> {
        match target {
            ModuleRelocTarget::FunctionOffset(f, offset) => {
                self.declared(from, FuncOrDataId::Func(*f), i64::from(*offset))
            }
            ModuleRelocTarget::LibCall(libcall) => {
                let name = (self.libcall_names)(*libcall);
                match self.host_address(&name)? {
                    Some(addr) => Ok((Target::Absolute { name, addr }, 0)),
                    None => Err(Error::Unresolved {
                        name,
                        referenced_by: from.name.clone(),
                    }),
                }
            }
            ModuleRelocTarget::KnownSymbol(KnownSymbol::ElfGlobalOffsetTable) => {
                Ok((Target::Linker("_GLOBAL_OFFSET_TABLE_"), 0))
            }
            ModuleRelocTarget::KnownSymbol(other) => Err(Error::Unsupported(format!(
                "{}: the symbol {other} belongs to another object format",
                from.name
            ))),
            ModuleRelocTarget::User { .. } => match target_id(target) {
                Some(id) => self.declared(from, id, 0),
                None => Err(Error::Unsupported(format!(
                    "{}: relocation target {target} is neither a function nor a data object",
                    from.name
                ))),
            },
        }
    }

    /// A function or data object of the module.
    fn declared(&mut self, from: &Pending, id: FuncOrDataId, addend: i64) -> Result<(Target, i64)> {
        if let Some(&i) = self.members.get(&id) {
            return Ok((Target::Member(i), addend));
        }
        let DeclInfo { name, linkage, tls } = (self.decl)(id);
        let kind = match id {
            FuncOrDataId::Func(_) => SymbolKind::Text,
            FuncOrDataId::Data(_) if tls => SymbolKind::Tls,
            FuncOrDataId::Data(_) => SymbolKind::Data,
        };
        let defined = match &self.defined {
            Defined::Now(defs) => defs.contains_key(&id),
            Defined::ByName => linkage.is_definable(),
        };
        if defined {
            if kind == SymbolKind::Tls {
                return Err(Error::TlsAcrossUnits {
                    function: from.name.clone(),
                    data: name,
                });
            }
            return Ok((Target::Linked { name, kind }, addend));
        }
        match linkage {
            Linkage::Import | Linkage::Preemptible => match self.host_address(&name)? {
                Some(addr) => Ok((Target::Absolute { name, addr }, addend)),
                // A preemptible definition that nobody made is null, as in cranelift-jit.
                None if linkage == Linkage::Preemptible => {
                    Ok((Target::Absolute { name, addr: 0 }, addend))
                }
                None => Err(Error::Unresolved {
                    name,
                    referenced_by: from.name.clone(),
                }),
            },
            _ => Err(Error::NotDefined {
                name,
                referenced_by: from.name.clone(),
            }),
        }
    }

    /// A host name, in `JITBuilder`'s order: the builder's symbols, its lookup functions (last
    /// added first), then kiln's runtime (`__tls_get_addr`) and the executor's process.
    fn host_address(&mut self, name: &str) -> Result<Option<u64>> {
        let h = &mut *self.host;
        if let Some(a) = h.symbols.get(name).or_else(|| h.found.get(name)) {
            return Ok(Some(*a));
        }
        let from_fns = h.lookup_fns.iter().rev().find_map(|f| f(name));
        let addr = match from_fns {
            Some(p) => Some(p as usize as u64),
            None => {
                let ex: &Arc<dyn kiln::Executor> = self.session.executor();
                match ex.runtime_symbols().iter().find(|(n, _)| n == name) {
                    Some((_, a)) => Some(a.0),
                    None => ex
                        .lookup(&[name.as_bytes()], &[], true)?
                        .first()
                        .copied()
                        .flatten()
                        .map(|a| a.0),
                }
            }
        };
        if let Some(a) = addr {
            h.found.insert(name.to_string(), a);
        }
        Ok(addr)
    }
}

/// Lock a mutex of this crate. Its holders make plain updates (a map insert): a panic elsewhere
/// leaves the data consistent.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
