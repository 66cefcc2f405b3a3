//! Lazy functions: declared by name with a compile callback, callable at once, compiled on their
//! first call.
//!
//! [`Jit::declare_lazy`] links a **stub** under the function's name into the zone's fixed region
//! (kiln's [`kiln::lazy_stub_graph`]: `movabs $key, %r11; jmp *slot`, the slot pointing at the
//! executor's resolver trampoline). Other graphs and objects that call the name bind to the
//! stub. The first call, from any thread, enters the trampoline, which runs the **resolution**
//! exactly once (concurrent first callers wait for it; docs/lazy.md):
//!
//! 1. the callback compiles the function into a [`JitGraph`] that defines it under
//!    [`LazyContext::code_name`] (`NAME.code`: the stub keeps the public name);
//! 2. the graph is linked into the method region;
//! 3. [`kiln::Session::bypass_lazy_stub`] points the stub's slot at the code (one atomic 8-byte
//!    store) and retargets the direct calls into the stub it can change safely — the call that
//!    entered it, and the calls that method-region units (they keep relink records) make — to
//!    call the code directly, so that a steady-state call from them costs a direct call;
//! 4. the trampoline continues into the code, with the caller's arguments untouched.
//!
//! A callback error (or a graph that does not define the code name, or a failed link) goes to
//! the VM's error handler ([`Jit::set_lazy_error_handler`]), which chooses where that call and
//! every later call of the function continue (e.g. its interpreter); without one the process
//! that runs the code aborts (a call cannot return an error).
//!
//! Kept per lazy function, for redefinition and compaction (which change code after the fact):
//! its stub, its compiled unit and code address, and the call sites redirected to the code
//! ([`Jit::lazy_records`], [`Jit::lazy_code_moved`]).
//!
//! Locks: no lock of this module is held while the executor runs code or while the callback
//! runs (a callback may itself call other lazy functions, whose resolutions then run nested on
//! the same thread).

use crate::error::{Error, Result};
use crate::graph::JitGraph;
use crate::jit::{Jit, RegionKind};
use kiln::{CallRedirect, CallSite, SymbolKind, UnitId};
use kiln_target::{ExecutorAddr, LazyErrorHandler, LazyHandler, LazyRequest, StubKey, LAZY_STUB};
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// What a compile callback learns about the function it compiles.
pub struct LazyContext<'a> {
    /// The JIT the function goes into (for lookups; the callback must not link the function
    /// itself: it returns the graph).
    pub jit: &'a Jit,
    /// The function's public name: its stub's.
    pub name: &'a str,
    /// The name under which the returned graph must define the function's code (`NAME.code`).
    pub code_name: &'a str,
    /// The call that entered the stub.
    pub request: LazyRequest,
}

/// A lazy function, as [`Jit::declare_lazy`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LazyFunction {
    pub name: String,
    /// Where to call it: its stub (callable at once, and for as long as the JIT lives).
    pub addr: ExecutorAddr,
    /// The stub's unit, in the fixed region.
    pub stub_unit: UnitId,
    pub key: StubKey,
}

/// Where a lazy function stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LazyStatus {
    /// Not called yet (or its first call is compiling it right now).
    NotCompiled,
    /// Compiled into `unit`, its code at `code`; `redirected` are the call sites that call the
    /// code directly instead of the stub.
    Compiled {
        unit: UnitId,
        code: ExecutorAddr,
        redirected: Vec<CallSite>,
    },
    /// Its resolution failed with this message; the error handler chose where calls go.
    Failed(String),
}

/// A lazy function that could not be compiled, as the VM's error handler sees it.
#[derive(Debug)]
pub struct LazyFailure<'a> {
    /// The function's name; `None` for a key this JIT did not declare (the executor's error
    /// handler is one per process in process: it also hears of other JITs' keys).
    pub name: Option<&'a str>,
    pub key: StubKey,
    /// What went wrong (the callback's error, a link error, ...).
    pub message: &'a str,
}

