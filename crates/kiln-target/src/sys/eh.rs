//! Registering `.eh_frame` with the process's unwinder.
//!
//! libgcc's `__register_frame` takes the start of a whole `.eh_frame` section (a list of CIEs and
//! FDEs ending with a zero length word) and walks it. LLVM's libunwind exports a function of the
//! same name that takes a single FDE; it is recognised by its `__unw_add_dynamic_fde` export, and
//! then every FDE is registered separately.

use super::dl;
use crate::{Error, ExecutorAddr, Result};
use std::sync::OnceLock;

type FrameFn = unsafe extern "C" fn(*const u8);

struct Unwinder {
    register: FrameFn,
    deregister: FrameFn,
    per_fde: bool,
}

fn unwinder() -> Option<&'static Unwinder> {
    static U: OnceLock<Option<Unwinder>> = OnceLock::new();
    U.get_or_init(|| {
        let r = dl::sym(None, b"__register_frame").ok().flatten()?;
        let d = dl::sym(None, b"__deregister_frame").ok().flatten()?;
        let per_fde = dl::sym(None, b"__unw_add_dynamic_fde")
            .ok()
            .flatten()
            .is_some();
        // SAFETY: both symbols are the unwinder's registration functions, with this signature.
        let (register, deregister) = unsafe {
            (
                std::mem::transmute::<u64, FrameFn>(r.0),
                std::mem::transmute::<u64, FrameFn>(d.0),
            )
        };
        Some(Unwinder {
            register,
            deregister,
            per_fde,
        })
    })
    .as_ref()
}

/// Offsets of the FDEs in a section.
///
/// # Safety
/// `[addr, addr + size)` is mapped readable until this returns.
unsafe fn fde_offsets(addr: ExecutorAddr, size: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut off = 0u64;
    while off + 8 <= size {
        // SAFETY: the 8 bytes at `off` lie within the readable range (the loop condition and
        // this function's contract).
        let (len, id) = unsafe {
            let p = (addr.0 + off) as *const u32;
            (p.read_unaligned(), p.add(1).read_unaligned())
        };
        if len == 0 || len == u32::MAX {
            break;
        }
        if id != 0 {
            out.push(off);
        }
        off += 4 + len as u64;
    }
    out
}

/// Hand a `.eh_frame` section to the unwinder.
///
/// # Safety
/// `[addr, addr + size)` is a readable section that passed [`crate::eh_frame::check`] and
/// stays mapped, unchanged, until [`deregister`] is called with the same range: the unwinder
/// keeps pointers into it and reads it whenever anything in the process unwinds.
pub(crate) unsafe fn register(addr: ExecutorAddr, size: u64) -> Result<()> {
    let u = unwinder().ok_or_else(|| Error::EhFrame {
        addr,
        why: "no __register_frame in this process (neither libgcc_s nor libunwind)".into(),
    })?;
    if u.per_fde {
        // SAFETY: the section is readable (this function's contract).
        for off in unsafe { fde_offsets(addr, size) } {
            // SAFETY: points at an FDE inside a checked section that stays mapped until
            // `deregister` (this function's contract).
            unsafe { (u.register)((addr.0 + off) as *const u8) };
        }
    } else {
        // SAFETY: the section is checked (records inside the range, zero-terminated, encodings
        // libgcc reads without dereferencing) and stays mapped until `deregister`.
        unsafe { (u.register)(addr.0 as *const u8) };
    }
    Ok(())
}

/// Take a section registered by [`register`] back from the unwinder.
///
/// # Safety
/// `[addr, addr + size)` was registered by [`register`] (and not deregistered since), and is
/// still mapped. (libgcc aborts the process on a section it does not know.)
pub(crate) unsafe fn deregister(addr: ExecutorAddr, size: u64) {
    let Some(u) = unwinder() else { return };
    if u.per_fde {
        // SAFETY: the section is still mapped (this function's contract).
        for off in unsafe { fde_offsets(addr, size) } {
            // SAFETY: this FDE was registered by `register` and its memory is still mapped.
            unsafe { (u.deregister)((addr.0 + off) as *const u8) };
        }
    } else {
        // SAFETY: this section was registered by `register` and its memory is still mapped.
        unsafe { (u.deregister)(addr.0 as *const u8) };
    }
}
