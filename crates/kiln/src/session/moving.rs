//! Code that changes after it is linked: a unit moved to new addresses (compaction), a unit's
//! definitions replaced by a new unit's (redefinition). Both re-apply edges from relink records:
//! the moved unit's own, and those of other units that target it.
//!
//! These run under the session's write lock (nothing links meanwhile) and are for a JIT layer
//! that knows no thread executes the old code: the VM stops its threads, or keeps frames out of
//! code it moves.

use super::relocate::moved_actions;
use super::state::{State, Unit};
use super::{write, Inputs, Session, Source, UnitId, UnitOptions};
use crate::error::{Error, Result};
use crate::graph::InMemoryGraph;
use crate::link::relink::{RelinkRecord, RelinkTarget};
use kiln_target::{ExecutorAddr, SegmentMove, SlabId, SlabWrite};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a move changes, per segment: (old address, new address, size).
struct Moves(Vec<(u64, u64, u64)>);

impl Moves {
    fn translate(&self, addr: u64) -> u64 {
        self.0
            .iter()
            .find(|(old, _, n)| *old <= addr && addr < old + n.max(&1))
            .map_or(addr, |(old, new, _)| new + (addr - old))
    }
}

impl Session {
    /// Move `unit` (linked with [`UnitOptions::relink`], in slab memory) so that segment `i`
    /// starts at `new_addrs[i]`: the executor copies its bytes and moves its registrations
    /// (unwind info, gdb, perf map, jitdump `JIT_CODE_MOVE`, valgrind); its own edges and the
    /// edges of other relink units that target it are applied again; its symbols and address
    /// ranges follow. The destinations must be free ranges of the same regions (the caller's
    /// code memory decides them, and rebuilds its free lists after a compaction).
    ///
    /// No thread may execute the unit's old range meanwhile (return addresses into it are the
    /// caller's to translate). Units without relink records that reference this one keep
    /// pointing at the old range: move only units whose users keep relink records too.
    pub fn move_unit(&self, unit: UnitId, new_addrs: &[ExecutorAddr]) -> Result<()> {
        self.move_units(&[(unit, new_addrs.to_vec())])
    }

    /// Move many units at once, as [`Session::move_unit`] moves one (a compaction): segment `i`
    /// of each unit goes to its `i`-th new address.
    ///
    /// The segments move one by one in order of destination, so a destination may lie where
    /// another moving segment was, provided that segment moves first — as in a compaction,
    /// where everything slides towards lower addresses; an order in which some destination is
    /// still occupied when its turn comes is refused before anything moves. Then the edges of
    /// the moved units, and the edges of other units into them, are applied again in one pass:
    /// the memory they lie in read once per slab region, every changed byte written with one
    /// `write_live` per slab (one serialization of the cores); then the moved units'
    /// registrations come back.
    ///
    /// Refused before anything moves: a unit that cannot move or is named twice, a destination
    /// outside free space or over a unit that stays, an edge into a moving unit from a unit
    /// whose bytes kiln cannot rewrite (one not in slab memory). If the executor refuses a
    /// segment midway (another thread writes there), the segments moved before it stay moved,
    /// with their edges applied and their registrations restored, and the error is returned.
    pub fn move_units(&self, moves: &[(UnitId, Vec<ExecutorAddr>)]) -> Result<()> {
        let mut st = write(&self.state);
        let plan = plan_moves(&st, moves)?;
        // 1. The bytes, segment by segment in destination order, the cores serialized once.
        //    The executor undoes a unit's registrations when its first segment moves; they come
        //    back in step 4.
        let segment_moves = plan
            .iter()
            .map(|m| {
                let alloc = st.unit(UnitId(m.unit))?.alloc;
                let to = SegmentMove {
                    from: ExecutorAddr(m.from),
                    to: ExecutorAddr(m.to),
                    len: m.len,
                };
                Ok((alloc, to))
            })
            .collect::<Result<Vec<_>>>()?;
        let (done, executed) = self.executor.move_allocations(&segment_moves);
        let first_error = executed.err().map(Error::Target);
        // 2. The tables: the units whose segments moved, at their new places.
        let moved = moved_units(&st, &plan[..done])?;
        relocate_tables(&mut st, &moved);
        // 3. Edges: the moved units' own, and those of other units into them.
        let edges = self.reapply_moved(&st, &moved);
        // 4. Registrations at the new places (also when an edge failed: that error wins).
        let registered = self.register_moved(&st, &moved);
        drop(st);
        match first_error {
            Some(e) => Err(e),
            None => edges.and(registered),
        }
    }

