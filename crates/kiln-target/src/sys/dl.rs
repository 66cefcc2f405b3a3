//! dlopen/dlsym.

use crate::{Error, ExecutorAddr, Result};
use std::ffi::{CStr, CString};

/// A library handle from dlopen. Never dlclosed: code linked against it may still run.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Handle(*mut libc::c_void);

impl Handle {
    pub(crate) fn raw(self) -> *mut libc::c_void {
        self.0
    }
}

// SAFETY: dlopen handles are process-global and usable from any thread.
unsafe impl Send for Handle {}
// SAFETY: as above; dlsym is thread safe.
unsafe impl Sync for Handle {}

fn dlerror_string() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl call on
    // this thread; we copy it out at once.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

pub(crate) fn open(path: &str) -> Result<Handle> {
    let c = CString::new(path).map_err(|_| Error::LoadLibrary {
        path: path.into(),
        why: "path contains a NUL byte".into(),
    })?;
    // SAFETY: `c` is a valid C string. Loading a library runs its constructors: that is what
    // the user asked for by naming it.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if h.is_null() {
        return Err(Error::LoadLibrary {
            path: path.into(),
            why: dlerror_string().into(),
        });
    }
    Ok(Handle(h))
}

/// Look a symbol up in `handle`, or in the global scope when `handle` is `None`.
pub(crate) fn sym(handle: Option<Handle>, name: &[u8]) -> Result<Option<ExecutorAddr>> {
    let c = CString::new(name)
        .map_err(|_| Error::BadSymbolName(String::from_utf8_lossy(name).into_owned()))?;
    let h = handle.map_or(libc::RTLD_DEFAULT, |h| h.0);
    // SAFETY: `h` is RTLD_DEFAULT or a handle returned by dlopen; `c` is a valid C string.
    let p = unsafe { libc::dlsym(h, c.as_ptr()) };
    Ok((!p.is_null()).then_some(ExecutorAddr(p as u64)))
}
