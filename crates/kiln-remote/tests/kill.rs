//! The executor process dies at any point (killed, or its code crashes): the controller gets an
//! error that says how it ended, promptly, and the process is reaped (no zombie left behind).

mod common;

use common::*;
use kiln_remote::{ExitReport, MemoryMode, Options, RemoteExecutor};
use kiln_target::{Error as TargetError, Executor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SEGV_PROGRAM: &str = r#"
int main(void) {
    volatile int *volatile p = 0;
    *p = 1;
    return 0;
}
"#;

const ATEXIT_SEGV_PROGRAM: &str = r#"
#include <stdlib.h>
static void bye(void) {
    volatile int *volatile p = 0;
    *p = 1;
}
int main(void) {
    atexit(bye);
    return 0;
}
"#;

/// An exit handler that works: it writes the file named by argv[1] (a copy of it: see
/// `exit_handlers_see_argv` for why).
const ATEXIT_OK_PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static const char *path;
static void bye(void) {
    FILE *f = fopen(path, "w");
    if (f) { fputs("bye\n", f); fclose(f); }
}
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    path = strdup(argv[1]);
    atexit(bye);
    return 0;
}
"#;

/// Keeps the pointer to argv, as C programs may: argv lives as long as the process (C11
/// 5.1.2.2.1: the strings "retain their last-stored values between program startup and program
/// termination"). The exit handler compares argv[1] with a copy made in main and writes the
/// verdict to (a copy of) argv[2].
const ATEXIT_ARGV_PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static char **args;
static char *copy, *out;
static void bye(void) {
    FILE *f = fopen(out, "w");
    if (f) { fputs(strcmp(args[1], copy) == 0 ? "same\n" : "changed\n", f); fclose(f); }
}
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    args = argv;
    copy = strdup(argv[1]);
    out = strdup(argv[2]);
    atexit(bye);
    return 0;
}
"#;

fn opts(memory: MemoryMode) -> Options {
    Options {
        memory,
        ..Options::default()
    }
}

fn assert_killed_by(e: &TargetError, sig: i32, what: &str) {
    assert!(
        matches!(e, TargetError::ExecutorExited { signal: Some(s), code: None } if *s == sig),
        "{what}: expected ExecutorExited with signal {sig}, got {e:?} ({e})"
    );
    assert!(
        e.to_string().contains(&format!("signal {sig}")),
        "{what}: the message does not name signal {sig}: {e}"
    );
}

fn target_error(e: &kiln::Error) -> &TargetError {
    match e {
        kiln::Error::Target(t) => t,
        other => panic!("expected an executor error, got {other:?} ({other})"),
    }
}

