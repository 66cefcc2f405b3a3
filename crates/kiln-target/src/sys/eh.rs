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

/// Offsets of the FDEs in a section, read from our own (finalized, readable) memory.
fn fde_offsets(addr: ExecutorAddr, size: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut off = 0u64;
    while off + 8 <= size {
        // SAFETY: [addr, addr+size) is a finalized readable eh_frame segment of ours; the read
        // of 8 bytes at `off` is within it (checked by the loop condition).
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

pub(crate) fn register(addr: ExecutorAddr, size: u64) -> Result<()> {
    let u = unwinder().ok_or_else(|| Error::EhFrame {
        addr,
        why: "no __register_frame in this process (neither libgcc_s nor libunwind)".into(),
    })?;
    if u.per_fde {
        for off in fde_offsets(addr, size) {
            // SAFETY: points at an FDE inside finalized eh_frame memory that stays mapped until
            // `deregister` is called.
            unsafe { (u.register)((addr.0 + off) as *const u8) };
        }
    } else {
        // SAFETY: the section is finalized, zero-terminated (the linker appends the terminator)
        // and stays mapped until `deregister` is called.
        unsafe { (u.register)(addr.0 as *const u8) };
    }
    Ok(())
}

pub(crate) fn deregister(addr: ExecutorAddr, size: u64) {
    let Some(u) = unwinder() else { return };
    if u.per_fde {
        for off in fde_offsets(addr, size) {
            // SAFETY: this FDE was registered by `register` and its memory is still mapped.
            unsafe { (u.deregister)((addr.0 + off) as *const u8) };
        }
    } else {
        // SAFETY: this section was registered by `register` and its memory is still mapped.
        unsafe { (u.deregister)(addr.0 as *const u8) };
    }
}
