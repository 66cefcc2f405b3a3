//! Process plumbing for an executor process: descriptors inherited from its parent, and leaving
//! without running anything further.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Take ownership of descriptor `fd`, inherited across `exec` from the parent (e.g. the socket
/// of a spawned executor). Once per process: a second call fails, so two owners never close the
/// same descriptor.
pub fn take_inherited_fd(fd: i32) -> std::io::Result<OwnedFd> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if fd < 3 {
        return Err(std::io::Error::other(format!(
            "descriptor {fd} is standard I/O, not an inherited socket"
        )));
    }
    // A raw number we do not own yet: no safe wrapper can take it, so libc's fcntl probes it.
    // SAFETY: F_GETFD only queries the descriptor table; it fails for a closed descriptor and
    // changes nothing.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(std::io::Error::other(
            "the inherited descriptor was already taken",
        ));
    }
    // SAFETY: the descriptor is open (checked) and was handed to this process by its parent for
    // this purpose; nothing else in the process owns it, and `TAKEN` makes this happen once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Close-on-exec, so JIT'd code that spawns processes does not leak the channel to them.
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}

/// Leave the process at once with `code`: no exit handlers, no destructors, no stdio flush.
/// For an executor whose controller is gone: nothing JIT'd may run any more.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Let `cmd`'s child inherit `fd` (open in this process, close-on-exec here as everything std
/// opens): the descriptor is made inheritable in the child only, between fork and exec, so
/// children that other threads start meanwhile never get it. Returns its number in the child.
/// `fd` must stay open until `cmd` has been spawned.
pub fn pass_fd(cmd: &mut std::process::Command, fd: std::os::fd::BorrowedFd<'_>) -> i32 {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and calls only fcntl, which is
    // async-signal-safe; it allocates nothing and touches no locks. The descriptor number is
    // valid there because the caller keeps it open until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    raw
}
