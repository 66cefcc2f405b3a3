//! Making every thread of this process see rewritten code: cross-modifying code.
//!
//! x86-64 keeps instruction caches coherent with stores, so the thread that rewrote code sees
//! the new bytes at once. Another core may already have fetched and decoded the old bytes; the
//! architecture's rule for cross-modifying code (Intel SDM vol. 3, 9.1.3) is that the executing
//! core must run a *serializing* instruction after the write and before it executes the new
//! code. A write window over code that threads may be running therefore ends by making every
//! core that runs one of our threads serialize:
//!
//! - **`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`** (Linux 4.16+), after the
//!   process registered once with `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE`: the
//!   kernel interrupts every CPU running a thread of this process and returns to it through a
//!   core-serializing path, and serializes threads that were not running before they run again.
//!   This is what wasmtime and SpiderMonkey use for the same job.
//! - **Fallback** (kernels without it, `CONFIG_MEMBARRIER` off): a TLB shootdown. A private page
//!   of ours, locked in memory, is written (so its page-table entry is present and possibly
//!   cached by any CPU that ran one of our threads) and then made inaccessible with `mprotect`:
//!   the kernel must invalidate that entry on every CPU in the process's CPU mask before the
//!   call returns, which on x86-64 it does by an inter-processor interrupt, and returning from an
//!   interrupt (`iret`) is serializing. .NET's `FlushProcessWriteBuffers` and Wine use the same
//!   trick as their process-wide barrier. Its limit: CPUs that flush TLBs by broadcast without
//!   interrupts (AMD's `INVLPGB`, used by Linux 6.15+) are not interrupted — but every kernel that
//!   uses `INVLPGB` also has the SYNC_CORE membarrier, so the fallback only runs where it works.
//!
//! A thread that is not running when either happens fetches the new bytes when it runs again:
//! switching to it goes through the kernel, long after the write became visible.

use crate::{Error, Result};
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use rustix::thread::{membarrier, membarrier_query, MembarrierCommand};
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// How this process serializes its cores.
enum Method {
    Membarrier,
    /// The helper page of the fallback (address), under a lock: two shootdowns must not
    /// interleave their protection changes.
    Shootdown(Mutex<u64>),
}

fn method() -> &'static Method {
    static M: OnceLock<Method> = OnceLock::new();
    M.get_or_init(|| {
        let cmd = MembarrierCommand::PrivateExpeditedSyncCore;
        let registered = membarrier_query().contains_command(cmd)
            && membarrier(MembarrierCommand::RegisterPrivateExpeditedSyncCore).is_ok();
        if registered {
            Method::Membarrier
        } else {
            Method::Shootdown(Mutex::new(helper_page().unwrap_or(0)))
        }
    })
}

/// What [`sync_cores`] uses in this process: `"membarrier"` or `"tlb-shootdown"`.
pub fn sync_cores_method() -> &'static str {
    match method() {
        Method::Membarrier => "membarrier",
        Method::Shootdown(_) => "tlb-shootdown",
    }
}

/// Make every core that runs a thread of this process serialize its instruction stream, so that
/// none executes code bytes fetched before this call (see the module's note). Safe: it changes
/// no memory anyone uses.
pub fn sync_cores() -> Result<()> {
    match method() {
        Method::Membarrier => membarrier(MembarrierCommand::PrivateExpeditedSyncCore)
            .map_err(|e| sync_error(format!("membarrier(SYNC_CORE): {e}"))),
        Method::Shootdown(page) => shootdown(page),
    }
}

fn sync_error(why: String) -> Error {
    Error::Memory {
        addr: crate::ExecutorAddr(0),
        size: 0,
        why: why.into(),
    }
}

/// A private page of our own, locked in memory (best effort: the write before each shootdown
/// makes it present anyway), inaccessible until a shootdown opens it.
fn helper_page() -> Result<u64> {
    let page = super::mem::page_size() as usize;
    // SAFETY: a new private anonymous mapping where the kernel likes: no existing memory is
    // affected.
    let p = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            page,
            ProtFlags::empty(),
            MapFlags::PRIVATE,
        )
    }
    .map_err(|e| sync_error(format!("mmap (serializing page): {e}")))?;
    // SAFETY: the mapping we just made.
    let _ = unsafe { rustix::mm::mlock(p, page) };
    Ok(p as u64)
}

fn shootdown(page: &Mutex<u64>) -> Result<()> {
    let guard = page.lock().unwrap_or_else(|e| e.into_inner());
    let addr = *guard;
    if addr == 0 {
        return Err(sync_error(
            "no membarrier SYNC_CORE and no page for a TLB shootdown".into(),
        ));
    }
    let len = super::mem::page_size() as usize;
    let p = addr as *mut c_void;
    // SAFETY: the helper page is ours alone (made by `helper_page`, never handed out); the lock
    // keeps other shootdowns from changing its protection meanwhile.
    unsafe { rustix::mm::mprotect(p, len, MprotectFlags::READ | MprotectFlags::WRITE) }
        .map_err(|e| sync_error(format!("mprotect (serializing page): {e}")))?;
    // SAFETY: the page is readable and writable now, 8-byte aligned, and only this function
    // (under the lock) touches it.
    unsafe { (*(addr as *const AtomicU64)).fetch_add(1, Ordering::SeqCst) };
    // SAFETY: as above. Taking the access away is what makes the kernel shoot the page's
    // translation down on every CPU that may cache it.
    unsafe { rustix::mm::mprotect(p, len, MprotectFlags::empty()) }
        .map_err(|e| sync_error(format!("mprotect (serializing page): {e}")))?;
    drop(guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_methods_work_here() {
        sync_cores().unwrap();
        assert!(["membarrier", "tlb-shootdown"].contains(&sync_cores_method()));
        // The fallback, whatever this kernel offers.
        let page = Mutex::new(helper_page().unwrap());
        shootdown(&page).unwrap();
        shootdown(&page).unwrap();
        assert!(shootdown(&Mutex::new(0)).is_err());
    }
}
