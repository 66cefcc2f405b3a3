//! kiln in process: each function is an `InMemoryGraph` linked into a unit of its own, one at a
//! time (`Session::link_graph`), in batches (`Session::link_graphs`) or from several threads
//! sharing the session, or lent to kiln as a `FunctionRef` (`Session::link_function`: code and
//! edges borrowed, no graph built); debug sinks off unless a row asks for them.

use crate::code::{self, FunctionInput, CALL_ADDEND, HOST_CALL_DISP, PREV_CALL_DISP};
use crate::harness::{mean_us, Jit, SharedJit};
use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{EdgeRef, FrameDescription, FunctionRef, InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, Session, UnitId, UnitOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct KilnJit {
    /// One session for the whole run; the threads of a threaded run share it.
    session: Arc<Session>,
    /// For the diagnostic with a session per thread: thread `t > 0` links into `apart[t - 1]`
    /// (thread 0 into `session`). Empty otherwise.
    apart: Vec<Arc<Session>>,
    frames: bool,
    /// Link one at a time with `Session::link_function` (borrowed code and edges) rather than
    /// building an `InMemoryGraph`.
    borrowed: bool,
    /// The units linked through `&mut self` (one at a time or in batches), for the breakdown.
    units: Vec<UnitId>,
    /// With stats on: the time to build each function's graph (ns), for the breakdown.
    build_ns: Option<Vec<u64>>,
}

/// How a kiln row is set up.
#[derive(Clone, Debug)]
pub struct KilnSetup {
    /// Which debugger and profiler sinks learn about each unit.
    pub debug: DebugOptions,
    /// Keep `Session::stats` (phase timings) for every unit: a diagnostic run, it costs.
    pub stats: bool,
    /// Leave `abs` to kiln's own resolution (earlier units, then the process) instead of
    /// `Session::define`.
    pub host_by_dlsym: bool,
    /// Describe each function's frame-pointer frame, so kiln writes and registers an FDE per
    /// function.
    pub frames: bool,
    /// One at a time, each function lent as a `FunctionRef` (`Session::link_function`): what a
    /// JIT that holds its code and relocations (cranelift-jit's `define_function_bytes`) does.
    pub borrowed: bool,
    /// Sessions (each with its own in-process executor) that the threads of a threaded run
    /// link into, thread `t` into session `t % sessions`: 1 normally; one per thread for the
    /// diagnostic that shares nothing kiln owns between the threads.
    pub sessions: usize,
}

/// The sinks of a row: `none`, `gdb`, `perf-map`, `jitdump` (into a directory of its own under
/// the temporary directory) or `all` (the four of `DebugOptions`, valgrind included).
pub fn debug_options(sinks: &str) -> Result<DebugOptions, String> {
    let mut d = DebugOptions::none();
    match sinks {
        "none" => {}
        "gdb" => d.gdb = true,
        "perf-map" => d.perf_map = true,
        "jitdump" => d.jitdump = Some(jitdump_dir()),
        "all" => {
            d.gdb = true;
            d.perf_map = true;
            d.jitdump = Some(jitdump_dir());
            d.valgrind = true;
        }
        _ => return Err(format!("unknown debug sinks {sinks}")),
    }
    Ok(d)
}

/// Where this process's jitdump goes (removed again by `remove_sink_files`).
fn jitdump_dir() -> PathBuf {
    std::env::temp_dir().join(format!("kiln-bench-jitdump-{}", std::process::id()))
}

/// Remove the files the sinks of `debug` wrote for this process (100,000 functions make a 3 MB
/// perf map and a jitdump holding all the code, 20 MB).
pub fn remove_sink_files(debug: &DebugOptions) {
    if debug.perf_map {
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", std::process::id()));
    }
    if let Some(dir) = &debug.jitdump {
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl KilnJit {
    pub fn new(setup: &KilnSetup) -> Result<Self, String> {
        if let Some(dir) = &setup.debug.jitdump {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let session = || {
            let session = Session::in_process();
            // Sinks off: no gdb registration, perf map, jitdump or valgrind requests, only the
            // link itself (neither cranelift-jit nor the naive loop does any of that).
            session.set_debug(setup.debug.clone());
            session.set_collect_stats(setup.stats);
            if !setup.host_by_dlsym {
                session.define(code::HOST, code::host_address() as u64);
            }
            Arc::new(session)
        };
        Ok(KilnJit {
            session: session(),
            apart: (1..setup.sessions.max(1)).map(|_| session()).collect(),
            frames: setup.frames,
            borrowed: setup.borrowed,
            units: Vec::new(),
            build_ns: setup.stats.then(Vec::new),
        })
    }
}

/// The graph of one function: its code (moved, not copied) and its two calls.
fn graph(f: &mut FunctionInput, frames: bool) -> InMemoryGraph {
    let mut g = InMemoryGraph::new(f.name.clone());
    g.add_function(
        &f.name,
        std::mem::take(&mut f.code),
        vec![
            InMemoryEdge::new(
                HOST_CALL_DISP,
                EdgeKind::BranchPCRel32,
                code::HOST,
                CALL_ADDEND,
            ),
            InMemoryEdge::new(
                PREV_CALL_DISP,
                EdgeKind::BranchPCRel32,
                &f.prev,
                CALL_ADDEND,
            ),
        ],
        frames.then_some(FrameDescription::FramePointer),
    );
    g
}

/// The edges of one function, borrowed from its input: its two calls.
fn edges(f: &FunctionInput) -> [EdgeRef<'_>; 2] {
    [
        EdgeRef::new(
            HOST_CALL_DISP,
            EdgeKind::BranchPCRel32,
            code::HOST,
            CALL_ADDEND,
        ),
        EdgeRef::new(
            PREV_CALL_DISP,
            EdgeKind::BranchPCRel32,
            &f.prev,
            CALL_ADDEND,
        ),
    ]
}

impl KilnJit {
    /// One function as the JIT lends it: its name, code and edges borrowed.
    fn function<'a>(&self, f: &'a FunctionInput, edges: &'a [EdgeRef<'a>]) -> FunctionRef<'a> {
        FunctionRef {
            frame: self.frames.then_some(FrameDescription::FramePointer),
            ..FunctionRef::new(&f.name, &f.code, edges)
        }
    }
}

impl SharedJit for KilnJit {
    fn link_shared(&self, thread: usize, f: &mut FunctionInput) -> Result<(), String> {
        let session = match thread % (self.apart.len() + 1) {
            0 => &self.session,
            t => &self.apart[t - 1],
        };
        if self.borrowed {
            let edges = edges(f);
            session
                .link_function(&self.function(f, &edges))
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        let g = graph(f, self.frames);
        session.link_graph(&g).map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Jit for KilnJit {
    fn link_one(&mut self, f: &mut FunctionInput) -> Result<(), String> {
        if self.borrowed {
            let edges = edges(f);
            let unit = self
                .session
                .link_function(&self.function(f, &edges))
                .map_err(|e| e.to_string())?;
            self.units.push(unit);
            return Ok(());
        }
        let g = match &mut self.build_ns {
            Some(build_ns) => {
                let t = Instant::now();
                let g = graph(f, self.frames);
                build_ns.push(t.elapsed().as_nanos() as u64);
                g
            }
            None => graph(f, self.frames),
        };
        let unit = self.session.link_graph(&g).map_err(|e| e.to_string())?;
        self.units.push(unit);
        Ok(())
    }

    fn link_batch(&mut self, fs: &mut [FunctionInput]) -> Result<(), String> {
        let graphs: Vec<InMemoryGraph> = fs.iter_mut().map(|f| graph(f, self.frames)).collect();
        let scope = self.session.default_scope();
        let units = self
            .session
            .link_graphs(scope, &graphs)
            .map_err(|e| e.to_string())?;
        self.units.extend(units);
        Ok(())
    }

    fn link_batch_as_unit(&mut self, fs: &mut [FunctionInput]) -> Result<(), String> {
        let scope = self.session.default_scope();
        if self.borrowed {
            let edges: Vec<[EdgeRef; 2]> = fs.iter().map(edges).collect();
            let functions: Vec<FunctionRef> = fs
                .iter()
                .zip(&edges)
                .map(|(f, e)| self.function(f, e))
                .collect();
            let unit = self
                .session
                .link_functions_with(&functions, &UnitOptions::new(scope))
                .map_err(|e| e.to_string())?;
            self.units.push(unit);
            return Ok(());
        }
        let graphs: Vec<InMemoryGraph> = fs.iter_mut().map(|f| graph(f, self.frames)).collect();
        let unit = self
            .session
            .link_graphs_as_unit(scope, &graphs)
            .map_err(|e| e.to_string())?;
        self.units.push(unit);
        Ok(())
    }

    fn shared(&self) -> Option<&dyn SharedJit> {
        Some(self)
    }

    fn address(&self, k: usize) -> Option<usize> {
        let name = code::name(k);
        std::iter::once(&self.session)
            .chain(&self.apart)
            .find_map(|s| s.lookup(&name))
            .map(|a| a.0 as usize)
    }

    /// Where the time goes (when stats were collected): `Session::stats` phases summed over
    /// every unit, the time to build each graph, and what `Session::link_graph` spends outside
    /// `link::link`'s phases (the wall time per function minus both); for all functions and
    /// for the first and last 1% (the cost per function can grow with the number of units
    /// already linked).
    fn details(&self, durations_ns: &[u64]) -> Vec<String> {
        let Some(build_ns) = &self.build_ns else {
            return Vec::new();
        };
        let n = self.units.len().min(durations_ns.len()).min(build_ns.len());
        if n == 0 {
            return Vec::new();
        }
        let window = (n / 100).max(1);
        let mut names: Vec<&'static str> = Vec::new();
        // per phase: (total, first window, last window), in ns
        let mut sums: Vec<[u64; 3]> = Vec::new();
        let (mut outside, mut building) = ([0u64; 3], [0u64; 3]);
        let per_unit = self.units.iter().zip(durations_ns).zip(build_ns);
        for (i, ((&u, &wall), &build)) in per_unit.take(n).enumerate() {
            let Some(stats) = self.session.stats(u) else {
                continue;
            };
            let slots = [true, i < window, i >= n - window];
            let mut inside = 0u64;
            for (name, d) in &stats.phases {
                let ns = d.as_nanos() as u64;
                inside += ns;
                let j = match names.iter().position(|x| x == name) {
                    Some(j) => j,
                    None => {
                        names.push(name);
                        sums.push([0; 3]);
                        names.len() - 1
                    }
                };
                for (s, on) in sums[j].iter_mut().zip(slots) {
                    if on {
                        *s += ns;
                    }
                }
            }
            for (s, on) in outside.iter_mut().zip(slots) {
                if on {
                    *s += wall.saturating_sub(inside + build);
                }
            }
            for (s, on) in building.iter_mut().zip(slots) {
                if on {
                    *s += build;
                }
            }
        }
        let total_wall: u64 = durations_ns[..n].iter().sum();
        let mut out = vec![
            format!(
                "kiln, where the time goes (set_collect_stats(true), Session::stats phases, µs \
                 per function; first and last {window} functions):"
            ),
            format!(
                "  {:<26} {:>10} {:>8} {:>10} {:>10}",
                "phase", "total s", "share", "first", "last"
            ),
        ];
        let row = |name: &str, s: [u64; 3]| {
            format!(
                "  {:<26} {:>10.3} {:>7.1}% {:>10.2} {:>10.2}",
                name,
                Duration::from_nanos(s[0]).as_secs_f64(),
                100.0 * s[0] as f64 / total_wall.max(1) as f64,
                s[1] as f64 / window as f64 / 1e3,
                s[2] as f64 / window as f64 / 1e3,
            )
        };
        for (name, s) in names.iter().zip(&sums) {
            out.push(row(name, *s));
        }
        out.push(row("(link_graph, outside them)", outside));
        out.push(row("(building the graph)", building));
        out.push(format!(
            "  {:<26} {:>10.3} {:>7.1}% {:>10.2} {:>10.2}",
            "all",
            Duration::from_nanos(total_wall).as_secs_f64(),
            100.0,
            mean_us(&durations_ns[..window]),
            mean_us(&durations_ns[n - window..n]),
        ));
        out
    }
}
