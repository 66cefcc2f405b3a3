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
use kiln_target::{ExecutorAddr, SegmentMove, SlabWrite};
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
        let mut st = write(&self.state);
        let u = st.unit(unit)?;
        let (rec, actions) = match (&u.relink, &u.link_actions) {
            (Some(r), Some(a)) if r.movable && u.memory.is_some() => (r.clone(), a.clone()),
            _ => {
                return Err(Error::Usage(format!(
                    "{unit} cannot move: it was not linked into slab memory with relink records, \
                     or its TLS ties it to its address"
                )))
            }
        };
        if new_addrs.len() != u.segments.len() {
            return Err(Error::Usage(format!(
                "{unit} has {} segments, {} new addresses given",
                u.segments.len(),
                new_addrs.len()
            )));
        }
        let moves = Moves(
            u.segments
                .iter()
                .zip(new_addrs)
                .map(|(&(old, n), new)| (old, new.0, n))
                .collect(),
        );
        let alloc = u.alloc;
        let ex = self.executor.clone();
        let segment_moves: Vec<SegmentMove> = moves
            .0
            .iter()
            .filter(|(old, new, n)| old != new && *n > 0)
            .map(|&(from, to, len)| SegmentMove {
                from: ExecutorAddr(from),
                to: ExecutorAddr(to),
                len,
            })
            .collect();
        // Registrations go first (the executor undoes them), then the bytes move; edges are
        // applied again while nothing is registered over them; then the registrations come back
        // at the new place.
        ex.move_allocation(alloc, &segment_moves, Vec::new())?;
        let old_segments: Vec<(u64, u64)> = st.unit(unit)?.segments.clone();
        relocate_unit_tables(&mut st, unit.0, &moves);
        let result = self
            .reapply_own(&st, unit.0, &rec)
            .and_then(|()| self.reapply_incoming(&st, unit.0, &|_, _| None));
        // As linked → where it is now: registrations are rebuilt from the link-time actions.
        let linked: Vec<(u64, u64)> = rec.segments.iter().map(|&(_, a, n)| (a, n)).collect();
        let current = st.unit(unit)?.segments.clone();
        let to_now = Moves(
            linked
                .iter()
                .zip(&current)
                .map(|(&(a, n), &(now, _))| (a, now, n))
                .collect(),
        );
        let to_before = Moves(
            linked
                .iter()
                .zip(&old_segments)
                .map(|(&(a, n), &(was, _))| (a, was, n))
                .collect(),
        );
        let old_code: Vec<(u64, u64)> = old_segments
            .iter()
            .zip(&rec.segments)
            .filter(|(_, (slot, _, _))| *slot == 0)
            .map(|(s, _)| *s)
            .collect();
        let key = current.iter().map(|s| s.0).min().unwrap_or(0);
        let again = moved_actions(
            &actions,
            &|a| to_now.translate(a),
            &|a| to_before.translate(a),
            &old_code,
            key,
        );
        drop(st);
        // Registrations come back even if an edge could not be applied (that error wins).
        let registered = ex.move_allocation(alloc, &[], again);
        result?;
        Ok(registered?)
    }

    /// Write the unit's own edges again at its current addresses.
    fn reapply_own(&self, st: &State, unit: u64, rec: &RelinkRecord) -> Result<()> {
        let u = st.unit(UnitId(unit))?;
        let addrs: Vec<u64> = u.segments.iter().map(|s| s.0).collect();
        let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(u.segments.len());
        for (i, &(a, n)) in u.segments.iter().enumerate() {
            let has_edges = rec.edges.iter().any(|e| usize::from(e.segment) == i);
            bytes.push(if has_edges && n > 0 {
                self.executor.read_memory(ExecutorAddr(a), n)?
            } else {
                Vec::new()
            });
        }
        let before = bytes.clone();
        let mut views: Vec<&mut [u8]> = bytes.iter_mut().map(|b| b.as_mut_slice()).collect();
        rec.reapply(&addrs, &mut views, &|_| true, &|t| {
            target_address(st, unit, &addrs, t)
        })
        .map_err(|(i, e)| {
            Error::Usage(format!(
                "{}: edge {i} of {}: {e}",
                UnitId(unit),
                "its relink record"
            ))
        })?;
        for (i, (new, old)) in bytes.iter().zip(&before).enumerate() {
            self.write_changes(u, addrs[i], old, new)?;
        }
        Ok(())
    }

    /// Write again the edges of other units that target `unit`; `redirect` may give an edge a
    /// new target address (redefinition).
    fn reapply_incoming(
        &self,
        st: &State,
        unit: u64,
        redirect: &dyn Fn(u64, &RelinkTarget) -> Option<u64>,
    ) -> Result<()> {
        let incoming = st.unit(UnitId(unit))?.incoming.clone();
        for (from, idx) in incoming {
            let v = st.unit(UnitId(from))?;
            let Some(rec) = &v.relink else { continue };
            let Some(e) = rec.edges.get(idx as usize) else {
                continue;
            };
            let seg = usize::from(e.segment);
            let Some(&(base, _)) = v.segments.get(seg) else {
                continue;
            };
            // The field, and a few bytes before it (a relaxed instruction may have moved its
            // field one byte earlier).
            let field = base + u64::from(e.offset);
            let lead = u64::from(e.offset).min(2);
            let width = 8 + lead;
            let at = field - lead;
            let old = self
                .executor
                .read_memory(ExecutorAddr(at), width.min(v.segments[seg].1 - (at - base)))?;
            let mut new = old.clone();
            let mut one: Vec<&mut [u8]> = Vec::new();
            // A record over just this window: the edge at offset `lead` of segment 0.
            let mut window = RelinkRecord::window(rec, idx as usize, lead as u32);
            let addrs = [at];
            one.push(new.as_mut_slice());
            let vaddrs: Vec<u64> = v.segments.iter().map(|s| s.0).collect();
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
        let Some(memory) = &u.memory else {
            return Ok(());
        };
        let Some(slab) = memory.slab_of(ExecutorAddr(addr)) else {
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
        self.redefine_source(old, &Source::Graph(graph), options)
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
        let old_defs: Vec<(Arc<str>, u64)> = {
            let st = super::read(&self.state);
            let u = st.unit(old)?;
            let scope = st.scope(u.scope)?;
            u.names
                .iter()
                .filter_map(|n| Some((n.clone(), scope.symbols.get(n)?.addr)))
                .collect()
        };
        let new = self.link_replacing(source, options, old.0)?;
        let mut st = write(&self.state);
        let new_defs: Vec<(Arc<str>, u64)> = {
            let u = st.unit(new)?;
            let scope = st.scope(u.scope)?;
            u.names
                .iter()
                .filter_map(|n| Some((n.clone(), scope.symbols.get(n)?.addr)))
                .collect()
        };
        // Old address → new address, for each redefined symbol.
        let redirect: Vec<(u64, u64)> = old_defs
            .iter()
            .filter_map(|(n, a)| Some((*a, new_defs.iter().find(|(m, _)| m == n)?.1)))
            .collect();
        let old_segments = st.unit(old)?.segments.clone();
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
            Some(owner.segments.get(usize::from(segment))?.0 + offset)
        }
        RelinkTarget::Absolute(a) => Some(a),
    }
}

