//! Process plumbing for an executor process: descriptors inherited from its parent, and leaving
//! without running anything further.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Take ownership of descriptor `fd`, inherited across `exec` from the parent (e.g. the socket
/// of a spawned executor). Once per process: a second call fails, so two owners never close the
/// same descriptor. Refused for standard I/O, a closed descriptor, and one that is close-on-exec
/// (everything this process's Rust code opens is: such a descriptor has an owner here).
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
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Everything Rust's std and rustix open is close-on-exec: a descriptor without the flag
    // came across exec, from the parent. One with it belongs to something in this process.
    if flags & libc::FD_CLOEXEC != 0 {
        return Err(std::io::Error::other(format!(
            "descriptor {fd} is close-on-exec: opened by this process, not inherited"
        )));
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(std::io::Error::other(
            "the inherited descriptor was already taken",
        ));
    }
    // SAFETY: the descriptor is open and not close-on-exec (checked): inherited from the parent,
    // which handed it over for this purpose, not one an owner in this process opened; `TAKEN`
    // makes this happen once, so there is one owner.
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
    // async-signal-safe; it allocates nothing and touches no locks, and changes only the flags
    // of a descriptor number in the child. (Should the caller close `fd` before spawning, which
    // it must not, fcntl fails on the closed number or marks whatever reused it inheritable:
    // no memory is touched either way.)
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
