//! Shared by the kiln-remote integration tests: compiling C test programs, starting executors
//! and listeners, killing and watching processes through /proc, and waiting with deadlines that
//! only turn a hang into a failure (they never judge speed).
#![allow(dead_code)] // each test binary uses a different part

use kiln::Session;
use kiln_remote::{Options, RemoteExecutor};
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const EXECUTOR: &str = env!("CARGO_BIN_EXE_kiln-executor");

/// How long anything may take before a test calls it a hang.
pub const HANG: Duration = Duration::from_secs(20);

/// Serializes the process spawns of one test binary, so that no test depends on what a process
/// that another test thread starts at the same moment inherits (an executor's channel must
/// never leak that way: `spawn_race.rs` tests exactly that, without this lock).
static SPAWN: Mutex<()> = Mutex::new(());

pub fn spawn_lock() -> MutexGuard<'static, ()> {
    SPAWN.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kiln-remote-test-")
        .tempdir()
        .expect("creating a temporary directory")
}

/// Run a command to completion (under the spawn lock while it starts), failing the test if it
/// cannot start or does not finish within [`HANG`].
pub fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let child = {
        let _g = spawn_lock();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e} (is the tool installed?)"))
    };
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HANG) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("waiting for {what}: {e}"),
        Err(_) => {
            kill9(pid);
            panic!("{what} did not finish within {HANG:?}; killed it");
        }
    }
}

/// Compile a C source to an object with `cc -c -O1`.
pub fn compile_c(dir: &Path, name: &str, src: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&c, src).expect("writing a C source");
    let out = run(Command::new("cc")
        .arg("-c")
        .arg("-O1")
        .arg("-o")
        .arg(&o)
        .arg(&c));
    assert!(
        out.status.success(),
        "cc -c {name}.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    o
}

/// Compile a C source to a shared library.
pub fn compile_shared(dir: &Path, name: &str, src: &str, defines: &[String]) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    let so = dir.join(format!("lib{name}.so"));
    std::fs::write(&c, src).expect("writing a C source");
    let out = run(Command::new("cc")
        .args(["-shared", "-fPIC", "-O1"])
        .args(defines)
        .arg("-o")
        .arg(&so)
        .arg(&c));
    assert!(
        out.status.success(),
        "cc -shared {name}.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

/// `main(argc, argv)` writes "ran" to the file `argv[1]` and returns 42.
pub const MARKER_PROGRAM: &str = r#"
#include <stdio.h>
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    FILE *f = fopen(argv[1], "w");
    if (!f) return 3;
    fputs("ran\n", f);
    fclose(f);
    return 42;
}
"#;

/// `main(argc, argv)` writes "started" to the file `argv[1]`, then waits forever.
pub const FOREVER_PROGRAM: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc >= 2) {
        FILE *f = fopen(argv[1], "w");
        if (f) { fputs("started\n", f); fclose(f); }
    }
    for (;;) pause();
}
"#;

/// A shared library whose constructor writes the file `MARKER` (a -D define): loading it is
/// running code, visibly.
pub const MARK_LIBRARY: &str = r#"
#include <stdio.h>
__attribute__((constructor)) static void kiln_test_mark(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("loaded\n", f); fclose(f); }
}
"#;

pub fn mark_library(dir: &Path, name: &str, marker: &Path) -> PathBuf {
    compile_shared(
        dir,
        name,
        MARK_LIBRARY,
        &[format!("-DMARKER=\"{}\"", marker.display())],
    )
}

/// Start `kiln-executor` as a child (under the spawn lock).
pub fn spawn_remote(opts: Options) -> kiln_target::Result<RemoteExecutor> {
    let _g = spawn_lock();
    RemoteExecutor::spawn(Path::new(EXECUTOR), &[], opts)
}

/// A session on `ex` with `obj` linked (entry `main`) and initializers run.
pub fn linked(ex: Arc<RemoteExecutor>, obj: &Path) -> Session {
    let s = Session::new(ex);
    s.add_file(obj).expect("adding the object");
    s.add_root("main");
    s.link().expect("linking");
    s.run_initializers().expect("running initializers");
    s
}

/// Run `f` in a thread; fail the test if it has not returned within [`HANG`].
/// Link `obj` (FOREVER_PROGRAM) into `ex` and run its main in a thread until it has created
/// `marker`: the session (to be dropped only after the executor is gone) and where `run_main`'s
/// result will arrive.
pub fn start_forever(
    ex: Arc<RemoteExecutor>,
    obj: &Path,
    marker: &Path,
) -> (Session, std::sync::mpsc::Receiver<kiln_target::Result<i32>>) {
    use kiln_target::Executor;
    let s = linked(ex.clone(), obj);
    let entry = s.lookup("main").expect("main is defined");
    let args = vec!["forever".to_string(), marker.display().to_string()];
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(ex.run_main(entry, &args));
    });
    wait_until("the program started", || marker.exists());
    (s, rx)
}