#[test]
fn killed_during_handshake() {
    let dir = tempdir();
    let pidfile = dir.path().join("pid");
    let script = format!("echo $$ > '{}'; kill -9 $$", pidfile.display());
    let r = with_deadline("spawning an executor that kills itself", move || {
        let _g = spawn_lock();
        RemoteExecutor::spawn(
            Path::new("/bin/sh"),
            &["-c", &script, "sh"],
            Options::default(),
        )
        .map(|_| ())
    });
    match r {
        Ok(()) => panic!("the handshake with a process that killed itself succeeded"),
        Err(e) => assert_killed_by(&e, 9, "killed during the handshake"),
    }
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("the shell wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    assert_reaped(pid, "a process that died during the handshake");
}

#[test]
fn exits_during_handshake() {
    let r = with_deadline("spawning an executor that exits", || {
        let _g = spawn_lock();
        RemoteExecutor::spawn(
            Path::new("/bin/sh"),
            &["-c", "exit 7", "sh"],
            Options::default(),
        )
        .map(|_| ())
    });
    match r {
        Err(TargetError::ExecutorExited {
            code: Some(7),
            signal: None,
        }) => {}
        Err(e) => panic!("expected ExecutorExited with status 7, got {e:?} ({e})"),
        Ok(()) => panic!("the handshake with a process that exited succeeded"),
    }
}

#[test]
fn killed_before_linking() {
    let dir = tempdir();
    let obj = compile_c(dir.path(), "marker", MARKER_PROGRAM);
    for memory in [MemoryMode::Shared, MemoryMode::Copy] {
        let ex = Arc::new(spawn_remote(opts(memory)).expect("spawning kiln-executor"));
        let pid = ex.pid();
        assert_eq!(
            proc_stat(pid).map(|s| s.1),
            Some(std::process::id()),
            "the executor pid from the handshake is our child"
        );
        let s = kiln::Session::new(ex.clone());
        s.add_file(&obj).expect("adding the object");
        s.add_root("main");
        kill9(pid);
        let r = with_deadline("linking into a killed executor", move || {
            let r = s.link().map(drop);
            drop(s);
            r
        });
        let e = r.expect_err("linking into a killed executor succeeded");
        assert_killed_by(target_error(&e), 9, &format!("link ({memory:?})"));
        assert_reaped(pid, "a killed executor");
        // Every later call says the same, at once.
        let ex2 = ex.clone();
        let e = with_deadline("lookup after the kill", move || {
            ex2.lookup(&[b"printf"], &[], true).map(drop)
        })
        .expect_err("a lookup in a killed executor succeeded");
        assert_killed_by(&e, 9, "lookup after the kill");
        assert_eq!(ex.exit(0).expect("exit"), ExitReport::Signal(9));
    }
}

#[test]
fn killed_between_calls() {
    // Lookups work, the executor is killed, the next lookup reports it.
    let ex = Arc::new(spawn_remote(Options::default()).expect("spawning kiln-executor"));
    let pid = ex.pid();
    let found = ex
        .lookup(&[b"printf", b"no such symbol"], &[], true)
        .expect("lookup");
    assert!(found[0].is_some() && found[1].is_none(), "{found:?}");
    kill9(pid);
    let ex2 = ex.clone();
    let e = with_deadline("lookup after the kill", move || {
        ex2.lookup(&[b"printf"], &[], true).map(drop)
    })
    .expect_err("a lookup in a killed executor succeeded");
    assert_killed_by(&e, 9, "lookup after the kill");
    assert_reaped(pid, "a killed executor");
}

fn run_forever_then_kill(ex: Arc<RemoteExecutor>, obj: &Path, marker: PathBuf) -> TargetError {
    let (s, rx) = start_forever(ex.clone(), obj, &marker);
    kill9(ex.pid());
    let r = rx
        .recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("run_main did not return within {HANG:?} of the kill"));
    // Not dropped before the executor is gone: its units stay where they are.
    drop(s);
    match r {
        Ok(st) => panic!("run_main of a killed program returned status {st}"),
        Err(e) => e,
    }
}

#[test]
fn killed_while_running() {
    let dir = tempdir();
    let obj = compile_c(dir.path(), "forever", FOREVER_PROGRAM);
    for memory in [MemoryMode::Shared, MemoryMode::Copy] {
        let ex = Arc::new(spawn_remote(opts(memory)).expect("spawning kiln-executor"));
        let pid = ex.pid();
        let marker = dir.path().join(format!("started-{memory:?}"));
        let e = run_forever_then_kill(ex.clone(), &obj, marker);
        assert_killed_by(&e, 9, &format!("run_main ({memory:?})"));
        assert_reaped(pid, "an executor killed while running");
        assert_eq!(ex.exit(0).expect("exit"), ExitReport::Signal(9));
    }
}

/// Through a listener: the session's process is killed while its code runs; the listener says
/// how it ended, the controller reports that, and the listener carries on.
#[test]
fn killed_while_running_behind_a_listener() {
    let dir = tempdir();
    let obj = compile_c(dir.path(), "forever", FOREVER_PROGRAM);
    let sock = dir.path().join("sock");
    let mut l = Listener::unix(dir.path(), &sock);
    let ex =
        Arc::new(RemoteExecutor::connect(&l.endpoint(), Options::default()).expect("connecting"));
    let pid = ex.pid();
    assert!(
        children_of(l.pid()).contains(&pid),
        "the session's executor {pid} is a child of the listener"
    );
    let e = run_forever_then_kill(ex.clone(), &obj, dir.path().join("started"));
    assert_killed_by(&e, 9, "run_main behind a listener");
    assert_eq!(ex.exit(0).expect("exit"), ExitReport::Signal(9));
    // The listener reaped it before telling us.
    assert!(
        proc_stat(pid).is_none_or(|(s, ppid)| s != 'Z' && ppid != l.pid()),
        "the listener left its killed session process {pid} unreaped"
    );
    l.assert_alive("after a session's process was killed");
}

