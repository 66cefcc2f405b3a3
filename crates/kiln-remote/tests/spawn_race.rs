//! `RemoteExecutor::spawn` hands the executor its end of a socket pair. A process that another
//! thread of the controller starts at the same moment must not inherit it: if it did, the
//! channel would outlive the executor (the controller would wait on a dead executor for as
//! long as that unrelated process lives), and the unrelated process could talk to the
//! controller. JIT hosts and the listener (one thread per session) spawn concurrently.
//!
//! (Before the executor's socket was made inheritable in the child only, with `pass_fd`, an
//! equivalent loop leaked it within the first three rounds.) This file is its own test binary
//! on purpose: it spawns concurrently without the spawn lock the other tests use.

mod common;

use common::EXECUTOR;
use kiln_remote::{Options, RemoteExecutor};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Sockets among a process's descriptors 3 and up.
fn sockets(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for fd in fds.flatten() {
        let n: u32 = fd.file_name().to_string_lossy().parse().unwrap_or(0);
        if n < 3 {
            continue;
        }
        if let Ok(l) = std::fs::read_link(fd.path()) {
            let l = l.to_string_lossy().into_owned();
            if l.starts_with("socket:") {
                out.push(format!("fd {n} -> {l}"));
            }
        }
    }
    out
}

#[test]
fn executor_channel_does_not_leak_into_concurrent_spawns() {
    let stop = Arc::new(AtomicBool::new(false));
    let spawned = Arc::new(AtomicUsize::new(0));
    let spawner = {
        let stop = stop.clone();
        let spawned = spawned.clone();
        std::thread::spawn(move || {
            let mut leaks = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let mut c = Command::new("sleep")
                    .arg("10")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("running sleep");
                spawned.fetch_add(1, Ordering::SeqCst);
                let s = sockets(c.id());
                if !s.is_empty() {
                    leaks.push(s.join(", "));
                    stop.store(true, Ordering::SeqCst);
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            leaks
        })
    };
    let mut rounds = 0;
    while rounds < 150 && !stop.load(Ordering::SeqCst) {
        let ex = RemoteExecutor::spawn(Path::new(EXECUTOR), &[], Options::default())
            .expect("spawning kiln-executor");
        drop(ex);
        rounds += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let leaks = spawner.join().expect("the spawner thread");
    println!(
        "{rounds} executors spawned alongside {} unrelated processes",
        spawned.load(Ordering::SeqCst)
    );
    assert!(
        leaks.is_empty(),
        "an unrelated process started by another thread while RemoteExecutor::spawn ran \
         inherited the executor's channel ({}): spawn_child must make the socket inheritable in \
         the child only (kiln_target::process::pass_fd), never clear FD_CLOEXEC in the parent",
        leaks.join("; ")
    );
}