pub fn with_deadline<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HANG) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {HANG:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the thread panicked"),
    }
}

/// Wait for a child with a deadline (a hang is a failure; the child is killed then).
pub fn wait_child(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("waiting for a child") {
            return st;
        }
        if start.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the process did not exit within {HANG:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Poll `cond` until it holds; fail with `what` after [`HANG`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > HANG {
            panic!("{what}: still not the case after {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL a process with the `kill` command.
pub fn kill9(pid: u32) {
    let st = {
        let _g = spawn_lock();
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .stdin(Stdio::null())
            .status()
            .expect("running kill")
    };
    assert!(st.success(), "kill -9 {pid} failed: {st}");
}

/// State letter and parent pid of a process from /proc/PID/stat; None once it is gone.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may contain spaces and parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// A process we started and that has ended was reaped: gone from /proc, never left a zombie
/// of ours (a pid reused by an unrelated process is neither a zombie nor our child).
pub fn assert_reaped(pid: u32, what: &str) {
    if let Some((state, ppid)) = proc_stat(pid) {
        let ours = ppid == std::process::id();
        assert!(
            !ours,
            "{what}: process {pid} is still our child (state {state}): {}",
            if state == 'Z' {
                "a zombie nobody reaped"
            } else {
                "still running"
            }
        );
    }
}

/// The process has stopped running (gone, or a zombie of a parent that is not ours).
pub fn not_running(pid: u32) -> bool {
    !matches!(proc_stat(pid), Some((s, _)) if s != 'Z')
}

/// Children of `pid` (all its threads).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// The first field of /proc/PID/syscall: the number of the system call the process's main
/// thread is blocked in.
pub fn current_syscall(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    s.split_whitespace().next().map(str::to_string)
}

/// A 24-byte token in a file of the given mode, and the token.
pub fn token_file(dir: &Path, name: &str, mode: u32) -> (PathBuf, kiln_remote::Token) {
    let secret = b"kiln-test-secret-0123456789abcdef";
    let p = dir.join(name);
    std::fs::write(&p, secret).expect("writing the token file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    (p, kiln_remote::Token::new(secret).expect("a valid token"))
}

/// A `kiln-executor --listen ...` child, killed and reaped when dropped.
pub struct Listener {
    pub child: Child,
    /// What it printed after `listening on `: `unix:PATH` or `tcp:HOST:PORT`.
    pub addr: String,
    pub stderr: PathBuf,
}

impl Listener {
    /// Start `kiln-executor ARGS` (with KILN_TOKEN removed from its environment) and wait for
    /// its `listening on ADDR` line.
    pub fn start(dir: &Path, args: &[&str]) -> Listener {
        Listener::start_with(dir, Command::new(EXECUTOR).args(args))
    }

    /// A listener on the Unix socket `sock`.
    pub fn unix(dir: &Path, sock: &Path) -> Listener {
        Listener::start(dir, &["--listen", &format!("unix:{}", sock.display())])
    }

    /// Start `cmd`, which runs a listener (e.g. through a shell that `exec`s it).
    pub fn start_with(dir: &Path, cmd: &mut Command) -> Listener {
        let args = format!("{cmd:?}");
        let stderr = dir.join(format!(
            "listener-{}.stderr",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let mut child = {
            let _g = spawn_lock();
            cmd.env_remove(kiln_remote::auth::TOKEN_ENV)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&stderr).expect("creating a stderr file"))
                .spawn()
                .expect("starting kiln-executor --listen")
        };
        let out = child.stdout.take().expect("piped stdout");
        let line = with_deadline("reading the listener's ready line", move || {
            let mut line = String::new();
            let mut r = std::io::BufReader::new(out);
            let _ = r.read_line(&mut line);
            // Keep reading (and dropping) so that the listener never blocks on its stdout.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            });
            line
        });
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{args} printed {line:?}, not `listening on ADDR`; stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        Listener {
            addr: addr.to_string(),
            child,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> kiln_remote::Endpoint {
        self.addr
            .parse()
            .expect("the listener's address as an endpoint")
    }

    /// The `HOST:PORT` of a TCP listener.
    pub fn tcp_addr(&self) -> String {
        self.addr
            .strip_prefix("tcp:")
            .expect("a TCP listener")
            .to_string()
    }

    /// Fails the test if the listener has exited.
    pub fn assert_alive(&mut self, what: &str) {
        if let Some(st) = self.child.try_wait().expect("try_wait") {
            panic!(
                "{what}: the listener exited ({st}); stderr:\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