#[test]
fn crash_in_main_is_reported_as_the_signal() {
    let dir = tempdir();
    let obj = compile_c(dir.path(), "segv", SEGV_PROGRAM);
    for memory in [MemoryMode::Shared, MemoryMode::Copy] {
        let ex = Arc::new(spawn_remote(opts(memory)).expect("spawning kiln-executor"));
        let pid = ex.pid();
        let s = linked(ex.clone(), &obj);
        let ex2 = ex.clone();
        let entry = s.lookup("main").expect("main");
        let r = with_deadline("run_main of a crashing program", move || {
            ex2.run_main(entry, &["segv".to_string()])
        });
        match r {
            Ok(st) => panic!("a program that crashes returned {st}"),
            Err(e) => assert_killed_by(&e, 11, &format!("SIGSEGV in main ({memory:?})")),
        }
        assert_eq!(
            ex.exit(0).expect("exit"),
            ExitReport::Signal(11),
            "exit after a crash ({memory:?})"
        );
        assert_reaped(pid, "an executor that crashed");
        drop(s);
    }
}

/// The crash happens in an exit handler, after main returned 0: the end of the process is the
/// crash, not the status main returned (LLVM 14's lli reported 0 here).
#[test]
fn crash_in_an_exit_handler_is_reported_as_the_signal() {
    let dir = tempdir();
    let obj = compile_c(dir.path(), "atexit_segv", ATEXIT_SEGV_PROGRAM);
    for memory in [MemoryMode::Shared, MemoryMode::Copy] {
        let ex = Arc::new(spawn_remote(opts(memory)).expect("spawning kiln-executor"));
        let pid = ex.pid();
        let s = linked(ex.clone(), &obj);
        let st = s
            .run_main("main", &["atexit_segv".to_string()])
            .expect("main returns");
        assert_eq!(st, 0, "main's own status");
        let ex2 = ex.clone();
        let report = with_deadline("exit", move || ex2.exit(st)).expect("exit");
        assert_eq!(
            report,
            ExitReport::Signal(11),
            "the exit handler crashed ({memory:?})"
        );
        assert_reaped(pid, "an executor whose exit handler crashed");
        drop(s);
    }
}

/// The control for the test above: exit handlers do run at exit, and the status is main's.
#[test]
fn exit_runs_exit_handlers_and_reports_the_status() {
    let dir = tempdir();
    let obj = compile_c(dir.path(), "atexit_ok", ATEXIT_OK_PROGRAM);
    let ex = Arc::new(spawn_remote(Options::default()).expect("spawning kiln-executor"));
    let pid = ex.pid();
    let s = linked(ex.clone(), &obj);
    let marker = dir.path().join("bye");
    let st = s
        .run_main("main", &["atexit_ok".into(), marker.display().to_string()])
        .expect("main returns");
    assert_eq!(st, 0);
    assert!(!marker.exists(), "the exit handler ran before exit");
    let ex2 = ex.clone();
    let report = with_deadline("exit", move || ex2.exit(5)).expect("exit");
    assert_eq!(report, ExitReport::Code(5));
    assert_eq!(
        std::fs::read_to_string(&marker).expect("the exit handler wrote its file"),
        "bye\n"
    );
    assert_reaped(pid, "an executor that exited");
    drop(s);
}

/// argv must stay valid after main returns: exit handlers (and threads) may use it. The
/// executor's `run_main` frees the argument strings and the argv array when main returns.
#[test]
fn exit_handlers_see_argv() {
    let dir = tempdir();
    let obj = compile_c(dir.path(), "atexit_argv", ATEXIT_ARGV_PROGRAM);
    let ex = Arc::new(spawn_remote(Options::default()).expect("spawning kiln-executor"));
    let s = linked(ex.clone(), &obj);
    let verdict = dir.path().join("verdict");
    let arg = "an-argument-that-must-outlive-main-0123456789".to_string();
    let st = s
        .run_main(
            "main",
            &["atexit_argv".into(), arg, verdict.display().to_string()],
        )
        .expect("main returns");
    assert_eq!(st, 0);
    let ex2 = ex.clone();
    let report = with_deadline("exit", move || ex2.exit(0)).expect("exit");
    let seen = std::fs::read_to_string(&verdict).unwrap_or_default();
    assert!(
        report == ExitReport::Code(0) && seen == "same\n",
        "argv[1] did not survive main: the exit handler saw {seen:?}, the executor ended with \
         {report:?} (run_main frees argv when main returns: kiln-target sys/call.rs `main`)"
    );
    drop(s);
}
