//! kiln in process: each function is an `InMemoryGraph` linked with `Session::link_graph` (one
//! unit per function), debug sinks off.

use crate::code::{self, FunctionInput, CALL_ADDEND, HOST_CALL_DISP, PREV_CALL_DISP};
use crate::harness::{mean_us, Jit};
use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{FrameDescription, InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, Session, UnitId};
use std::time::Duration;

pub struct KilnJit {
    session: Session,
    frames: bool,
    units: Vec<UnitId>,
}

impl KilnJit {
    /// `host_by_dlsym`: leave `abs` to kiln's own resolution (earlier units, then the process)
    /// instead of `Session::define`. `frames`: describe each function's frame-pointer frame,
    /// so kiln writes and registers an FDE per function.
    pub fn new(host_by_dlsym: bool, frames: bool) -> Self {
        let session = Session::in_process();
        // No gdb registration, perf map, jitdump or valgrind requests: only the link itself
        // (neither cranelift-jit nor the naive loop does any of that).
        session.set_debug(DebugOptions::none());
        if !host_by_dlsym {
            session.define(code::HOST, code::host_address() as u64);
        }
        KilnJit {
            session,
            frames,
            units: Vec::new(),
        }
    }
}

impl Jit for KilnJit {
    fn link_one(&mut self, f: &mut FunctionInput) -> Result<(), String> {
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
            self.frames.then_some(FrameDescription::FramePointer),
        );
        let unit = self.session.link_graph(&g).map_err(|e| e.to_string())?;
        self.units.push(unit);
        Ok(())
    }

    fn address(&self, k: usize) -> Option<usize> {
        self.session.lookup(&code::name(k)).map(|a| a.0 as usize)
    }

    /// Where the time goes: `Session::stats` phases summed over every unit, and what
    /// `Session::link` spends outside them (the wall time per function minus its phases); for
    /// all functions and for the first and last 1% (the cost per function can grow with the
    /// number of units already linked).
    fn details(&self, durations_ns: &[u64]) -> Vec<String> {
        let n = self.units.len().min(durations_ns.len());
        if n == 0 {
            return Vec::new();
        }
        let window = (n / 100).max(1);
        let mut names: Vec<&'static str> = Vec::new();
        // per phase: (total, first window, last window), in ns
        let mut sums: Vec<[u64; 3]> = Vec::new();
        let mut outside = [0u64; 3];
        for (i, (&u, &wall)) in self.units.iter().zip(durations_ns).enumerate() {
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
                    *s += wall.saturating_sub(inside);
                }
            }
        }
        let total_wall: u64 = durations_ns[..n].iter().sum();
        let mut out = vec![
            format!(
                "kiln, where the time goes (Session::stats phases, µs per function; first and \
                 last {window} functions):"
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
        out.push(row("(outside the phases)", outside));
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
