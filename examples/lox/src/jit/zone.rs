//! Compaction of the code zone's method region (kiln-jit's `Jit::compact`), when a function
//! does not fit.
//!
//! The verdicts: a compiled function with a frame on the Lox frame stack is **pinned** (its
//! code may be running, or be returned to: every return address into compiled code — frame
//! word 3, and those on the machine stack between `lox_enter` and the helper running now —
//! lies in the code of a function with a frame); of the others, the least recently used half is
//! **dropped**, together with every function that calls one of them directly (a direct call is
//! a symbol edge kiln-jit will not leave dangling); the rest is **kept** and may move. Before,
//! the call sites retargeted to dropped code are pointed back at the interpreter bridge (and wait
//! for it again); after, the entry table, the OSR entries and the caches' handles follow the
//! move map, and dropped functions go back to the interpreter, to be compiled again when hot.

use std::collections::HashSet;

use kiln::UnitId;
use kiln_jit::Verdict;

use super::Jit;
use crate::heap::layout::closure;
use crate::vm::Vm;

impl Jit {
    /// Makes room in the method region for `compiling`; false if nothing could be dropped.
    pub(super) fn compact_zone(&mut self, vm: &Vm, compiling: usize) -> bool {
        let started = std::time::Instant::now();
        let active = active_protos(vm);
        let drop = self.victims(&active, compiling);
        if drop.is_empty() {
            return false;
        }
        if let Err(e) = self.unlink_sites_into(&drop) {
            self.note_compaction_error(e);
            return false;
        }
        let pinned: HashSet<UnitId> = self
            .unit_proto
            .iter()
            .filter(|(_, p)| active.contains(p))
            .map(|(u, _)| *u)
            .collect();
        let result = self.backend.jit().compact(|unit| {
            if drop.contains(&unit) {
                Verdict::Drop
            } else if pinned.contains(&unit) {
                Verdict::Pin
            } else {
                Verdict::Keep
            }
        });
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                self.note_compaction_error(format!("compacting the code zone: {e}"));
                return false;
            }
        };
        self.follow(vm, &report);
        self.stats.compactions += 1;
        self.stats.functions_dropped += report.dropped.len() as u64;
        self.stats.units_moved += report.moved.len() as u64;
        self.stats.compaction_nanos += started.elapsed().as_nanos() as u64;
        true
    }

    fn note_compaction_error(&mut self, e: String) {
        self.stats.compaction_errors += 1;
        self.stats.first_compaction_error.get_or_insert(e);
    }

    /// The units to drop: the least recently used half of the compiled functions without a
    /// frame, and, transitively, every unit that binds to one of them; none if that would take
    /// a function with a frame.
    fn victims(&self, active: &HashSet<usize>, compiling: usize) -> HashSet<UnitId> {
        let mut idle: Vec<(u64, UnitId)> = self
            .protos
            .iter()
            .enumerate()
            .filter(|(p, _)| !active.contains(p) && *p != compiling)
            .filter_map(|(_, s)| s.compiled.as_ref().map(|c| (s.last_use, c.unit)))
            .collect();
        idle.sort_unstable();
        let session = self.backend.jit().session();
        let mut drop = HashSet::new();
        for &(_, unit) in idle.iter().take(idle.len().div_ceil(2)) {
            // The unit and everything calling it directly, unless one of those has a frame.
            let mut closure = vec![unit];
            let mut seen: HashSet<UnitId> = HashSet::from([unit]);
            let mut ok = true;
            while let Some(u) = closure.pop() {
                if self.unit_proto.get(&u).is_some_and(|p| active.contains(p)) {
                    ok = false;
                    break;
                }
                for d in session.dependents(u).unwrap_or_default() {
                    if self.unit_proto.contains_key(&d) && seen.insert(d) {
                        closure.push(d);
                    }
                }
            }
            if ok {
                drop.extend(seen);
            }
        }
        drop
    }

    /// Points the call sites retargeted into units about to be dropped back at the
    /// interpreter bridge; they wait for their callee again.
    fn unlink_sites_into(&mut self, drop: &HashSet<UnitId>) -> Result<(), String> {
        let bridge = self.backend.bridge();
        let dropped_protos: Vec<u32> = drop
            .iter()
            .filter_map(|u| self.unit_proto.get(u))
            .map(|&p| p as u32)
            .collect();
        for proto in dropped_protos {
            for (unit, index) in self.patched.remove(&proto).unwrap_or_default() {
                if drop.contains(&unit) {
                    continue;
                }
                if self.backend.retarget(unit, index, bridge)? {
                    self.waiting.entry(proto).or_default().push((unit, index));
                }
            }
        }
        Ok(())
    }

    /// After the compaction: dropped functions back to the interpreter, moved ones' addresses
    /// from the move map, the bookkeeping of sites and caches cleaned of dropped units.
    fn follow(&mut self, vm: &Vm, report: &kiln_jit::CompactionReport) {
        let dropped: HashSet<UnitId> = report.dropped.iter().copied().collect();
        let bridge = self.backend.bridge();
        for (proto, state) in self.protos.iter_mut().enumerate() {
            let Some(compiled) = &mut state.compiled else {
                continue;
            };
            if dropped.contains(&compiled.unit) {
                state.compiled = None;
                state.calls = 0;
                state.loops = 0;
                vm.region.set_entry(proto, bridge);
                continue;
            }
            let at = |a: u64| {
                report
                    .translate(kiln_target::ExecutorAddr(a))
                    .map_or(a, |n| n.0)
            };
            compiled.entry = at(compiled.entry);
            for osr in &mut compiled.osr {
                osr.1 = at(osr.1);
            }
            vm.region.set_entry(proto, compiled.entry);
        }
        for u in &dropped {
            self.unit_proto.remove(u);
        }
        for sites in self.waiting.values_mut() {
            sites.retain(|(u, _)| !dropped.contains(u));
        }
        for sites in self.patched.values_mut() {
            sites.retain(|(u, _)| !dropped.contains(u));
        }
        self.code_refs.borrow_mut().forget(&dropped);
        self.code_ics
            .borrow_mut()
            .after_compaction(&dropped, report);
    }
}

/// The prototypes with a frame on the Lox frame stack.
fn active_protos(vm: &Vm) -> HashSet<usize> {
    (0..vm.region.frame_count())
        .map(|f| vm.region.frame_closure(f))
        .filter(|c| c.is_obj())
        .map(|c| vm.heap.mem.load(c.as_obj(), closure::PROTO) as usize)
        .collect()
}
