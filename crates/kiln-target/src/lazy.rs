//! Lazy functions: code that is compiled (or linked) on its first call.
//!
//! A lazy function is a **stub** (machine code built from [`LAZY_STUB`]) that holds a
//! [`StubKey`] and jumps to the **resolver trampoline** ([`LazyRuntime::trampoline`]). The
//! trampoline saves every argument register, asks the registry where the function really is,
//! restores the registers and jumps there: the caller's call lands in the real function, which
//! returns straight to the caller. The stub's jump target is an 8-byte slot that the JIT layer
//! patches to the resolved address once it knows it; until then, and for threads already on
//! their way, every entry goes through the trampoline and gets the cached address.
//!
//! The registry ([`LazyRuntime`], one per process) maps each key to its **handler**, which runs
//! **exactly once** per key: the first caller runs it, concurrent callers wait for it and continue
//! to its result, later callers get the result without running anything. A handler that fails
//! (an `Err`, a panic, a null address) is reported to the **error handler** the embedder sets
//! ([`LazyRuntime::set_error_handler`]), which picks where that call and every later call of the
//! key continue (e.g. a VM's interpreter bridge). Without one, or if it answers `None`, the
//! process aborts with a message on stderr: a call instruction has no way to return an error.
//!
//! The convention between stubs and the trampoline, and these rules, are in docs/lazy.md.

use crate::{Error, ExecutorAddr, Result};
use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::thread::ThreadId;

/// Identifies a lazy function in one process's registry.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StubKey(pub u64);

/// What a handler learns about the call that needs it.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LazyRequest {
    pub key: StubKey,
    /// The word on top of the stack when the stub was entered: the return address of the call
    /// that entered it (the call site, for a JIT that patches it to call the code directly).
    /// If the stub was reached by a tail jump, the return address of the jumper's caller.
    pub return_addr: ExecutorAddr,
}

/// Resolves a lazy function: compiles and links it, and returns its address.
pub type LazyHandler =
    Arc<dyn Fn(LazyRequest) -> std::result::Result<ExecutorAddr, String> + Send + Sync>;

/// Decides where a call continues when its function's handler failed (`None`: abort).
pub type LazyErrorHandler = Arc<dyn Fn(StubKey, &str) -> Option<ExecutorAddr> + Send + Sync>;

/// Where a lazy function stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LazyState {
    /// Declared; its handler has not run.
    Unresolved,
    /// Its handler is running.
    Resolving,
    /// Its handler returned this address.
    Resolved(ExecutorAddr),
    /// Its handler failed with `message`; the error handler sent calls to `continue_at`.
    Failed {
        message: String,
        continue_at: ExecutorAddr,
    },
}

/// The name under which executors offer the trampoline's address to linked code (see
/// [`crate::Executor::runtime_symbols`]): a stub graph can point its jump slot at this symbol.
pub const LAZY_TRAMPOLINE_SYMBOL: &str = "__kiln_lazy_trampoline";

/// The machine code of a lazy stub, with the offsets of the fields to fill in. A stub is
/// `movabs $KEY, %r11; jmp *TARGET(%rip); TARGET: .quad ADDRESS`:
///
/// ```text
/// 0:  49 bb <key: u64 LE>          movabs $key, %r11
/// 10: ff 25 00 00 00 00            jmp *0(%rip)       (the 8 bytes right after)
/// 16: <target: u64 LE>             the trampoline until resolved; then the function
/// ```
///
/// Place a stub at an 8-byte aligned address, so that its target slot is naturally aligned and
/// can be retargeted with one atomic 8-byte store ([`crate::Executor::patch`]) while other
/// threads run through it. The stub is position-independent: it may be copied anywhere.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StubTemplate {
    /// The code with key and target zero.
    pub bytes: &'static [u8],
    /// Where the key goes: 8 bytes, little-endian.
    pub key_offset: usize,
    /// Where the jump target goes: 8 bytes, little-endian, an absolute address.
    pub target_offset: usize,
    /// Required alignment of the stub's address.
    pub align: u64,
}

/// The lazy stub for x86-64 (see [`StubTemplate`]).
pub const LAZY_STUB: StubTemplate = StubTemplate {
    bytes: &[
        0x49, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0, // movabs $key, %r11
        0xff, 0x25, 0, 0, 0, 0, // jmp *0(%rip)
        0, 0, 0, 0, 0, 0, 0, 0, // target
    ],
    key_offset: 2,
    target_offset: 16,
    align: 8,
};

impl StubTemplate {
    /// The stub's bytes for `key`, jumping to `target` (the trampoline, for a new stub).
    pub fn instantiate(&self, key: StubKey, target: ExecutorAddr) -> Vec<u8> {
        let mut code = self.bytes.to_vec();
        code[self.key_offset..self.key_offset + 8].copy_from_slice(&key.0.to_le_bytes());
        code[self.target_offset..self.target_offset + 8].copy_from_slice(&target.0.to_le_bytes());
        code
    }