    /// What a compaction needs to know of each of `units`, under one lock: where its segments
    /// are and what alignment they need, whether [`Session::move_units`] can move it, and
    /// whether a unit that binds to it references it in a way a move cannot rewrite (a unit
    /// without relink records, or not in slab memory). `None` for a unit that does not live.
    pub fn relocation_info(&self, units: &[UnitId]) -> Vec<Option<RelocationInfo>> {
        let st = super::read(&self.state);
        let fixed = st.not_rewritable();
        units
            .iter()
            .map(|&unit| {
                let u = st.units.get(&unit.0)?;
                Some(RelocationInfo {
                    segments: u
                        .segments()
                        .iter()
                        .map(|&(a, n)| (ExecutorAddr(a), n))
                        .collect(),
                    aligns: u.relink().map(|r| r.aligns.clone()).unwrap_or_default(),
                    movable: u.in_slabs()
                        && u.link_actions().is_some()
                        && u.relink().is_some_and(|r| r.movable),
                    linking: u.pins.load(std::sync::atomic::Ordering::Relaxed) > 0,
                    fixed_user: u
                        .dependents()
                        .iter()
                        .find(|d| fixed.contains(**d))
                        .map(|&d| UnitId(d)),
                })
            })
            .collect()
    }

    /// The bytes the session keeps so that `unit` can move and its edges be applied again:
    /// its relink record, its finalize actions as linked (registered again at the new place),
    /// and its share of the lists of incoming edges (each edge of another unit into it).
    /// Counted as held (vectors' capacities, strings and byte buffers included).
    pub fn relink_bytes(&self, unit: UnitId) -> Result<RelinkBytes> {
        use std::mem::size_of;
        let st = super::read(&self.state);
        let u = st.unit(unit)?;
        let mut b = RelinkBytes::default();
        if let Some(rec) = u.relink() {
            b.edges = (rec.edges.capacity() * size_of::<crate::link::relink::RelinkEdge>()) as u64;
            b.record = (size_of::<RelinkRecord>()
                + rec.segments.capacity() * size_of::<(u8, u64, u64)>()
                + rec.aligns.capacity() * size_of::<u64>()) as u64
                + b.edges;
        }
        if let Some(actions) = u.link_actions() {
            b.actions = (actions.capacity() * size_of::<kiln_target::ActionPair>()) as u64
                + actions
                    .iter()
                    .flat_map(|p| [&p.finalize, &p.dealloc])
                    .flatten()
                    .map(action_heap_bytes)
                    .sum::<u64>();
        }
        b.incoming = (u.incoming().capacity() * size_of::<(u64, u32)>()) as u64;
        Ok(b)
    }

    /// Apply again the edges that moving `moved` changed: every edge of the moved units, and
    /// the edges of other units that target them. The memory they lie in is read once per slab
    /// region (one span covering it), changed here, and the changed bytes written back with one
    /// `write_live` per slab.
    fn reapply_moved(&self, st: &State, moved: &[MovedUnit]) -> Result<()> {
        if moved.is_empty() {
            return Ok(());
        }
        let work = edges_to_apply(st, moved)?;
        let mut units: Vec<u64> = work.keys().copied().collect();
        units.sort_unstable();
        let mut spans = Spans::default();
        for &u in &units {
            let unit = st.unit(UnitId(u))?;
            let ranges = unit.slab_ranges();
            for seg in segments_with_edges(unit, &work[&u]) {
                let (addr, len) = unit.segments()[seg];
                let r = ranges
                    .iter()
                    .find(|r| r.addr.0 == addr)
                    .ok_or_else(|| not_rewritable(u, addr))?;
                spans.add(r.slab, r.region, addr, len);
            }
        }
        spans.read(&*self.executor)?;
        let mut result = Ok(());
        for &u in &units {
            let unit = st.unit(UnitId(u))?;
            let Some(rec) = unit.relink() else { continue };
            let addrs: Vec<u64> = unit.segments().iter().map(|s| s.0).collect();
            let which = &work[&u];
            let mut slices = spans.slices(&unit.segments());
            let applied = rec.reapply(&addrs, &mut slices, &|k| which.selects(k), &|t| {
                target_address(st, u, &addrs, t)
            });
            if let Err((k, e)) = applied {
                result = result.and(Err(Error::Usage(format!(
                    "{}: edge {k} of its relink record: {e}",
                    UnitId(u)
                ))));
            }
        }
        result.and(spans.write_changes(&*self.executor))
    }

