//! The GDB JIT interface: a linked list of in-memory object files that gdb reads when it stops
//! at a breakpoint it keeps on `__jit_debug_register_code`.
//!
//! gdb finds both symbols by name in any object file of the process (it reads the executable's
//! symbol table and the dynamic symbol tables of shared libraries), so they are `#[no_mangle]`
//! and the `kiln` binary also exports them dynamically (see `crates/kiln-cli/build.rs`), which
//! keeps them visible in a stripped binary. C runtimes define them weakly so that several JIT
//! runtimes in one process share one list; stable Rust cannot define weak symbols, so a process
//! that links kiln-target together with another runtime that defines them strongly in the same
//! executable gets a duplicate-symbol error from the linker. Runtimes in shared libraries are
//! fine: gdb keeps one list per object file that defines the pair.
//!
//! Protocol: set `action_flag`, point `relevant_entry` at the entry, call the function; gdb
//! reads the entry's object (register) or drops the object file it made of it (unregister).
//! Every update happens under one lock; gdb reads the list only while the process is stopped.

use crate::{Error, Result};
use std::cell::UnsafeCell;
use std::collections::BTreeMap;
use std::ptr::null_mut;
use std::sync::Mutex;

const JIT_NOACTION: u32 = 0;
const JIT_REGISTER_FN: u32 = 1;
const JIT_UNREGISTER_FN: u32 = 2;

/// `struct jit_code_entry` of gdb's documentation.
#[repr(C)]
struct JitCodeEntry {
    next_entry: *mut JitCodeEntry,
    prev_entry: *mut JitCodeEntry,
    symfile_addr: *const u8,
    symfile_size: u64,
}

/// `struct jit_descriptor` of gdb's documentation.
#[repr(C)]
pub struct JitDescriptor {
    version: u32,
    action_flag: u32,
    relevant_entry: *mut JitCodeEntry,
    first_entry: *mut JitCodeEntry,
}

/// The descriptor gdb reads; mutated only under `REGISTRY`'s lock.
#[repr(transparent)]
pub struct GdbDescriptor(UnsafeCell<JitDescriptor>);

// SAFETY: the cell is a private field, so only this module can reach it, and the one place that
// does, `with_descriptor`, takes the registry's locked content as a witness: threads never touch
// the descriptor at the same time.
unsafe impl Sync for GdbDescriptor {}

#[allow(non_upper_case_globals)]
#[no_mangle]
pub static __jit_debug_descriptor: GdbDescriptor = GdbDescriptor(UnsafeCell::new(JitDescriptor {
    version: 1,
    action_flag: JIT_NOACTION,
    relevant_entry: null_mut(),
    first_entry: null_mut(),
}));

/// gdb sets a breakpoint here. It must stay a real, out-of-line function that is really called
/// after the descriptor has been written: `inline(never)`, and an empty `asm!` that the compiler
/// must assume reads and writes memory, so neither the call nor the stores before it go away.
#[no_mangle]
#[inline(never)]
pub extern "C" fn __jit_debug_register_code() {
    // SAFETY: an empty instruction sequence; it only acts as a compiler barrier.
    unsafe { std::arch::asm!("", options(nostack, preserves_flags)) };
}

/// One registered object: the entry gdb sees (a raw heap allocation, so that the pointers to it in
/// the list stay valid however the registry's containers move) and the bytes it points at (a
/// `Vec`'s heap buffer does not move either).
struct Registered {
    entry: *mut JitCodeEntry,
    _object: Vec<u8>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        // SAFETY: `entry` came from `Box::into_raw` in `register` and this `Registered` is its
        // only owner. A `Registered` is dropped only in `deregister` (entries never leave the
        // registry any other way), after its entry has been unlinked from the list gdb reads.
        drop(unsafe { Box::from_raw(self.entry) });
    }
}