/// The session's tables after `unit` moved: its segments, address index, slab ranges and the
/// addresses of the symbols it defines.
fn relocate_unit_tables(st: &mut State, unit: u64, moves: &Moves) {
    let Some(u) = st.units.get_mut(&unit) else {
        return;
    };
    let scope = u.scope;
    let old: Vec<(u64, u64)> = u.segments.clone();
    for s in u.segments.iter_mut() {
        s.0 = moves.translate(s.0);
    }
    for r in u.slab_ranges.iter_mut() {
        r.addr = ExecutorAddr(moves.translate(r.addr.0));
    }
    let names = u.names.clone();
    let segments = u.segments.clone();
    for (i, ((a, n), (b, _))) in old.iter().zip(&segments).enumerate() {
        if *n > 0 {
            st.by_addr.remove(a);
            st.by_addr.insert(*b, (b + n, unit, i as u8));
        }
    }
    if let Some(sc) = st.scopes.get_mut(scope.0 as usize) {
        for n in &names {
            if let Some(d) = sc.symbols.get_mut(n) {
                d.addr = moves.translate(d.addr);
            }
        }
    }
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
        .map(|u| u.incoming.clone())
        .unwrap_or_default();
    let mut moved = Vec::new();
    for (from, idx) in incoming {
        let Some(target) = st
            .units
            .get(&from)
            .and_then(|v| v.relink.as_ref()?.edges.get(idx as usize).copied())
            .and_then(|e| redirect(&e.target))
        else {
            continue;
        };
        let Some((unit, segment, offset)) = st.unit_at(target) else {
            continue;
        };
        if let Some(v) = st.units.get_mut(&from) {
            if let Some(rec) = v.relink.as_mut() {
                Arc::make_mut(rec).edges[idx as usize].target = RelinkTarget::Unit {
                    unit: UnitId(unit),
                    segment,
                    offset,
                };
            }
            if !v.deps.contains(&new) {
                v.deps.push(new);
            }
        }
        moved.push((from, idx));
    }
    if let Some(o) = st.units.get_mut(&old) {
        o.incoming.retain(|x| !moved.contains(x));
    }
    let mut froms: Vec<u64> = moved.iter().map(|(f, _)| *f).collect();
    froms.dedup();
    if let Some(n) = st.units.get_mut(&new) {
        n.incoming.extend(moved.iter().copied());
        for f in &froms {
            if !n.dependents.contains(f) {
                n.dependents.push(*f);
            }
        }
    }
    // A unit that no longer targets the old one through any edge stops depending on it.
    for f in froms {
        let still = st
            .units
            .get(&old)
            .is_some_and(|o| o.incoming.iter().any(|(x, _)| *x == f));
        if !still {
            if let Some(v) = st.units.get_mut(&f) {
                v.deps.retain(|d| *d != old);
            }
            if let Some(o) = st.units.get_mut(&old) {
                o.dependents.retain(|d| *d != f);
            }
        }
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