    /// Register the moved units again at their new places (unwind info, gdb, perf map,
    /// jitdump `JIT_CODE_MOVE`, valgrind), from their actions as linked.
    fn register_moved(&self, st: &State, moved: &[MovedUnit]) -> Result<()> {
        let mut result = Ok(());
        for m in moved {
            let u = st.unit(UnitId(m.unit))?;
            let (Some(rec), Some(actions)) = (u.relink(), u.link_actions()) else {
                continue;
            };
            if actions.is_empty() {
                continue;
            }
            // As linked → where it is now, and → where it was before this move.
            let from_linked = |segs: &[(u64, u64)]| {
                Moves(
                    rec.segments
                        .iter()
                        .zip(segs)
                        .map(|(&(_, a, n), &(now, _))| (a, now, n))
                        .collect(),
                )
            };
            let (to_now, to_before) = (from_linked(&u.segments()), from_linked(&m.before));
            let key = u.segments().iter().map(|s| s.0).min().unwrap_or(0);
            let again = moved_actions(
                actions,
                &|a| to_now.translate(a),
                &|a| to_before.translate(a),
                key,
            );
            if again.is_empty() {
                continue;
            }
            if let Err(e) = self.executor.move_allocation(u.alloc, &[], again) {
                result = result.and(Err(Error::Target(e)));
            }
        }
        result
    }

    /// Write again the edges of other units that target `unit`; `redirect` may give an edge a
    /// new target address (redefinition).
    fn reapply_incoming(
        &self,
        st: &State,
        unit: u64,
        redirect: &dyn Fn(u64, &RelinkTarget) -> Option<u64>,
    ) -> Result<()> {
        let incoming = st.unit(UnitId(unit))?.incoming().clone();
        for (from, idx) in incoming {
            let v = st.unit(UnitId(from))?;
            let Some(rec) = v.relink() else { continue };
            let Some(e) = rec.edges.get(idx as usize) else {
                continue;
            };
            let seg = usize::from(e.segment);
            let Some(&(base, _)) = v.segments().get(seg) else {
                continue;
            };
            // The field, and a few bytes before it (a relaxed instruction may have moved its
            // field one byte earlier).
            let field = base + u64::from(e.offset);
            let lead = u64::from(e.offset).min(2);
            let width = 8 + lead;
            let at = field - lead;
            let old = self.executor.read_memory(
                ExecutorAddr(at),
                width.min(v.segments()[seg].1 - (at - base)),
            )?;
            let mut new = old.clone();
            let mut one: Vec<&mut [u8]> = Vec::new();
            // A record over just this window: the edge at offset `lead` of segment 0.
            let mut window = RelinkRecord::window(rec, idx as usize, lead as u32);
            let addrs = [at];
            one.push(new.as_mut_slice());
            let vaddrs: Vec<u64> = v.segments().iter().map(|s| s.0).collect();
            window.edges[0].target = e.target;
            window
                .reapply(&addrs, &mut one, &|_| true, &|t| {
                    redirect(from, t).or_else(|| target_address(st, from, &vaddrs, t))
                })
                .map_err(|(_, err)| {
                    Error::Usage(format!(
                        "{} (edge {idx} into {}): {err}",
                        UnitId(from),
                        UnitId(unit)
                    ))
                })?;
            self.write_changes(v, at, &old, &new)?;
        }
        Ok(())
    }

    /// Write the bytes of `new` that differ from `old`, at `addr` in `u`'s slab.
    fn write_changes(&self, u: &Unit, addr: u64, old: &[u8], new: &[u8]) -> Result<()> {
        // The unit's own ranges say which slab (not its code memory, whose lock must not be
        // taken under the session's: a compaction holds it and waits for the session's).
        let Some(slab) = u
            .slab_ranges()
            .iter()
            .find(|r| r.addr.0 <= addr && addr - r.addr.0 < r.size.max(1))
            .map(|r| r.slab)
        else {
            return Ok(());
        };
        let mut writes = Vec::new();
        for (start, end) in changed_words(addr, old, new) {
            writes.push(SlabWrite::Bytes(
                ExecutorAddr(addr + start as u64),
                &new[start..end],
            ));
        }
        if !writes.is_empty() {
            self.executor.write_live(slab, &writes)?;
        }
        Ok(())
    }

    /// Replace the definitions of `old` by those of `graph`, linked into a new unit with
    /// `options`: the new unit's symbols take over the names `old` defined; every edge of
    /// another relink unit that targeted one of those symbols in `old` (calls, GOT entries,
    /// stubs, PICs) is applied again to reach the new definition, and binds to the new unit.
    /// `old` stays in memory with what no longer names it (frames may still run it): remove it
    /// when the VM says nothing executes it any more.
    pub fn redefine(
        &self,
        old: UnitId,
        graph: &InMemoryGraph,
        options: &UnitOptions,
    ) -> Result<UnitId> {
        self.redefine_source(old, &Source::Graphs(std::slice::from_ref(graph)), options)
    }