    pub fn size(&self) -> usize {
        self.bytes.len()
    }
}

enum State {
    Unresolved(LazyHandler),
    Resolving(ThreadId),
    Resolved(ExecutorAddr),
    Failed {
        message: Arc<str>,
        continue_at: ExecutorAddr,
    },
}

struct Entry {
    state: Mutex<Slot>,
    /// Signalled when a resolution ends, if `waiters` says anyone waits (a wake-up costs a
    /// system call, a first call without contention should not).
    done: Condvar,
}

struct Slot {
    state: State,
    waiters: u32,
}

/// The process's registry of lazy functions (see the module documentation).
pub struct LazyRuntime {
    entries: RwLock<HashMap<u64, Arc<Entry>>>,
    next_key: AtomicU64,
    error_handler: RwLock<Option<LazyErrorHandler>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Handlers run outside every lock and panics inside are caught: a poisoned lock can only
    // come from a bug here, and the data it guards is still consistent (every update is one
    // assignment).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LazyRuntime {
    /// The registry the trampoline consults: one per process, as the trampoline is.
    pub fn global() -> &'static LazyRuntime {
        static GLOBAL: OnceLock<LazyRuntime> = OnceLock::new();
        GLOBAL.get_or_init(|| LazyRuntime {
            entries: RwLock::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            error_handler: RwLock::new(None),
        })
    }

    /// The resolver trampoline's address: where a new stub jumps.
    pub fn trampoline(&self) -> ExecutorAddr {
        ExecutorAddr(crate::sys::lazy::trampoline_address())
    }

    /// Declare a lazy function resolved by `handler`; its key, for the stub. The handler is
    /// dropped once it has run (or when the key is forgotten).
    ///
    /// The handler runs on the thread of the first call, inside that call: it may take as long
    /// as it needs (other first callers wait), may link code and run it, and may itself call
    /// other lazy functions. It must not, directly or through code it runs, call its own stub
    /// (on this thread that is reported as a failure; on another thread it would wait forever),
    /// and it must not hold a lock that another handler needs across such calls, since a handler
    /// can be entered on the same thread while another is running (an initializer of the code
    /// it links may call a second lazy function).
    pub fn declare(&self, handler: LazyHandler) -> StubKey {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            state: Mutex::new(Slot {
                state: State::Unresolved(handler),
                waiters: 0,
            }),
            done: Condvar::new(),
        });
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, entry);
        StubKey(key)
    }

    /// Forget a key (its stub must no longer be called: a call that enters the trampoline
    /// with it goes to the error handler). Whether the key was declared.
    pub fn forget(&self, key: StubKey) -> bool {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key.0)
            .is_some()
    }

    /// Where a key's function stands; `None` for a key not declared (or forgotten).
    pub fn state(&self, key: StubKey) -> Option<LazyState> {
        let entry = self.entry(key.0)?;
        let st = lock(&entry.state);
        Some(match &st.state {
            State::Unresolved(_) => LazyState::Unresolved,
            State::Resolving(_) => LazyState::Resolving,
            State::Resolved(a) => LazyState::Resolved(*a),
            State::Failed {
                message,
                continue_at,
            } => LazyState::Failed {
                message: message.to_string(),
                continue_at: *continue_at,
            },
        })
    }

    /// Set (or with `None` remove) the handler that decides where a call continues when a lazy
    /// function cannot be resolved: its handler failed, it called its own stub, or its key is
    /// unknown. It runs on the thread of the call: once per failed key (its answer is kept for
    /// later calls), and on every call with an unknown key or from a handler into its own stub.
    /// `None` from it, or no error handler, aborts the process.
    pub fn set_error_handler(&self, handler: Option<LazyErrorHandler>) {
        *self
            .error_handler
            .write()
            .unwrap_or_else(|e| e.into_inner()) = handler;
    }

    fn entry(&self, key: u64) -> Option<Arc<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }

    /// A call entered the trampoline with `key`, from `return_addr`: where it continues. Runs
    /// the handler if this is the first call, waits if another thread runs it, ends the process
    /// if nothing can say where to go.
    pub(crate) fn enter(&self, key: u64, return_addr: u64) -> u64 {
        let Some(entry) = self.entry(key) else {
            let why = format!("no lazy function has key {key} (never declared, or forgotten)");
            return self.continue_after_failure(key, &why).0;
        };
        let me = std::thread::current().id();
        let mut st = lock(&entry.state);
        loop {
            match &st.state {
                State::Resolved(a) => return a.0,
                State::Failed { continue_at, .. } => return continue_at.0,
                State::Resolving(t) if *t == me => {
                    drop(st);
                    let why = "its handler called it (directly, or through code it ran) \
                               before returning";
                    return self.continue_after_failure(key, why).0;
                }
                State::Resolving(_) => {
                    st.waiters += 1;
                    st = entry.done.wait(st).unwrap_or_else(|e| e.into_inner());
                    st.waiters -= 1;
                }
                State::Unresolved(_) => break,
            }
        }
        let State::Unresolved(handler) = std::mem::replace(&mut st.state, State::Resolving(me))
        else {
            unreachable!("checked just above, under the same lock")
        };
        drop(st);
        let request = LazyRequest {
            key: StubKey(key),
            return_addr: ExecutorAddr(return_addr),
        };
        let outcome = run_handler(&handler, request);
        drop(handler);
        let (target, final_state) = match outcome {
            Ok(a) => (a, State::Resolved(a)),
            Err(message) => {
                let continue_at = self.continue_after_failure(key, &message);
                (
                    continue_at,
                    State::Failed {
                        message: message.into(),
                        continue_at,
                    },
                )
            }
        };
        let mut st = lock(&entry.state);
        st.state = final_state;
        if st.waiters > 0 {
            entry.done.notify_all();
        }
        target.0
    }

    /// Ask the error handler where a call of `key` continues; abort if it does not say.
    fn continue_after_failure(&self, key: u64, why: &str) -> ExecutorAddr {
        let handler = self
            .error_handler
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(handler) = handler else {
            fatal(key, &format!("{why}; no error handler is set"))
        };
        match catch_unwind(AssertUnwindSafe(|| handler(StubKey(key), why))) {
            Ok(Some(a)) if !a.is_null() => a,
            Ok(_) => fatal(
                key,
                &format!("{why}; the error handler chose no place to continue"),
            ),
            Err(_) => fatal(key, &format!("{why}; the error handler panicked")),
        }
    }
}

