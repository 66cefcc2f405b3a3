//! The timed loop shared by every linker under test: link the functions (one at a time, in
//! batches, or from several threads), read the process's memory before and after, then call a
//! few of them.

use crate::code::{self, FunctionInput};
use crate::procmem::{MemGrowth, MemSnapshot};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// A linker under test, used from one thread.
pub trait Jit {
    /// Link one function as its own unit and make it executable.
    fn link_one(&mut self, f: &mut FunctionInput) -> Result<(), String>;
    /// Link `fs` in one call, each function its own unit (by default one at a time).
    fn link_batch(&mut self, fs: &mut [FunctionInput]) -> Result<(), String> {
        fs.iter_mut().try_for_each(|f| self.link_one(f))
    }
    /// Link `fs` in one call as one unit: freed together (kiln: `Session::link_graphs_as_unit`;
    /// cranelift-jit: every function defined, then one `finalize_definitions`).
    fn link_batch_as_unit(&mut self, _fs: &mut [FunctionInput]) -> Result<(), String> {
        Err("this linker has no batch-as-one-unit call".into())
    }
    /// The address of `f{k}`, once linked.
    fn address(&self, k: usize) -> Option<usize>;
    /// Lines printed under the results table (kiln: where the time goes).
    fn details(&self, _durations_ns: &[u64]) -> Vec<String> {
        Vec::new()
    }
    /// The same linker, for several threads at once (if it can be shared).
    fn shared(&self) -> Option<&dyn SharedJit> {
        None
    }
}

/// A linker several threads link into at once.
pub trait SharedJit: Sync {
    /// Link one function as its own unit and make it executable; `thread` is the caller's
    /// index (0, 1, ...).
    fn link_shared(&self, thread: usize, f: &mut FunctionInput) -> Result<(), String>;
}

/// How the functions are handed to the linker.
#[derive(Clone, Copy, Debug)]
pub enum Schedule {
    /// One `link_one` per function; `timed`: also time each call (for a breakdown; the clock
    /// reads cost about as much as a tenth of a fast link, so only a diagnostic run does it).
    OneAtATime { timed: bool },
    /// `link_batch` with this many functions per call.
    Batches(usize),
    /// `link_batch_as_unit` with this many functions per call.
    UnitBatches(usize),
    /// This many threads call `link_shared`, thread `t` linking the functions `i` with
    /// `i % threads == t` in order (the inputs must form `threads` chains: see `code::inputs`).
    Threads(usize),
}

impl Schedule {
    /// How many call chains the inputs must form.
    pub fn chains(&self) -> usize {
        match *self {
            Schedule::Threads(n) => n.max(1),
            _ => 1,
        }
    }
}

pub struct Outcome {
    pub requested: usize,
    pub done: usize,
    pub code_bytes: u64,
    pub elapsed: Duration,
    /// CPU time of the whole process (user and system, all threads) during the loop.
    pub cpu: Duration,
    pub growth: MemGrowth,
    pub verified: Result<String, String>,
    /// Why the loop ended early: a link error or the time limit.
    pub stopped: Option<String>,
    pub details: Vec<String>,
}

/// How often (in functions) a loop reads the clock for the time limit and progress.
const CLOCK_EVERY: usize = 64;

/// What one linking loop did.
struct Linked {
    /// Functions linked in each chain (`Schedule::chains` of them).
    per_chain: Vec<usize>,
    /// The wall time of the loop.
    elapsed: Duration,
    /// The process's CPU time during the loop.
    cpu: Duration,
    /// Per function, when timed.
    durations: Vec<u64>,
    stopped: Option<String>,
}