    /// [`Session::redefine`] with the new definitions given as inputs (objects, graphs, roots)
    /// instead of one graph: for code generators that write relocatable objects (kiln-cranelift
    /// writes ELF objects, for their `.eh_frame` and thread-local sections).
    pub fn redefine_inputs(
        &self,
        old: UnitId,
        inputs: &Inputs,
        options: &UnitOptions,
    ) -> Result<UnitId> {
        self.redefine_source(old, &Source::Inputs(inputs), options)
    }

    fn redefine_source(
        &self,
        old: UnitId,
        source: &Source,
        options: &UnitOptions,
    ) -> Result<UnitId> {
        // The old unit's names, so that the new unit may define them again.
        let old_defs: Vec<(String, u64)> = {
            let st = super::read(&self.state);
            let u = st.unit(old)?;
            let scope = st.scope(u.scope())?;
            scope
                .symbols
                .of_unit(u.names(), old.0)
                .into_iter()
                .map(|(name, def)| (name.to_string(), def.addr))
                .collect()
        };
        let new = self.link_replacing(source, options, old.0)?;
        let mut st = write(&self.state);
        let new_defs: Vec<(String, u64)> = {
            let u = st.unit(new)?;
            let scope = st.scope(u.scope())?;
            scope
                .symbols
                .of_unit(u.names(), new.0)
                .into_iter()
                .map(|(name, def)| (name.to_string(), def.addr))
                .collect()
        };
        // Old address → new address, for each redefined symbol.
        let redirect: Vec<(u64, u64)> = old_defs
            .iter()
            .filter_map(|(n, a)| Some((*a, new_defs.iter().find(|(m, _)| m == n)?.1)))
            .collect();
        let old_segments = st.unit(old)?.segments().to_vec();
        let address_of = |t: &RelinkTarget| match *t {
            RelinkTarget::Unit {
                unit,
                segment,
                offset,
            } if unit == old => Some(old_segments.get(usize::from(segment))?.0 + offset),
            _ => None,
        };
        let result = self.reapply_incoming(&st, old.0, &|_, t| {
            let a = address_of(t)?;
            redirect
                .iter()
                .find(|(from, _)| *from == a)
                .map(|(_, to)| *to)
        });
        retarget_tables(&mut st, old.0, new.0, &|t| {
            let a = address_of(t)?;
            redirect
                .iter()
                .find(|(from, _)| *from == a)
                .map(|(_, to)| *to)
        });
        result?;
        Ok(new)
    }
}

