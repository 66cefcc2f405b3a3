//! The timed loop shared by every linker under test: link the functions one at a time, read the
//! process's memory before and after, then call a few of them.

use crate::code::{self, FunctionInput};
use crate::procmem::{MemGrowth, MemSnapshot};
use std::time::{Duration, Instant};

/// A linker under test: each call links one function as its own unit and makes it executable.
pub trait Jit {
    fn link_one(&mut self, f: &mut FunctionInput) -> Result<(), String>;
    /// The address of `f{k}`, once linked.
    fn address(&self, k: usize) -> Option<usize>;
    /// Lines printed under the results table (kiln: where the time goes).
    fn details(&self, _durations_ns: &[u64]) -> Vec<String> {
        Vec::new()
    }
}

pub struct Outcome {
    pub requested: usize,
    pub done: usize,
    pub code_bytes: u64,
    pub elapsed: Duration,
    pub growth: MemGrowth,
    pub verified: Result<String, String>,
    /// Why the loop ended early: a link error or the time limit.
    pub stopped: Option<String>,
    pub details: Vec<String>,
}

/// Link `inputs` one at a time with the linker `make` creates. Memory is read before `make`
/// runs, so that whatever the linker reserves up front counts too.
pub fn run(
    make: &dyn Fn() -> Result<Box<dyn Jit>, String>,
    inputs: &mut [FunctionInput],
    limit: Duration,
    label: &str,
) -> Result<Outcome, String> {
    let sizes: Vec<u64> = inputs.iter().map(|f| f.code.len() as u64).collect();
    // Touched now, not during the loop (a zeroed allocation would be touched lazily).
    let mut durations: Vec<u64> = vec![u64::MAX; inputs.len()];
    durations.clear();
    let _ = code::host_address(); // dlsym's own allocations, before the first reading
    let before = MemSnapshot::now();
    let mut jit = make()?;
    let mut stopped = None;
    let requested = inputs.len();
    let progress_every = (requested / 10).max(1);
    let start = Instant::now();
    for (i, f) in inputs.iter_mut().enumerate() {
        let t = Instant::now();
        if let Err(e) = jit.link_one(f) {
            stopped = Some(format!("linking {} failed: {e}", f.name));
            break;
        }
        let now = Instant::now();
        durations.push((now - t).as_nanos() as u64);
        if (i + 1) % progress_every == 0 {
            eprintln!(
                "  {label}: {} functions, {:.2} s",
                i + 1,
                (now - start).as_secs_f64()
            );
        }
        if now - start > limit && i + 1 < requested {
            stopped = Some(format!(
                "stopped by the time limit ({} s) after {} functions",
                limit.as_secs(),
                i + 1
            ));
            break;
        }
    }
    let elapsed = start.elapsed();
    let after = MemSnapshot::now();
    let done = durations.len();
    let verified = code::verify(done, &|k| jit.address(k));
    // The executable view of dual-mapped code (written through a writable alias) has no
    // resident pages until the code runs: count those after the whole chain ran once.
    let mut growth = after.growth(&before);
    growth.exec_rss = MemSnapshot::now().growth(&before).exec_rss;
    let details = jit.details(&durations);
    // Not torn down: not measured, and slow for some of the linkers; the process ends next.
    std::mem::forget(jit);
    Ok(Outcome {
        requested,
        done,
        code_bytes: sizes[..done].iter().sum(),
        elapsed,
        growth,
        verified,
        stopped,
        details,
    })
}

/// Mean of `d` (nanoseconds), in microseconds.
pub fn mean_us(d: &[u64]) -> f64 {
    if d.is_empty() {
        return 0.0;
    }
    d.iter().sum::<u64>() as f64 / d.len() as f64 / 1e3
}