/// Link `inputs` with the linker `make` creates, as `schedule` says. Memory is read before
/// `make` runs, so that whatever the linker reserves up front counts too.
pub fn run(
    make: &dyn Fn() -> Result<Box<dyn Jit>, String>,
    inputs: &mut [FunctionInput],
    schedule: Schedule,
    limit: Duration,
    label: &str,
) -> Result<Outcome, String> {
    let requested = inputs.len();
    let sizes: Vec<u64> = inputs.iter().map(|f| f.code.len() as u64).collect();
    let chains = schedule.chains();
    // Touched now, not during the loop (a zeroed allocation would be touched lazily).
    let mut durations: Vec<u64> = Vec::new();
    if let Schedule::OneAtATime { timed: true } = schedule {
        durations = vec![u64::MAX; requested];
        durations.clear();
    }
    let _ = code::host_address(); // dlsym's own allocations, before the first reading
    let before = MemSnapshot::now();
    let mut jit = make()?;
    let clock = Clock::new(limit, requested, label);
    let linked = match schedule {
        Schedule::OneAtATime { timed } => {
            one_at_a_time(&mut *jit, inputs, timed, durations, &clock)
        }
        Schedule::Batches(n) => batches(&mut *jit, inputs, n.max(1), false, &clock),
        Schedule::UnitBatches(n) => batches(&mut *jit, inputs, n.max(1), true, &clock),
        Schedule::Threads(n) => {
            let shared = jit
                .shared()
                .ok_or_else(|| format!("{label} cannot be shared by threads"))?;
            threads(shared, inputs, n.max(1), &clock)
        }
    };
    let after = MemSnapshot::now();
    let verified = code::verify(&linked.per_chain, &|k| jit.address(k));
    // The executable view of dual-mapped code (written through a writable alias) has no
    // resident pages until the code runs: count those after the whole chain ran once.
    let mut growth = after.growth(&before);
    growth.exec_rss = MemSnapshot::now().growth(&before).exec_rss;
    let details = jit.details(&linked.durations);
    // Not torn down: not measured, and slow for some of the linkers; the process ends next.
    std::mem::forget(jit);
    // Functions linked, in input order per chain: chain c's first n_c functions.
    let code_bytes = linked
        .per_chain
        .iter()
        .enumerate()
        .map(|(c, &n)| sizes.iter().skip(c).step_by(chains).take(n).sum::<u64>())
        .sum();
    Ok(Outcome {
        requested,
        done: linked.per_chain.iter().sum(),
        code_bytes,
        elapsed: linked.elapsed,
        cpu: linked.cpu,
        growth,
        verified,
        stopped: linked.stopped,
        details,
    })
}