/// The runs of `new` (bytes at `addr`) that differ from `old`, each widened to the naturally
/// aligned 8-byte (else 4-byte) words that hold it when those lie inside `new`: the executor
/// stores aligned words atomically, so a changed field that fits one word (a rel32, a GOT slot)
/// is written in one store, and a thread running through it sees its old or its new value —
/// never half of each. Widened runs rewrite unchanged neighbours with the bytes just read.
fn changed_words(addr: u64, old: &[u8], new: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < new.len() {
        if old.get(i) == Some(&new[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < new.len() && old.get(i) != Some(&new[i]) {
            i += 1;
        }
        let (s, e) = [8u64, 4]
            .into_iter()
            .find_map(|w| {
                let s = (addr + start as u64) / w * w;
                let e = (addr + i as u64).div_ceil(w) * w;
                (s >= addr && e <= addr + new.len() as u64)
                    .then(|| ((s - addr) as usize, (e - addr) as usize))
            })
            .unwrap_or((start, i));
        match runs.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => runs.push((s, e)),
        }
    }
    runs
}

impl RelinkRecord {
    /// A record of one edge of `rec` (number `idx`), as if its field were at `lead` bytes into
    /// a one-segment unit: for applying one edge to a window of bytes read around it.
    fn window(rec: &RelinkRecord, idx: usize, lead: u32) -> RelinkRecord {
        let mut w = rec.clone();
        let mut e = w.edges[idx];
        e.segment = 0;
        e.offset = lead;
        w.edges = vec![e];
        w.got = None;
        w
    }
}

/// Where an edge's target is now.
fn target_address(st: &State, unit: u64, own: &[u64], t: &RelinkTarget) -> Option<u64> {
    match *t {
        RelinkTarget::Internal { segment, offset } => Some(own.get(usize::from(segment))? + offset),
        RelinkTarget::Unit {
            unit: u,
            segment,
            offset,
        } => {
            let owner = if u.0 == unit {
                st.unit(u).ok()?
            } else {
                st.units.get(&u.0)?
            };
            Some(owner.segments().get(usize::from(segment))?.0 + offset)
        }
        RelinkTarget::Absolute(a) => Some(a),
    }
}

/// One segment of a batch move.
#[derive(Clone, Copy, Debug)]
struct SegmentPlan {
    unit: u64,
    seg: usize,
    from: u64,
    to: u64,
    len: u64,
}

/// The segments of `moves` that change place, in the order they can move (by destination),
/// checked: every unit can move, and every destination is free when its turn comes.
fn plan_moves(st: &State, moves: &[(UnitId, Vec<ExecutorAddr>)]) -> Result<Vec<SegmentPlan>> {
    let mut seen = FxHashSet::default();
    let mut plan = Vec::new();
    let fixed = st.not_rewritable();
    for (unit, to) in moves {
        if !seen.insert(unit.0) {
            return Err(Error::Usage(format!("{unit} is moved twice")));
        }
        let u = st.unit(*unit)?;
        let movable =
            u.in_slabs() && u.link_actions().is_some() && u.relink().is_some_and(|r| r.movable);
        if !movable {
            return Err(Error::Usage(format!(
                "{unit} cannot move: it was not linked into slab memory with relink records, \
                 or its TLS ties it to its address"
            )));
        }
        if to.len() != u.segments().len() {
            return Err(Error::Usage(format!(
                "{unit} has {} segments, {} new addresses given",
                u.segments().len(),
                to.len()
            )));
        }
        if u.pins.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            // That link computed its edges with the unit's current addresses.
            return Err(Error::UnitInUse(*unit));
        }
        let incoming = u.incoming().iter().map(|(from, _)| from);
        if let Some(&user) = u
            .dependents()
            .iter()
            .chain(incoming)
            .find(|d| fixed.contains(**d))
        {
            return Err(Error::Usage(format!(
                "{unit} cannot move: {} references it and keeps no relink records (or is not \
                 in slab memory): its references could not be written again",
                UnitId(user)
            )));
        }
        for (seg, (&(from, len), to)) in u.segments().iter().zip(to).enumerate() {
            if from != to.0 && len > 0 {
                plan.push(SegmentPlan {
                    unit: unit.0,
                    seg,
                    from,
                    to: to.0,
                    len,
                });
            }
        }
    }
    plan.sort_unstable_by_key(|m| m.to);
    // Sources, by start: (end, position in the plan).
    let sources: BTreeMap<u64, (u64, usize)> = plan
        .iter()
        .enumerate()
        .map(|(k, m)| (m.from, (m.from + m.len, k)))
        .collect();
    for (k, m) in plan.iter().enumerate() {
        let end = m.to.checked_add(m.len).ok_or_else(|| {
            Error::Usage(format!(
                "{}: destination {:#x} overflows",
                UnitId(m.unit),
                m.to
            ))
        })?;
        if plan.get(k + 1).is_some_and(|n| n.to < end) {
            return Err(Error::Usage(format!(
                "the destinations at {:#x} and {:#x} overlap",
                m.to,
                plan[k + 1].to
            )));
        }
        // Segments are disjoint: going down from the destination's end, the first one that
        // ends before the destination starts is the last that could overlap it.
        for (_, &(e, j)) in sources.range(..end).rev() {
            if e <= m.to {
                break;
            }
            if j > k {
                return Err(Error::Usage(format!(
                    "{}: its destination {:#x}..{end:#x} is still occupied by a segment that \
                     moves later (moves must all go the same way, as in a compaction)",
                    UnitId(m.unit),
                    m.to
                )));
            }
        }
        for (s, e, other) in st.segments_below(end) {
            if e <= m.to {
                break;
            }
            if !sources.contains_key(&s) {
                return Err(Error::Usage(format!(
                    "{}: its destination {:#x}..{end:#x} overlaps {}, which stays",
                    UnitId(m.unit),
                    m.to,
                    UnitId(other)
                )));
            }
        }
    }
    Ok(plan)
}

/// A unit some of whose segments moved: (address, size) of its segments before and after.
struct MovedUnit {
    unit: u64,
    before: Vec<(u64, u64)>,
    after: Vec<(u64, u64)>,
}

/// The units the moves `done` changed, in the order they first moved.
fn moved_units(st: &State, done: &[SegmentPlan]) -> Result<Vec<MovedUnit>> {
    let mut out: Vec<MovedUnit> = Vec::new();
    let mut index: FxHashMap<u64, usize> = FxHashMap::default();
    for m in done {
        let i = match index.get(&m.unit) {
            Some(&i) => i,
            None => {
                let segs = st.unit(UnitId(m.unit))?.segments().to_vec();
                out.push(MovedUnit {
                    unit: m.unit,
                    before: segs.clone(),
                    after: segs,
                });
                index.insert(m.unit, out.len() - 1);
                out.len() - 1
            }
        };
        out[i].after[m.seg].0 = m.to;
    }
    Ok(out)
}