/// Chooses where a call of a lazy function that could not be compiled continues (an address
/// taking the same arguments, e.g. an interpreter bridge), or `None` to abort the process.
pub type LazyFailureHandler = Arc<dyn Fn(&LazyFailure<'_>) -> Option<ExecutorAddr> + Send + Sync>;

type Compile = dyn Fn(&LazyContext<'_>) -> std::result::Result<JitGraph, String> + Send + Sync;

/// What kiln-jit keeps of one lazy function. The stub is set once linked (a first call that
/// races with the declaration finds it unset and leaves the stub's slot and its caller alone:
/// still correct, through the trampoline).
pub(crate) struct LazyRecord {
    pub name: String,
    pub key: StubKey,
    pub stub: OnceLock<(ExecutorAddr, UnitId)>,
    pub phase: Mutex<Phase>,
}

#[derive(Default, Clone)]
pub(crate) struct Phase {
    pub compiled: Option<(UnitId, ExecutorAddr)>,
    pub failed: Option<String>,
    pub redirected: Vec<CallSite>,
}

/// A lazy function as redefinition and compaction need it (see [`Jit::lazy_records`]).
#[derive(Debug, Clone)]
pub(crate) struct LazyRecordView {
    pub key: StubKey,
    /// The compiled unit and the code's address.
    pub compiled: Option<(UnitId, ExecutorAddr)>,
    /// Calls redirected from the stub to the code (by unit and offset: valid after a move).
    pub redirected: Vec<CallSite>,
}

/// A JIT's lazy functions by key. Shared with the resolutions and the error handler, which
/// outlive no JIT (they hold it weakly) but run on executor threads.
#[derive(Default)]
pub(crate) struct LazyTable {
    by_key: Mutex<FxHashMap<u64, Arc<LazyRecord>>>,
    /// The units lazy functions need (stubs, compiled code), by unit: the key whose they are.
    by_unit: Mutex<FxHashMap<UnitId, StubKey>>,
}

impl std::fmt::Debug for LazyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyTable")
            .field("functions", &lock(&self.by_key).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a plain assignment or push: a panic elsewhere leaves
    // them consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LazyTable {
    fn get(&self, key: StubKey) -> Option<Arc<LazyRecord>> {
        lock(&self.by_key).get(&key.0).cloned()
    }

    /// The lazy function whose stub or compiled code `unit` is.
    pub(crate) fn owner_of(&self, unit: UnitId) -> Option<Arc<LazyRecord>> {
        let key = *lock(&self.by_unit).get(&unit)?;
        self.get(key)
    }

    /// `unit` is now `key`'s stub or code (and `replaced`, if any, no longer its code).
    fn own(&self, key: StubKey, unit: UnitId, replaced: Option<UnitId>) {
        let mut by_unit = lock(&self.by_unit);
        if let Some(old) = replaced {
            by_unit.remove(&old);
        }
        by_unit.insert(unit, key);
    }

    /// Forget every key in the executor (the JIT is going away with its stubs).
    pub(crate) fn forget_all(&self, ex: &dyn kiln_target::Executor) {
        lock(&self.by_unit).clear();
        let keys: Vec<u64> = lock(&self.by_key).drain().map(|(k, _)| k).collect();
        for k in keys {
            let _ = ex.forget_lazy(StubKey(k));
        }
    }

    /// Refuse to remove a unit a lazy function needs: its stub (callers bind to it) or its
    /// compiled code (the stub's slot and redirected calls lead there, unknown to the session's
    /// dependency tracking).
    pub(crate) fn check_removable(&self, unit: UnitId) -> Result<()> {
        match self.owner_of(unit) {
            Some(r) => Err(Error::Lazy {
                name: r.name.clone(),
                what: format!(
                    "{unit} is its stub or its compiled code, which its callers reach without \
                     the session knowing: it lives as long as the JIT"
                ),
            }),
            None => Ok(()),
        }
    }
}

impl Jit {
    /// Declare `name` as a lazy function compiled by `compile` on its first call; its callable
    /// address (the stub's) is returned at once. `compile` runs at most once, on the thread of
    /// the first call (or not at all), and returns a graph defining the function under
    /// [`LazyContext::code_name`]; see the module documentation for what happens then.
    ///
    /// `name` becomes a global symbol of the JIT's scope (an error if it is defined already).
    pub fn declare_lazy(
        self: &Arc<Self>,
        name: &str,
        compile: impl Fn(&LazyContext<'_>) -> std::result::Result<JitGraph, String>
            + Send
            + Sync
            + 'static,
    ) -> Result<LazyFunction> {
        let ex = self.session().executor().clone();
        let compile: Arc<Compile> = Arc::new(compile);
        let record_cell: Arc<OnceLock<Arc<LazyRecord>>> = Arc::new(OnceLock::new());
        let handler: LazyHandler = {
            let (jit, cell) = (Arc::downgrade(self), record_cell.clone());
            Arc::new(move |request| {
                let record = cell
                    .get()
                    .ok_or("declared by a JIT that failed to link it")?;
                resolve(&jit, record, &*compile, request)
            })
        };
        let key = ex.declare_lazy(handler)?;
        let record = Arc::new(LazyRecord {
            name: name.to_string(),
            key,
            stub: OnceLock::new(),
            phase: Mutex::default(),
        });
        let _ = record_cell.set(record.clone());
        lock(&self.lazy.by_key).insert(key.0, record.clone());
        let stub_graph = JitGraph::new(kiln::lazy_stub_graph(name, key));
        let linked = self
            .link(RegionKind::Fixed, &stub_graph)
            .and_then(|linked| {
                let info = self
                    .session()
                    .lookup_symbol(self.scope(), name)
                    .filter(|s| s.unit == linked.unit)
                    .ok_or_else(|| Error::Lazy {
                        name: name.to_string(),
                        what: "its stub was linked but does not define it".into(),
                    })?;
                Ok((linked.unit, info.addr))
            });
        let (stub_unit, addr) = match linked {
            Ok(l) => l,
            Err(e) => {
                lock(&self.lazy.by_key).remove(&key.0);
                let _ = ex.forget_lazy(key);
                return Err(e);
            }
        };
        let _ = record.stub.set((addr, stub_unit));
        self.lazy.own(key, stub_unit, None);
        tracing::debug!("lazy function {name}: stub at {addr} (key {})", key.0);
        Ok(LazyFunction {
            name: name.to_string(),
            addr,
            stub_unit,
            key,
        })
    }

    /// Where lazy function `f` stands (`None`: not one of this JIT's).
    pub fn lazy_status(&self, f: &LazyFunction) -> Option<LazyStatus> {
        let record = self.lazy.get(f.key)?;
        let phase = lock(&record.phase).clone();
        Some(match (phase.compiled, phase.failed) {
            (Some((unit, code)), _) => LazyStatus::Compiled {
                unit,
                code,
                redirected: phase.redirected,
            },
            (None, Some(message)) => LazyStatus::Failed(message),
            (None, None) => LazyStatus::NotCompiled,
        })
    }

    /// Set (or with `None` remove) the VM's handler for lazy functions that cannot be compiled:
    /// it chooses where such a call, and every later call of the function, continues (see
    /// [`LazyFailureHandler`]). It runs on the thread of the call in process, in the controller
    /// out of process; once per failed function. It wraps the executor's error handler
    /// ([`kiln_target::Executor::set_lazy_error_handler`]), which in process is one for the
    /// whole process: the last one set (by any JIT) wins, and it hears of keys of other JITs
    /// with `name: None`.
    pub fn set_lazy_error_handler(&self, handler: Option<LazyFailureHandler>) -> Result<()> {
        let ex = self.session().executor();
        let Some(handler) = handler else {
            return Ok(ex.set_lazy_error_handler(None)?);
        };
        let table = Arc::downgrade(&self.lazy);
        let wrapped: LazyErrorHandler = Arc::new(move |key, message| {
            let record = table.upgrade().and_then(|t| t.get(key));
            handler(&LazyFailure {
                name: record.as_ref().map(|r| r.name.as_str()),
                key,
                message,
            })
        });
        Ok(ex.set_lazy_error_handler(Some(wrapped))?)
    }

    /// Every lazy function of this JIT, as redefinition and compaction need it: stub, compiled
    /// unit and code, redirected call sites.
    pub(crate) fn lazy_records(&self) -> Vec<LazyRecordView> {
        let records: Vec<Arc<LazyRecord>> = lock(&self.lazy.by_key).values().cloned().collect();
        records
            .into_iter()
            .map(|r| {
                let phase = lock(&r.phase).clone();
                LazyRecordView {
                    key: r.key,
                    compiled: phase.compiled,
                    redirected: phase.redirected,
                }
            })
            .collect()
    }

    /// If `unit` is a lazy function's stub or compiled code: the function's key, the name its
    /// code is defined under (`NAME.code`) and its compiled unit, for a redefinition (which
    /// replaces the code, never the stub). An error for a function not compiled yet.
    pub(crate) fn lazy_code_unit(&self, unit: UnitId) -> Result<Option<(StubKey, String, UnitId)>> {
        let Some(record) = self.lazy.owner_of(unit) else {
            return Ok(None);
        };
        let compiled = lock(&record.phase).compiled;
        let (code_unit, _) = compiled.ok_or_else(|| Error::Lazy {
            name: record.name.clone(),
            what: "it is not compiled yet: there is no code to redefine (its first call \
                   compiles what the callback returns)"
                .into(),
        })?;
        Ok(Some((
            record.key,
            format!("{}.code", record.name),
            code_unit,
        )))
    }

    /// Lazy function `key`'s code is now `new_code` in `new_unit` (redefined, or its unit
    /// moved): its stub's slot is set to it, and every call site redirected to the old code
    /// that still calls it is retargeted to the new code — or, where one store cannot reach it
    /// (out of ±2 GiB), back to the stub. Sites that no longer call the old code (their unit
    /// moved and its edges were applied again, so they call the stub; or it is gone) are
    /// dropped from the record; then the direct calls of the stub that relink units make (a
    /// moved caller's call was applied again to the stub) are redirected to the new code too.
    /// Call it before the old code can be freed. Redefinition and compaction call it.
    pub(crate) fn lazy_code_moved(
        &self,
        key: StubKey,
        new_unit: UnitId,
        new_code: ExecutorAddr,
    ) -> Result<()> {
        let record = self.lazy.get(key).ok_or_else(|| {
            Error::Stale(format!("lazy function key {} is not this JIT's", key.0))
        })?;
        let (stub, _) = *record.stub.get().ok_or_else(|| Error::Lazy {
            name: record.name.clone(),
            what: "its stub is not linked".into(),
        })?;
        let (old_code, sites) = {
            let phase = lock(&record.phase);
            let Some((_, old)) = phase.compiled else {
                return Err(Error::Lazy {
                    name: record.name.clone(),
                    what: "it has no compiled code to replace".into(),
                });
            };
            (old, phase.redirected.clone())
        };
        let session = self.session();
        let slot = ExecutorAddr(stub.0 + LAZY_STUB.target_offset as u64);
        session.patch(slot, &new_code.0.to_le_bytes())?;
        let mut kept = Vec::new();
        for site in sites {
            match session.redirect_call_site(&site, old_code, new_code)? {
                CallRedirect::Redirected(s) => kept.push(s),
                CallRedirect::Left(
                    kiln::CallLeft::NotADirectCall | kiln::CallLeft::NotKilnCode,
                ) => {}
                CallRedirect::Left(_) => {
                    // Cannot reach the new code: back through the stub (it was reached before).
                    session.redirect_call_site(&site, old_code, stub)?;
                }
            }
        }
        // Calls of the stub: back to the code directly. No call entered the stub: no return
        // address (0 names no call).
        if let Ok(bypass) = session.bypass_lazy_stub(stub, new_code, ExecutorAddr(0)) {
            for s in bypass.redirected {
                if !kept.contains(&s) {
                    kept.push(s);
                }
            }
        }
        let old_unit = {
            let mut phase = lock(&record.phase);
            let old = phase.compiled.replace((new_unit, new_code));
            phase.redirected = kept;
            old.map(|(u, _)| u)
        };
        self.lazy.own(key, new_unit, old_unit);
        Ok(())
    }
}

/// A first call of `record`'s function: compile, link, bypass the stub; the code's address.
fn resolve(
    jit: &Weak<Jit>,
    record: &LazyRecord,
    compile: &Compile,
    request: LazyRequest,
) -> std::result::Result<ExecutorAddr, String> {
    let outcome = jit
        .upgrade()
        .ok_or_else(|| "the JIT that declared it is gone".to_string())
        .and_then(|jit| compile_and_link(&jit, record, compile, request));
    match outcome {
        Ok(code) => Ok(code),
        Err(message) => {
            let message = format!("lazy function {}: {message}", record.name);
            lock(&record.phase).failed = Some(message.clone());
            Err(message)
        }
    }
}

fn compile_and_link(
    jit: &Jit,
    record: &LazyRecord,
    compile: &Compile,
    request: LazyRequest,
) -> std::result::Result<ExecutorAddr, String> {
    let code_name = format!("{}.code", record.name);
    let graph = compile(&LazyContext {
        jit,
        name: &record.name,
        code_name: &code_name,
        request,
    })
    .map_err(|e| format!("the compile callback failed: {e}"))?;
    // From the link to the bypass the code's address is written into the record, the stub's
    // slot and the callers: no compaction may move it meanwhile.
    let stays = jit.code_stays();
    let linked = jit
        .link(RegionKind::Method, &graph)
        .map_err(|e| format!("linking its compiled graph failed: {e}"))?;
    let session = jit.session();
    let code = session
        .lookup_symbol(jit.scope(), &code_name)
        .filter(|s| s.unit == linked.unit && s.kind == SymbolKind::Function);
    let Some(code) = code.map(|s| s.addr) else {
        drop(stays); // remove takes it again
        let _ = jit.remove(linked.unit);
        return Err(format!(
            "its compiled graph {:?} defines no function {code_name}",
            graph.graph.name
        ));
    };
    lock(&record.phase).compiled = Some((linked.unit, code));
    jit.lazy.own(record.key, linked.unit, None);
    if let Some((stub, _)) = record.stub.get() {
        match session.bypass_lazy_stub(*stub, code, request.return_addr) {
            Ok(bypass) => {
                tracing::debug!(
                    "lazy function {}: code at {code}, entering call {:?}, {} call(s) redirected",
                    record.name,
                    bypass.entering,
                    bypass.redirected.len()
                );
                lock(&record.phase).redirected.extend(bypass.redirected);
            }
            // The stub still leads to the code through the trampoline's cached answer.
            Err(e) => tracing::warn!("lazy function {}: stub not bypassed: {e}", record.name),
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ZoneConfig;
    use kiln::arch::x86_64::EdgeKind;
    use kiln::graph::{InMemoryEdge, InMemoryGraph};

    /// `long NAME.code(long a) { return a + k; }`
    fn plus(code_name: &str, k: i8) -> JitGraph {
        let mut g = InMemoryGraph::new(code_name);
        // lea k(%rdi), %rax; ret
        g.add_function(
            code_name,
            vec![0x48, 0x8d, 0x47, k as u8, 0xc3],
            vec![],
            None,
        );
        JitGraph::new(g)
    }

    /// Redefinition's and compaction's hook: the stub's slot and the redirected call follow
    /// the code to a new unit.
    #[test]
    fn code_moved_retargets_the_slot_and_redirected_calls() {
        let s = Arc::new(kiln::Session::in_process());
        s.set_debug(kiln::DebugOptions::none());
        let jit = Arc::new(Jit::new(s.clone(), &ZoneConfig::new(1 << 20)).unwrap());
        let f = jit
            .declare_lazy("inc", |cx| Ok(plus(cx.code_name, 1)))
            .unwrap();
        // sub $8,%rsp; nop3; call inc (rel32 at 8, aligned); add $8,%rsp; ret
        let mut g = InMemoryGraph::new("caller");
        g.add_function(
            "call_inc",
            vec![
                0x48, 0x83, 0xec, 0x08, 0x0f, 0x1f, 0x00, 0xe8, 0, 0, 0, 0, 0x48, 0x83, 0xc4, 0x08,
                0xc3,
            ],
            vec![InMemoryEdge::new(8, EdgeKind::BranchPCRel32, "inc", -4)],
            None,
        );
        jit.link(RegionKind::Method, &JitGraph::new(g)).unwrap();
        let caller = s.lookup("call_inc").unwrap();
        assert_eq!(s.executor().call(caller, &[41]).unwrap(), 42);
        let views = jit.lazy_records();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].redirected.len(), 1, "the caller was redirected");
        let other = jit.link(RegionKind::Method, &plus("inc.v2", 100)).unwrap();
        let v2 = s.lookup("inc.v2").unwrap();
        jit.lazy_code_moved(f.key, other.unit, v2).unwrap();
        assert_eq!(s.executor().call(caller, &[1]).unwrap(), 101);
        assert_eq!(
            s.executor().call(f.addr, &[1]).unwrap(),
            101,
            "the stub follows"
        );
        assert_eq!(
            jit.lazy_status(&f),
            Some(LazyStatus::Compiled {
                unit: other.unit,
                code: v2,
                redirected: views[0].redirected.clone()
            })
        );
        assert!(
            jit.remove(other.unit).is_err(),
            "code of a lazy function stays"
        );
        assert!(jit.remove(f.stub_unit).is_err(), "so does its stub");
        let (old_unit, _) = views[0].compiled.unwrap();
        jit.remove(old_unit)
            .expect("the code it replaced is the VM's to free");
        assert_eq!(s.executor().call(caller, &[2]).unwrap(), 102);
    }
}
