//! For test programs that are their own executor (`harness = false` in Cargo.toml): each
//! scenario runs in process and with its code in a spawned executor (this same program, started
//! with [`SERVE`]), in shared and in copied memory.

use kiln::{DebugOptions, Session};
use kiln_remote::{MemoryMode, Options, RemoteExecutor};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// The flag that makes the test program serve as an executor.
pub const SERVE: &str = "--kiln-executor";
/// How long a scenario may take before it counts as hung (never a judgement of speed).
const HANG: Duration = Duration::from_secs(60);

/// Where a scenario's code runs.
#[derive(Clone, Copy, Debug)]
pub enum Where {
    InProcess,
    Remote(MemoryMode),
}

/// Every place a scenario runs in, with the suffix of its test names.
pub const EVERYWHERE: [(&str, Where); 3] = [
    ("in_process", Where::InProcess),
    ("shared_memory", Where::Remote(MemoryMode::Shared)),
    ("copied_memory", Where::Remote(MemoryMode::Copy)),
];

/// A session whose executor is in this process or a spawned one, debug sinks off.
pub fn session(at: Where) -> Arc<Session> {
    let s = match at {
        Where::InProcess => Session::in_process(),
        Where::Remote(memory) => {
            let me = std::env::current_exe().expect("the test program's path");
            let opts = Options {
                memory,
                ..Options::default()
            };
            let ex = RemoteExecutor::spawn(&me, &[SERVE], opts).expect("spawning the executor");
            if let MemoryMode::Shared = memory {
                assert!(ex.shares_memory(), "shared memory was asked for");
            }
            Session::new(Arc::new(ex))
        }
    };
    s.set_debug(DebugOptions::none());
    Arc::new(s)
}

/// A scenario: what it does, given where the code runs.
pub type Scenario = fn(Where);

pub type Test = (String, Box<dyn Fn() + Send + Sync>);

/// Each scenario in each of `places`, named `SCENARIO_PLACE`.
pub fn in_places(scenarios: &[(&str, Scenario)], places: &[(&str, Where)]) -> Vec<Test> {
    let mut tests: Vec<Test> = Vec::new();
    for &(place, at) in places {
        for &(name, f) in scenarios {
            tests.push((format!("{name}_{place}"), Box::new(move || f(at))));
        }
    }
    tests
}

/// The test program's main: serve as an executor when started with [`SERVE`]; otherwise run the
/// tests (a plain argument filters them by substring; libtest's flags are accepted and ignored)
/// and exit non-zero if one failed or none matched.
pub fn main(tests: impl FnOnce() -> Vec<Test>) {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == SERVE) {
        std::process::exit(kiln_remote::executor_main(&args[2..], &args[1..2]));
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, f) in tests() {
        if filter.is_some_and(|w| !name.contains(w.as_str())) {
            continue;
        }
        ran += 1;
        match run_one(f) {
            Ok(()) => println!("test {name} ... ok"),
            Err(why) => {
                println!("test {name} ... FAILED: {why}");
                failed.push(name);
            }
        }
    }
    if ran == 0 {
        println!("no test matches {filter:?}");
        std::process::exit(1);
    }
    println!("\n{} passed, {} failed", ran - failed.len(), failed.len());
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}

/// Run `f` on a thread of its own: Ok if it returned, Err with why if it panicked or hung.
fn run_one(f: Box<dyn Fn() + Send + Sync>) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&*f));
        let _ = tx.send(r.is_ok());
    });
    match rx.recv_timeout(HANG) {
        Ok(true) => Ok(()),
        Ok(false) => Err("panicked (see above)".into()),
        Err(_) => Err(format!("did not finish within {HANG:?}")),
    }
}