/// The session's tables after units moved: their segments, the address index, their slab
/// ranges and the addresses of the symbols they define.
fn relocate_tables(st: &mut State, moved: &[MovedUnit]) {
    // Old places out of the index first: a unit may have moved to where another one was.
    for m in moved {
        for &(a, n) in &m.before {
            if n > 0 {
                st.unindex_segment(a);
            }
        }
    }
    for m in moved {
        let moves = Moves(
            m.before
                .iter()
                .zip(&m.after)
                .map(|(&(old, n), &(new, _))| (old, new, n))
                .collect(),
        );
        let Some(u) = st.units.get_mut(&m.unit) else {
            continue;
        };
        u.move_segments(&m.after, |a| moves.translate(a));
        let (scope, names) = (u.scope(), u.names().to_vec());
        for (i, &(a, n)) in m.after.iter().enumerate() {
            if n > 0 {
                st.index_segment(a, m.unit, i as u8);
            }
        }
        if let Some(sc) = st.scopes.get_mut(scope.0 as usize) {
            sc.symbols.move_unit(&names, m.unit, |a| moves.translate(a));
        }
    }
}

/// Which edges of a unit a move changes.
enum Which {
    /// All of them (the unit moved).
    All,
    /// These (sorted): edges of a unit that stayed into units that moved.
    Some(Vec<u32>),
}

impl Which {
    fn selects(&self, k: usize) -> bool {
        match self {
            Which::All => true,
            Which::Some(list) => u32::try_from(k).is_ok_and(|k| list.binary_search(&k).is_ok()),
        }
    }
}

/// The edges to apply again after `moved` moved, by unit.
fn edges_to_apply(st: &State, moved: &[MovedUnit]) -> Result<FxHashMap<u64, Which>> {
    let mut work: FxHashMap<u64, Which> = moved.iter().map(|m| (m.unit, Which::All)).collect();
    for m in moved {
        for &(from, idx) in st.unit(UnitId(m.unit))?.incoming() {
            if let Which::Some(list) = work.entry(from).or_insert(Which::Some(Vec::new())) {
                list.push(idx);
            }
        }
    }
    for w in work.values_mut() {
        if let Which::Some(list) = w {
            list.sort_unstable();
            list.dedup();
        }
    }
    Ok(work)
}

/// The segments of `unit` that hold edges `which` selects.
fn segments_with_edges(unit: &Unit, which: &Which) -> Vec<usize> {
    let Some(rec) = unit.relink() else {
        return Vec::new();
    };
    // A unit has a segment per protection class: a bit each.
    let mut mask = 0u64;
    match which {
        Which::All => rec.edges.iter().for_each(|e| mask |= 1 << (e.segment % 64)),
        Which::Some(list) => list
            .iter()
            .filter_map(|&k| rec.edges.get(k as usize))
            .for_each(|e| mask |= 1 << (e.segment % 64)),
    }
    (0..unit.segments().len().min(64))
        .filter(|&s| mask & (1 << s) != 0 && unit.segments()[s].1 > 0)
        .collect()
}

fn not_rewritable(unit: u64, addr: u64) -> Error {
    Error::Usage(format!(
        "{}: its segment at {addr:#x} is not in slab memory: its edges cannot be written again",
        UnitId(unit)
    ))
}

/// Memory of executor slabs read into the controller to apply edges, and written back where it
/// changed: the segments added, read in runs (segments of one slab region less than
/// [`READ_GAP`] apart are read with one call).
#[derive(Default)]
struct Spans {
    /// (slab, region, address, size) of each segment added.
    segments: Vec<(SlabId, usize, u64, u64)>,
    /// The runs read, by address (runs of different regions never overlap).
    runs: Vec<Run>,
}

struct Run {
    slab: SlabId,
    region: usize,
    start: u64,
    end: u64,
    /// The segments in the run: only their bytes are compared and written back.
    segments: Vec<(u64, u64)>,
    bytes: Vec<u8>,
    read: Vec<u8>,
}

/// Segments closer than this are read as one range.
const READ_GAP: u64 = 4096;

/// Changed bytes closer than this are written as one range (the bytes between are rewritten
/// with what they hold; always inside one segment).
const COALESCE: usize = 16;

impl Spans {
    fn add(&mut self, slab: SlabId, region: usize, addr: u64, len: u64) {
        self.segments.push((slab, region, addr, len));
    }