// SAFETY: `entry` points to an allocation this `Registered` owns (and `symfile_addr` into its own
// `_object`); this module dereferences it only while holding the registry lock, whichever thread
// that is.
unsafe impl Send for Registered {}

/// Registered objects by key (the controller uses the unit's base address).
static REGISTRY: Mutex<BTreeMap<u64, Vec<Registered>>> = Mutex::new(BTreeMap::new());

fn with_descriptor<R>(
    _locked: &mut BTreeMap<u64, Vec<Registered>>,
    f: impl FnOnce(&mut JitDescriptor) -> R,
) -> R {
    // SAFETY: the caller holds the registry lock (witnessed by the `&mut` to its content), so no
    // other thread touches the descriptor; gdb reads it only while the process is stopped.
    f(unsafe { &mut *__jit_debug_descriptor.0.get() })
}

fn lock() -> Result<std::sync::MutexGuard<'static, BTreeMap<u64, Vec<Registered>>>> {
    REGISTRY
        .lock()
        .map_err(|_| Error::InvalidRequest("gdb JIT registry poisoned".into()))
}

/// Register copies of `objects` (ELF files) under `key`.
pub(crate) fn register(key: u64, objects: &[&[u8]]) -> Result<()> {
    let mut reg = lock()?;
    if reg.contains_key(&key) {
        return Err(Error::InvalidRequest(format!(
            "gdb JIT registration {key:#x} already exists"
        )));
    }
    let mut list = Vec::with_capacity(objects.len());
    for obj in objects {
        let object = obj.to_vec();
        let e = Box::into_raw(Box::new(JitCodeEntry {
            next_entry: null_mut(),
            prev_entry: null_mut(),
            symfile_addr: object.as_ptr(),
            symfile_size: object.len() as u64,
        }));
        // Owned by the registry from here on (freed by `Registered::drop`).
        list.push(Registered {
            entry: e,
            _object: object,
        });
        with_descriptor(&mut reg, |d| {
            // SAFETY: `e` is our fresh allocation; `first_entry` is an entry of a `Registered`
            // still in the registry (entries leave the list before they are freed); we hold the
            // lock.
            unsafe {
                (*e).next_entry = d.first_entry;
                if !d.first_entry.is_null() {
                    (*d.first_entry).prev_entry = e;
                }
            }
            d.first_entry = e;
            d.relevant_entry = e;
            d.action_flag = JIT_REGISTER_FN;
        });
        __jit_debug_register_code();
        with_descriptor(&mut reg, |d| d.action_flag = JIT_NOACTION);
    }
    reg.insert(key, list);
    Ok(())
}

/// Unregister (and free) the objects registered under `key`, newest first.
pub(crate) fn deregister(key: u64) -> Result<()> {
    let mut reg = lock()?;
    let Some(mut list) = reg.remove(&key) else {
        return Ok(());
    };
    while let Some(r) = list.pop() {
        let e = r.entry;
        with_descriptor(&mut reg, |d| {
            // SAFETY: `e` and its neighbours are live registered entries (a neighbour leaves
            // the list before it is freed); we hold the lock.
            unsafe {
                let (prev, next) = ((*e).prev_entry, (*e).next_entry);
                if prev.is_null() {
                    d.first_entry = next;
                } else {
                    (*prev).next_entry = next;
                }
                if !next.is_null() {
                    (*next).prev_entry = prev;
                }
            }
            d.relevant_entry = e;
            d.action_flag = JIT_UNREGISTER_FN;
        });
        __jit_debug_register_code();
        with_descriptor(&mut reg, |d| {
            d.action_flag = JIT_NOACTION;
            d.relevant_entry = null_mut();
        });
        // `r` (entry and object) is freed here, after gdb has let go of it.
        drop(r);
    }
    Ok(())
}

/// How many objects are registered (all keys): for tests.
pub fn registered_objects() -> usize {
    lock().map_or(0, |r| r.values().map(Vec::len).sum())
}