/// Run a handler, turning its failures (an error, a panic, a null address) into messages.
fn run_handler(
    handler: &LazyHandler,
    request: LazyRequest,
) -> std::result::Result<ExecutorAddr, String> {
    match catch_unwind(AssertUnwindSafe(|| handler(request))) {
        Ok(Ok(a)) if a.is_null() => Err("its handler returned a null address".into()),
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(format!("its handler failed: {e}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(format!("its handler panicked: {what}"))
        }
    }
}

/// A lazy function cannot continue anywhere: say why on stderr and abort. (A call instruction
/// has no way to return an error to its caller.)
pub(crate) fn fatal(key: u64, why: &str) -> ! {
    eprintln!(
        "kiln: lazy function {key} cannot be called: {why}. A call has no way to return an \
         error, so the process aborts (set an error handler to continue elsewhere)."
    );
    std::process::abort()
}

/// The keys one executor declared: what its [`crate::Executor::forget_lazy`] may forget.
#[derive(Default)]
pub(crate) struct OwnedKeys(Mutex<HashSet<u64>>);

impl OwnedKeys {
    pub(crate) fn declare(&self, handler: LazyHandler) -> StubKey {
        let key = LazyRuntime::global().declare(handler);
        lock(&self.0).insert(key.0);
        key
    }

    pub(crate) fn forget(&self, key: StubKey) -> Result<()> {
        if !lock(&self.0).remove(&key.0) {
            return Err(Error::InvalidRequest(format!(
                "lazy function key {} was not declared by this executor (or was forgotten)",
                key.0
            )));
        }
        LazyRuntime::global().forget(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_template_fields() {
        let code = LAZY_STUB.instantiate(StubKey(0x1122_3344_5566_7788), ExecutorAddr(0xabcd));
        assert_eq!(code.len(), LAZY_STUB.size());
        assert_eq!(&code[..2], &[0x49, 0xbb]);
        assert_eq!(&code[2..10], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&code[10..16], &[0xff, 0x25, 0, 0, 0, 0]);
        assert_eq!(&code[16..24], &0xabcdu64.to_le_bytes());
        assert_eq!(LAZY_STUB.target_offset as u64 % LAZY_STUB.align, 0);
    }

    #[test]
    fn keys_are_distinct_and_forgettable() {
        let rt = LazyRuntime::global();
        let h: LazyHandler = Arc::new(|_| Ok(ExecutorAddr(1)));
        let a = rt.declare(h.clone());
        let b = rt.declare(h);
        assert_ne!(a, b);
        assert_eq!(rt.state(a), Some(LazyState::Unresolved));
        assert!(rt.forget(a));
        assert!(!rt.forget(a));
        assert_eq!(rt.state(a), None);
        assert!(rt.forget(b));
    }
}