    /// Read the runs: each at once, or (if part of it is busy, e.g. a unit being linked
    /// there) segment by segment.
    fn read(&mut self, ex: &dyn kiln_target::Executor) -> Result<()> {
        self.segments.sort_unstable_by_key(|s| (s.0 .0, s.1, s.2));
        self.segments.dedup();
        for &(slab, region, addr, len) in &self.segments {
            match self.runs.last_mut() {
                Some(r) if r.slab == slab && r.region == region && addr <= r.end + READ_GAP => {
                    r.end = r.end.max(addr + len);
                    r.segments.push((addr, len));
                }
                _ => self.runs.push(Run {
                    slab,
                    region,
                    start: addr,
                    end: addr + len,
                    segments: vec![(addr, len)],
                    bytes: Vec::new(),
                    read: Vec::new(),
                }),
            }
        }
        for r in &mut self.runs {
            let len = r.end - r.start;
            r.bytes = match ex.read_memory(ExecutorAddr(r.start), len) {
                Ok(b) => b,
                Err(_) => {
                    let mut b = vec![0u8; len as usize];
                    for &(a, n) in &r.segments {
                        let at = (a - r.start) as usize;
                        let part = ex.read_memory(ExecutorAddr(a), n)?;
                        b[at..at + n as usize].copy_from_slice(&part);
                    }
                    b
                }
            };
            r.read = r.bytes.clone();
        }
        self.runs.sort_unstable_by_key(|r| r.start);
        Ok(())
    }

    /// One slice per segment of a unit (empty for a segment no run holds).
    fn slices(&mut self, segments: &[(u64, u64)]) -> Vec<&mut [u8]> {
        let mut out: Vec<&mut [u8]> = segments.iter().map(|_| Default::default()).collect();
        let mut wanted: Vec<(u64, u64, usize)> = segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.1 > 0)
            .map(|(i, &(a, n))| (a, n, i))
            .collect();
        wanted.sort_unstable();
        // Walk the runs and the wanted segments together, both by address.
        let mut w = wanted.into_iter().peekable();
        for r in &mut self.runs {
            let mut rest: &mut [u8] = &mut r.bytes;
            let mut at = r.start;
            while let Some(&(a, n, i)) = w.peek() {
                if a >= r.end {
                    break;
                }
                w.next();
                if a < at || a + n > r.end {
                    continue;
                }
                let (_, tail) = std::mem::take(&mut rest).split_at_mut((a - at) as usize);
                let (seg, tail) = tail.split_at_mut(n as usize);
                out[i] = seg;
                rest = tail;
                at = a + n;
            }
        }
        out
    }

    /// Write the changed bytes of the added segments: one `write_live` per slab.
    fn write_changes(&self, ex: &dyn kiln_target::Executor) -> Result<()> {
        let mut slabs: Vec<SlabId> = self.runs.iter().map(|r| r.slab).collect();
        slabs.sort_unstable_by_key(|s| s.0);
        slabs.dedup();
        let mut result = Ok(());
        for slab in slabs {
            let mut writes = Vec::new();
            for r in self.runs.iter().filter(|r| r.slab == slab) {
                for &(a, n) in &r.segments {
                    let at = (a - r.start) as usize;
                    let range = at..at + n as usize;
                    for (s, e) in changed_runs(a, &r.read[range.clone()], &r.bytes[range]) {
                        writes.push(SlabWrite::Bytes(
                            ExecutorAddr(a + s as u64),
                            &r.bytes[at + s..at + e],
                        ));
                    }
                }
            }
            if !writes.is_empty() {
                if let Err(e) = ex.write_live(slab, &writes) {
                    result = result.and(Err(Error::Target(e)));
                }
            }
        }
        result
    }
}

/// The ranges where `new` (bytes at `addr`) differs from `old`, as [`changed_words`] widens
/// them (a changed field that fits an aligned word is stored whole), merged when less than
/// [`COALESCE`] bytes apart (fewer, larger writes; the bytes between are rewritten unchanged).
fn changed_runs(addr: u64, old: &[u8], new: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (start, end) in changed_words(addr, old, new) {
        match runs.last_mut() {
            Some(last) if start.saturating_sub(last.1) < COALESCE => last.1 = last.1.max(end),
            _ => runs.push((start, end)),
        }
    }
    runs
}