/// The process's CPU time so far: user and system, all its threads.
fn process_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` through the pointer, which points to one.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    // SAFETY: zero-initialised (a valid `rusage`: plain integers) and filled in by the kernel.
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The loop's start, its time limit and its progress lines.
#[derive(Clone, Copy)]
struct Clock<'l> {
    start: Instant,
    cpu_start: Duration,
    limit: Duration,
    progress_every: usize,
    label: &'l str,
}

impl<'l> Clock<'l> {
    fn new(limit: Duration, requested: usize, label: &'l str) -> Self {
        Clock {
            cpu_start: process_cpu_time(),
            start: Instant::now(),
            limit,
            progress_every: (requested / 10).max(1),
            label,
        }
    }

    /// After `done` of the functions (of all threads, roughly): print progress now and then;
    /// `Err` once the time limit has passed.
    fn tick(&self, done: usize, previous: usize) -> Result<(), String> {
        let elapsed = self.start.elapsed();
        if done / self.progress_every != previous / self.progress_every {
            eprintln!(
                "  {}: {done} functions, {:.2} s",
                self.label,
                elapsed.as_secs_f64()
            );
        }
        if elapsed > self.limit {
            return Err(format!(
                "stopped by the time limit ({} s) after {done} functions",
                self.limit.as_secs()
            ));
        }
        Ok(())
    }
}

fn one_at_a_time(
    jit: &mut dyn Jit,
    inputs: &mut [FunctionInput],
    timed: bool,
    mut durations: Vec<u64>,
    clock: &Clock,
) -> Linked {
    let requested = inputs.len();
    let mut done = 0;
    let mut stopped = None;
    for f in inputs.iter_mut() {
        let t = timed.then(Instant::now);
        if let Err(e) = jit.link_one(f) {
            stopped = Some(format!("linking {} failed: {e}", f.name));
            break;
        }
        if let Some(t) = t {
            durations.push(t.elapsed().as_nanos() as u64);
        }
        done += 1;
        if done % CLOCK_EVERY == 0 && done < requested {
            if let Err(e) = clock.tick(done, done - CLOCK_EVERY) {
                stopped = Some(e);
                break;
            }
        }
    }
    Linked {
        per_chain: vec![done],
        elapsed: clock.start.elapsed(),
        cpu: process_cpu_time().saturating_sub(clock.cpu_start),
        durations,
        stopped,
    }
}

fn batches(
    jit: &mut dyn Jit,
    inputs: &mut [FunctionInput],
    size: usize,
    as_unit: bool,
    clock: &Clock,
) -> Linked {
    let requested = inputs.len();
    let mut done = 0;
    let mut stopped = None;
    for batch in inputs.chunks_mut(size) {
        let n = batch.len();
        let result = if as_unit {
            jit.link_batch_as_unit(batch)
        } else {
            jit.link_batch(batch)
        };
        if let Err(e) = result {
            // The functions of a failed batch are not counted, even those it linked.
            stopped = Some(format!(
                "linking the batch f{done}..f{} failed: {e}",
                done + n - 1
            ));
            break;
        }
        done += n;
        if done < requested {
            if let Err(e) = clock.tick(done, done - n) {
                stopped = Some(e);
                break;
            }
        }
    }
    Linked {
        per_chain: vec![done],
        elapsed: clock.start.elapsed(),
        cpu: process_cpu_time().saturating_sub(clock.cpu_start),
        durations: Vec::new(),
        stopped,
    }
}

/// `n` threads link at once, thread `t` the functions `t`, `t + n`, `t + 2n`, ... in order. They
/// are started first and released together; the time runs from their release to the last one's
/// end.
fn threads(jit: &dyn SharedJit, inputs: &mut [FunctionInput], n: usize, clock: &Clock) -> Linked {
    let mut shares: Vec<Vec<&mut FunctionInput>> = (0..n).map(|_| Vec::new()).collect();
    for (i, f) in inputs.iter_mut().enumerate() {
        shares[i % n].push(f);
    }
    let go = Barrier::new(n + 1);
    let (mut elapsed, mut cpu) = (Duration::ZERO, Duration::ZERO);
    let (per_chain, stops): (Vec<usize>, Vec<Option<String>>) = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(thread, share)| {
                let go = &go;
                s.spawn(move || {
                    go.wait();
                    let clock = Clock {
                        start: Instant::now(),
                        ..*clock
                    };
                    let mut done = 0;
                    for f in share {
                        if let Err(e) = jit.link_shared(thread, f) {
                            return (done, Some(format!("linking {} failed: {e}", f.name)));
                        }
                        done += 1;
                        if done % CLOCK_EVERY == 0 {
                            // Progress in the whole run's terms: n threads at about one pace.
                            if let Err(e) = clock.tick(done * n, (done - CLOCK_EVERY) * n) {
                                return (done, Some(e));
                            }
                        }
                    }
                    (done, None)
                })
            })
            .collect();
        // The clock's start is when the threads are released, not when they were made (they
        // wait in the barrier, which uses no CPU).
        let cpu_start = process_cpu_time();
        let start = Instant::now();
        go.wait();
        let joined = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (0, Some("a linking thread panicked".to_string())))
            })
            .unzip();
        elapsed = start.elapsed();
        cpu = process_cpu_time().saturating_sub(cpu_start);
        joined
    });
    Linked {
        per_chain,
        elapsed,
        cpu,
        durations: Vec::new(),
        stopped: stops.into_iter().flatten().next(),
    }
}

/// Mean of `d` (nanoseconds), in microseconds.
pub fn mean_us(d: &[u64]) -> f64 {
    if d.is_empty() {
        return 0.0;
    }
    d.iter().sum::<u64>() as f64 / d.len() as f64 / 1e3
}