/// After a redefinition: the edges of other units that now reach `new` name it as their
/// target, are its incoming edges, and make their units depend on it.
fn retarget_tables(
    st: &mut State,
    old: u64,
    new: u64,
    redirect: &dyn Fn(&RelinkTarget) -> Option<u64>,
) {
    let incoming = st
        .units
        .get(&old)
        .map(|u| u.incoming().clone())
        .unwrap_or_default();
    let mut moved = Vec::new();
    for (from, idx) in incoming {
        let Some(target) = st
            .units
            .get(&from)
            .and_then(|v| v.relink()?.edges.get(idx as usize).copied())
            .and_then(|e| redirect(&e.target))
        else {
            continue;
        };
        let Some((unit, segment, offset)) = st.unit_at(target) else {
            continue;
        };
        if let Some(v) = st.units.get_mut(&from) {
            if let Some(rec) = v.relink_mut() {
                Arc::make_mut(rec).edges[idx as usize].target = RelinkTarget::Unit {
                    unit: UnitId(unit),
                    segment,
                    offset,
                };
            }
            v.add_dep(new);
        }
        moved.push((from, idx));
    }
    if let Some(o) = st.units.get_mut(&old) {
        o.retain_incoming(|x| !moved.contains(x));
    }
    let mut froms: Vec<u64> = moved.iter().map(|(f, _)| *f).collect();
    froms.dedup();
    if let Some(n) = st.units.get_mut(&new) {
        for &edge in &moved {
            n.add_incoming(edge);
        }
        for f in &froms {
            n.add_dependent(*f);
        }
    }
    // A unit that no longer targets the old one through any edge stops depending on it.
    for f in froms {
        let still = st
            .units
            .get(&old)
            .is_some_and(|o| o.incoming().iter().any(|(x, _)| *x == f));
        if !still {
            if let Some(v) = st.units.get_mut(&f) {
                v.retain_deps(|d| d != old);
            }
            if let Some(o) = st.units.get_mut(&old) {
                o.retain_dependents(|d| d != f);
            }
        }
    }
}

/// What [`Session::relocation_info`] says of a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelocationInfo {
    /// (address, size) of each segment.
    pub segments: Vec<(ExecutorAddr, u64)>,
    /// The alignment each segment's start needs.
    pub aligns: Vec<u64>,
    /// Whether [`Session::move_units`] can move it (relink records, slab memory, no TLS).
    pub movable: bool,
    /// Whether a link in progress binds to it (its addresses are in that unit's edges already,
    /// which nothing would apply again): it must not move now.
    pub linking: bool,
    /// A unit that binds to it and whose references a move cannot rewrite, if any: while it
    /// lives, this unit must stay where it is.
    pub fixed_user: Option<UnitId>,
}

/// What [`Session::relink_bytes`] counts, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelinkBytes {
    /// The relink record, its edges included.
    pub record: u64,
    /// The record's edges alone.
    pub edges: u64,
    /// The finalize actions kept to register the unit again after a move (debug objects, perf
    /// map lines, jitdump records, unwind info ranges).
    pub actions: u64,
    /// The unit's list of incoming edges (other units' edges that target it).
    pub incoming: u64,
}

impl RelinkBytes {
    pub fn total(&self) -> u64 {
        self.record + self.actions + self.incoming
    }
}

/// The heap bytes an action holds.
fn action_heap_bytes(a: &kiln_target::Action) -> u64 {
    use kiln_target::Action;
    match a {
        Action::RegisterGdbObjects { objects, .. } => objects
            .iter()
            .map(|o| (o.0.capacity() + std::mem::size_of::<kiln_target::Bytes>()) as u64)
            .sum(),
        Action::WritePerfMap { entries } => entries
            .iter()
            .map(|e| (e.name.capacity() + std::mem::size_of::<kiln_target::PerfMapEntry>()) as u64)
            .sum(),
        Action::WriteJitdump { dir, records } => (dir.capacity() + records.0.capacity()) as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::changed_words;

    #[test]
    fn changed_fields_are_written_as_whole_aligned_words() {
        // A rel32 at 0x1004 whose two low bytes changed, in a window read from 0x1002: the
        // whole 4-byte field is written (the 8-byte word would reach before the window).
        let old = [0x90, 0xe8, 0x10, 0x20, 0, 0, 0xc3, 0x90, 0x90, 0x90];
        let mut new = old;
        new[2] = 0x30;
        new[3] = 0x40;
        assert_eq!(changed_words(0x1002, &old, &new), [(2, 6)]);
        // In an 8-aligned window, a changed byte takes its whole word.
        assert_eq!(changed_words(0x1000, &old[..8], &new[..8]), [(0, 8)]);
        // Nothing changed: nothing written.
        assert!(changed_words(0x1000, &old, &old).is_empty());
        // A window too small for any aligned word: the changed bytes alone.
        assert_eq!(changed_words(0x1001, &old[..2], &[0x90, 0xe9]), [(1, 2)]);
    }
}
