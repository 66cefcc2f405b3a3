//! Compaction of the method region: the VM says which compiled methods to drop, which may move
//! and which must stay (frames are active in them); the dropped ones are removed, and the
//! survivors slide down to close the gaps, their callers relinked.
//!
//! The algorithm, per part of the region (code, read-only data, data): the parts' units in
//! address order; each one that may move goes to the lowest free place at or below where it is
//! that keeps its alignment, packing around what stays (pinned units, and ranges of links in
//! progress); gaps left in front of something that stays are filled by later units that fit.
//! Everything moves towards lower addresses, so moving in order of destination never
//! overwrites a survivor not yet moved (a unit may overlap its own old range: bytes are copied
//! as by `memmove`). Kiln's [`kiln::Session::move_units`] moves the bytes and the unit's
//! registrations (unwind info, gdb, perf map, jitdump, valgrind), applies the moved units' own
//! edges and every edge of another unit into them again; then kiln-jit writes again what it
//! wrote itself into fields where no relink edge follows them (retargeted sites of fixed-region
//! units, guard keys, heap references), the free lists are rebuilt from what is now used, and
//! the freed code is filled with `int3`.
//!
//! What the rest of kiln-jit keeps follows without being rewritten, or is fixed here:
//!
//! - **Sites, inline caches, PICs**: the book (`redefine.rs`) keeps sites and targets as
//!   *places* (unit, segment, offset), which a move leaves valid; a retargeted site with a relink
//!   edge had its edge made to follow (`Session::set_edge_target`), so kiln applies the new
//!   target again itself. Handles the VM holds ([`Site`], [`crate::MonoIc`], [`crate::Pic`]) hold
//!   addresses: [`CompactionReport::site`], [`CompactionReport::mono_ic`] and
//!   [`CompactionReport::pic`] give them at their new places.
//! - **PIC stubs** are method units with relink records: they move like methods (their jumps
//!   and the site's call are applied again). The VM is not asked about them: a live stub is
//!   kept (it may move), and dropped with the unit holding its site.
//! - **Retired units** (old definitions after a redefinition, replaced PICs) may still be run by
//!   threads until the VM reclaims them: they never move and are never dropped here
//!   ([`PinReason::Retired`]); [`Jit::reclaim`] frees them.
//! - **Lazy functions**: stubs are in the fixed region and never move. When a lazy function's
//!   code moves (or callers that were redirected to it move), its stub's slot and the calls
//!   redirected to the code follow (`lazy_code_moved`), and calls of the stub from moved
//!   relink units are redirected to the code again. Their code cannot be dropped (its stub
//!   leads there for as long as the JIT lives).

use crate::error::{Error, Result};
use crate::jit::{Jit, RegionKind, Site, WrittenValue};
use crate::redefine::{Book, Place};
use crate::{HeapRef, MonoIc, Pic};
use kiln::UnitId;
use kiln_target::{ExecutorAddr, SlabWrite};
use rustc_hash::{FxHashMap, FxHashSet};
use std::time::{Duration, Instant};

/// What the VM says of a compiled unit at a compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Remove it. Every unit that uses it (binds to its symbols, or has a site kiln-jit
    /// retargeted into it) must be dropped too: see [`Jit::compact`].
    Drop,
    /// Keep it; it may move.
    Keep,
    /// Keep it where it is (frames are active in it, or the VM holds raw pointers into it).
    Pin,
}

/// Why a unit stayed where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinReason {
    /// The VM said [`Verdict::Pin`].
    Verdict,
    /// This unit uses it without keeping relink records (a fixed-region unit, or a unit linked
    /// outside the zone): its references could not be rewritten.
    UsedWithoutRelink(UnitId),
    /// Its edges tie it to its address (thread-local storage), or it is not in the zone's
    /// memory.
    CannotMove,
    /// A link in progress (on another thread) binds to it: that unit's edges reach it where it
    /// is.
    Linking,
    /// It is retired (replaced by a redefinition, or a replaced PIC): threads may still run it
    /// until [`Jit::reclaim`] frees it.
    Retired,
}

/// One moved segment: `[old, old + size)` is now `[new, new + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeMove {
    pub unit: UnitId,
    pub old: ExecutorAddr,
    pub new: ExecutorAddr,
    pub size: u64,
}

/// Where code and data moved, and what was freed: for rewriting return addresses and saved
/// pcs on the VM's stacks (as Cog does after `compactCogCompiledCode`), and pointers the VM
/// keeps into compiled code.
#[derive(Debug, Clone, Default)]
pub struct MoveMap {
    /// Sorted by old address.
    moved: Vec<RangeMove>,
    /// The dropped units' segments: (start, size), sorted.
    dropped: Vec<(u64, u64)>,
}

impl MoveMap {
    /// The new address of `pc`: moved if it lay in a segment that moved, the same if it lay
    /// anywhere else that still lives (a unit that stayed, the fixed region, the host), `None`
    /// if it lay in a dropped unit (nothing may return there).
    ///
    /// Ranges are half-open: a return address just past a unit's last byte (a unit whose code
    /// ends with a call that does not return) is translated as `translate(pc - 1) + 1`.
    pub fn translate(&self, pc: ExecutorAddr) -> Option<ExecutorAddr> {
        let within = |start: u64, size: u64| start <= pc.0 && pc.0 - start < size;
        if let Some(m) = last_at_or_below(&self.moved, pc.0, |m| m.old.0) {
            if within(m.old.0, m.size) {
                return Some(ExecutorAddr(m.new.0 + (pc.0 - m.old.0)));
            }
        }
        if let Some(&(start, size)) = last_at_or_below(&self.dropped, pc.0, |d| d.0) {
            if within(start, size) {
                return None;
            }
        }
        Some(pc)
    }

    /// The moved segments, by old address.
    pub fn moves(&self) -> &[RangeMove] {
        &self.moved
    }

    /// The dropped units' segments: (start, size) by address.
    pub fn dropped(&self) -> &[(u64, u64)] {
        &self.dropped
    }

    fn to_new(&self, addr: u64) -> u64 {
        self.translate(ExecutorAddr(addr)).map_or(addr, |a| a.0)
    }
}

/// The segments that moved (`now`: where the survivors are, by candidate) and those dropped.
fn moves_made(
    candidates: &[Candidate],
    now: &[Option<Vec<(u64, u64)>>],
    mut dropped: Vec<(u64, u64)>,
) -> MoveMap {
    let mut moved = Vec::new();
    for (c, now) in candidates.iter().zip(now) {
        for (&(old, size), &(new, _)) in c.segments.iter().zip(now.iter().flatten()) {
            if old != new && size > 0 {
                moved.push(RangeMove {
                    unit: c.unit,
                    old: ExecutorAddr(old),
                    new: ExecutorAddr(new),
                    size,
                });
            }
        }
    }
    moved.sort_unstable_by_key(|m| m.old.0);
    dropped.sort_unstable();
    MoveMap { moved, dropped }
}

/// The element of `sorted` with the greatest key at or below `key`.
fn last_at_or_below<T>(sorted: &[T], key: u64, by: impl Fn(&T) -> u64) -> Option<&T> {
    let n = sorted.partition_point(|x| by(x) <= key);
    n.checked_sub(1).map(|i| &sorted[i])
}

/// What a compaction did.
#[derive(Debug, Clone, Default)]
pub struct CompactionReport {
    /// Units removed.
    pub dropped: Vec<UnitId>,
    /// Units that moved (each of their segments is in the map).
    pub moved: Vec<UnitId>,
    /// Units that stayed where they were, and why (units that simply had nowhere lower to go
    /// are neither moved nor pinned).
    pub pinned: Vec<(UnitId, PinReason)>,
    /// Bytes of the method region used before and after, per part (code, read-only, data).
    pub used_before: [u64; 3],
    pub used_after: [u64; 3],
    /// The largest free range of each part after compaction.
    pub largest_free: [u64; 3],
    pub map: MoveMap,
    /// Where the time went.
    pub times: CompactionTimes,
}

/// How long each step of a compaction took.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompactionTimes {
    /// Asking the verdicts and checking them (users of dropped units).
    pub verdicts: Duration,
    /// Removing the dropped units.
    pub drop: Duration,
    /// Deciding where everything goes.
    pub layout: Duration,
    /// Moving (bytes, edges, registrations: [`kiln::Session::move_units`]).
    pub moves: Duration,
    /// Rebuilding the free lists, filling freed code, writing kiln-jit's fields again.
    pub finish: Duration,
}

impl CompactionTimes {
    pub fn total(&self) -> Duration {
        self.verdicts + self.drop + self.layout + self.moves + self.finish
    }
}

impl CompactionReport {
    /// The new address of `pc` (see [`MoveMap::translate`]).
    pub fn translate(&self, pc: ExecutorAddr) -> Option<ExecutorAddr> {
        self.map.translate(pc)
    }

    /// A site handle taken before the compaction, at its new place.
    pub fn site(&self, site: &Site) -> Site {
        Site {
            addr: ExecutorAddr(self.map.to_new(site.addr.0)),
            ..*site
        }
    }

    /// An inline cache handle taken before the compaction, at its new place.
    pub fn mono_ic(&self, ic: &MonoIc) -> MonoIc {
        MonoIc {
            key: self.site(&ic.key),
            target: self.site(&ic.target),
            ..*ic
        }
    }

    /// A PIC handle taken before the compaction, at its new place.
    pub fn pic(&self, pic: &Pic) -> Pic {
        Pic {
            site: self.site(&pic.site),
        }
    }

    /// A heap reference handle taken before the compaction, at its new place.
    pub fn heap_ref(&self, r: &HeapRef) -> HeapRef {
        HeapRef {
            addr: ExecutorAddr(self.map.to_new(r.addr.0)),
            ..*r
        }
    }
}

/// The method units kiln-jit keeps for itself: the VM is not asked about them.
struct OwnUnits {
    /// Retired units (they stay until reclaimed).
    retired: FxHashSet<UnitId>,
    /// Live PIC stubs, with the unit holding the site each serves.
    pic_stubs: FxHashMap<UnitId, UnitId>,
}

impl OwnUnits {
    fn of(book: &Book) -> OwnUnits {
        let pic_stubs = book
            .pics
            .iter()
            .filter_map(|(place, r)| match (place, r.stub_unit()) {
                (Place::In { unit, .. }, Some(stub)) => Some((stub, *unit)),
                _ => None,
            })
            .collect();
        OwnUnits {
            retired: book.retired.iter().map(|r| r.unit).collect(),
            pic_stubs,
        }
    }

    fn contains(&self, unit: UnitId) -> bool {
        self.retired.contains(&unit) || self.pic_stubs.contains_key(&unit)
    }
}

/// A method unit as the compaction sees it.
struct Candidate {
    unit: UnitId,
    segments: Vec<(u64, u64)>,
    aligns: Vec<u64>,
    verdict: Verdict,
}

impl Jit {
    /// Compact the method region. `verdict` is asked once for every unit of the method region
    /// the VM made (oldest first, with no lock of the zone held: it may look at the zone); not
    /// for kiln-jit's own units there: PIC stubs (kept, and dropped with the unit holding their
    /// site) and retired units (pinned until reclaimed). See the module docs.
    ///
    /// Dropped units are removed. A dropped unit's users must go too: if a unit that stays
    /// binds to one of its symbols, or has a site kiln-jit retargeted into it, the compaction is
    /// refused ([`Error::InUse`]) before anything changes. Kiln cannot know what such a
    /// reference means (a call, an address kept in data, a GOT entry), so it does not send it
    /// to a "not compiled" handler on its own: a VM that wants Cog's unlinking first points the
    /// callers' sites elsewhere ([`Jit::retarget`], or redefinition), then drops the unit.
    ///
    /// Survivors slide down (see the module docs); a unit a fixed-region unit (or any unit
    /// without relink records) uses stays where it is, as does a pinned one. The report's move
    /// map translates addresses for the VM's stacks. Site and heap-reference handles taken
    /// before are stale afterwards: [`CompactionReport::site`], or [`Jit::unit`] again.
    ///
    /// No thread may run code of the method region meanwhile (the VM stops them, or they are
    /// in pinned units or the fixed region); other threads may link, and what they are linking
    /// stays where it is.
    pub fn compact(&self, mut verdict: impl FnMut(UnitId) -> Verdict) -> Result<CompactionReport> {
        let mut clock = Instant::now();
        let mut lap = |d: &mut Duration| {
            let now = Instant::now();
            *d = now - clock;
            clock = now;
        };
        let own = OwnUnits::of(&self.book());
        let mut asked: Vec<UnitId> = self
            .units()
            .iter()
            .filter(|(id, u)| u.region == RegionKind::Method && !own.contains(**id))
            .map(|(id, _)| *id)
            .collect();
        asked.sort_unstable();
        let asked: Vec<(UnitId, Verdict)> = asked.iter().map(|&u| (u, verdict(u))).collect();
        // The book first (no patch of a site, IC or PIC, no redefinition, no reclaim while code
        // moves), then `moving` (no write window, heap-reference update or removal).
        let mut book = self.book();
        let _moving = self.moving.write().unwrap_or_else(|e| e.into_inner());
        // Again: PICs built and units retired while the VM answered.
        let own = OwnUnits::of(&book);
        let verdicts = self.with_own_verdicts(asked, &own);
        let mut report = CompactionReport::default();
        let mut times = CompactionTimes::default();
        let mut candidates = self.candidates(&verdicts, &own.retired, &mut report)?;
        let memory = self.zone().method().memory.clone();
        report.used_before = self.zone().method().used_in(&memory.lock())?;
        lap(&mut times.verdicts);
        let dropped = self.drop_units(&candidates, &mut book, &mut report)?;
        lap(&mut times.drop);
        let mut alloc = memory.lock();
        let (parts, moved) =
            self.move_survivors(&alloc, &mut candidates, &mut report, &mut times)?;
        lap(&mut times.moves);
        times.moves = times.moves.saturating_sub(times.layout);
        // Whatever happened, the tables follow what is where now.
        let now = self.segments_now(&candidates);
        let rebuilt = self.rebuild_free_lists(&mut alloc, &parts, &now, &mut report);
        drop(alloc);
        report.map = moves_made(&candidates, &now, dropped);
        let mut units: Vec<UnitId> = report.map.moved.iter().map(|m| m.unit).collect();
        units.sort_unstable();
        units.dedup();
        report.moved = units;
        let rewritten = self.rewrite_fields(&report);
        let lazy = self.lazy_follow_moves(&report);
        lap(&mut times.finish);
        report.times = times;
        moved?;
        rebuilt?;
        rewritten?;
        lazy?;
        Ok(report)
    }

    /// Lay the survivors out and move them. A link that began on another thread after the
    /// candidates were checked may bind to a unit the layout moves (a link still in progress,
    /// or a finished one whose unit keeps no relink record): the session then refuses the whole
    /// move before anything moves, and the layout is made again with those units pinned (each
    /// round pins at least one more, so this ends).
    fn move_survivors(
        &self,
        alloc: &kiln::SlabAllocator,
        candidates: &mut [Candidate],
        report: &mut CompactionReport,
        times: &mut CompactionTimes,
    ) -> Result<(Vec<Part>, kiln::Result<()>)> {
        loop {
            let laying_out = Instant::now();
            let parts = self.layout(alloc, candidates)?;
            let moves = plan_unit_moves(candidates, &parts);
            times.layout += laying_out.elapsed();
            let moved = self.session().move_units(&moves);
            if moved.is_err() && self.pin_late_users(candidates, &moves, report) {
                continue;
            }
            return Ok((parts, moved));
        }
    }

    /// After the session refused `moves`: if none of them moved, pin those of its units that
    /// cannot move now, and say whether there was one.
    fn pin_late_users(
        &self,
        candidates: &mut [Candidate],
        moves: &[(UnitId, Vec<ExecutorAddr>)],
        report: &mut CompactionReport,
    ) -> bool {
        let units: Vec<UnitId> = moves.iter().map(|m| m.0).collect();
        let infos = self.session().relocation_info(&units);
        let mut pins = Vec::new();
        for (unit, info) in units.iter().zip(infos) {
            let (Some(info), Ok(i)) = (info, candidates.binary_search_by_key(unit, |c| c.unit))
            else {
                return false;
            };
            let at: Vec<(u64, u64)> = info.segments.iter().map(|(a, n)| (a.0, *n)).collect();
            if at != candidates[i].segments {
                return false; // something moved: the error stands
            }
            let why = if !info.movable {
                PinReason::CannotMove
            } else if info.linking {
                PinReason::Linking
            } else if let Some(user) = info.fixed_user {
                PinReason::UsedWithoutRelink(user)
            } else {
                continue;
            };
            pins.push((i, why));
        }
        let pinned = !pins.is_empty();
        for (i, why) in pins {
            candidates[i].verdict = Verdict::Pin;
            report.pinned.push((candidates[i].unit, why));
        }
        pinned
    }

    /// The VM's verdicts with those of kiln-jit's own method units added, by unit: retired ones
    /// pinned, a live PIC stub kept, or dropped if the unit holding its site is dropped.
    fn with_own_verdicts(
        &self,
        mut verdicts: Vec<(UnitId, Verdict)>,
        own: &OwnUnits,
    ) -> Vec<(UnitId, Verdict)> {
        let asked: FxHashMap<UnitId, Verdict> = verdicts.iter().copied().collect();
        let units = self.units();
        let in_method = |u: UnitId| {
            units
                .get(&u)
                .is_some_and(|z| z.region == RegionKind::Method)
        };
        for &u in own.retired.iter().filter(|u| !asked.contains_key(u)) {
            if in_method(u) {
                verdicts.push((u, Verdict::Pin));
            }
        }
        for (&stub, &site_unit) in &own.pic_stubs {
            if asked.contains_key(&stub) || !in_method(stub) {
                continue;
            }
            let v = match asked.get(&site_unit) {
                Some(Verdict::Drop) => Verdict::Drop,
                _ => Verdict::Keep,
            };
            verdicts.push((stub, v));
        }
        drop(units);
        verdicts.sort_unstable_by_key(|v| v.0);
        verdicts
    }

    /// Lazy functions whose code moved, or whose redirected callers moved (kiln applied their
    /// calls again, to the stub): the stub's slot and the calls follow the code.
    fn lazy_follow_moves(&self, report: &CompactionReport) -> Result<()> {
        let moved: FxHashSet<UnitId> = report.moved.iter().copied().collect();
        let mut result = Ok(());
        for r in self.lazy_records() {
            let Some((unit, code)) = r.compiled else {
                continue;
            };
            let touched =
                moved.contains(&unit) || r.redirected.iter().any(|s| moved.contains(&s.unit));
            if !touched {
                continue;
            }
            let new_code = report.map.translate(code).unwrap_or(code);
            if let Err(e) = self.lazy_code_moved(r.key, unit, new_code) {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Where the segments of the units that were not dropped are now, by candidate.
    fn segments_now(&self, candidates: &[Candidate]) -> Vec<Option<Vec<(u64, u64)>>> {
        let units: Vec<UnitId> = candidates.iter().map(|c| c.unit).collect();
        let infos = self.session().relocation_info(&units);
        candidates
            .iter()
            .zip(infos)
            .map(|(c, info)| {
                let info = info.filter(|_| c.verdict != Verdict::Drop)?;
                Some(info.segments.iter().map(|(a, n)| (a.0, *n)).collect())
            })
            .collect()
    }

    /// The method units with their segments and verdicts, forced pins applied, sites into
    /// dropped units checked.
    fn candidates(
        &self,
        verdicts: &[(UnitId, Verdict)],
        retired: &FxHashSet<UnitId>,
        report: &mut CompactionReport,
    ) -> Result<Vec<Candidate>> {
        let units: Vec<UnitId> = verdicts.iter().map(|v| v.0).collect();
        let infos = self.session().relocation_info(&units);
        let mut out = Vec::with_capacity(verdicts.len());
        for (&(unit, v), info) in verdicts.iter().zip(infos) {
            // Removed behind kiln-jit's back: forget it.
            let Some(info) = info else {
                self.units().remove(&unit);
                continue;
            };
            if v == Verdict::Drop && !retired.contains(&unit) {
                // A lazy function's code: its stub leads there for as long as the JIT lives.
                self.lazy.check_removable(unit)?;
            }
            let pin = match v {
                _ if retired.contains(&unit) => Some(PinReason::Retired),
                Verdict::Drop => None,
                Verdict::Pin => Some(PinReason::Verdict),
                Verdict::Keep if !info.movable => Some(PinReason::CannotMove),
                Verdict::Keep if info.linking => Some(PinReason::Linking),
                Verdict::Keep => info.fixed_user.map(PinReason::UsedWithoutRelink),
            };
            let verdict = match pin {
                Some(why) => {
                    report.pinned.push((unit, why));
                    Verdict::Pin
                }
                None => v,
            };
            out.push(Candidate {
                unit,
                segments: info.segments.iter().map(|(a, n)| (a.0, *n)).collect(),
                aligns: info.aligns,
                verdict,
            });
        }
        self.check_sites_into_drops(&out)?;
        Ok(out)
    }

    /// No site kiln-jit pointed into a dropped unit lies in a unit that stays. (Units that bind
    /// to a dropped one are refused by the session when it removes them.)
    fn check_sites_into_drops(&self, candidates: &[Candidate]) -> Result<()> {
        let dropping: FxHashSet<UnitId> = candidates
            .iter()
            .filter(|c| c.verdict == Verdict::Drop)
            .map(|c| c.unit)
            .collect();
        if dropping.is_empty() {
            return Ok(());
        }
        let mut ranges: Vec<(u64, u64, UnitId)> = candidates
            .iter()
            .filter(|c| c.verdict == Verdict::Drop)
            .flat_map(|c| c.segments.iter().map(move |&(a, n)| (a, a + n, c.unit)))
            .collect();
        ranges.sort_unstable();
        let mut users: FxHashMap<UnitId, Vec<UnitId>> = FxHashMap::default();
        for (&from, zu) in self.units().iter() {
            if dropping.contains(&from) {
                continue;
            }
            for w in zu.written.values() {
                let WrittenValue::Target(t) = w.value else {
                    continue;
                };
                if let Some(&(_, end, target)) = last_at_or_below(&ranges, t, |r| r.0) {
                    if t < end {
                        users.entry(target).or_default().push(from);
                    }
                }
            }
        }
        let Some((&unit, list)) = users.iter().min_by_key(|(u, _)| **u) else {
            return Ok(());
        };
        let mut list = list.clone();
        list.sort_unstable();
        list.dedup();
        Err(Error::InUse { unit, users: list })
    }

    /// Remove the dropped units, all at once (the session refuses, before removing anything,
    /// if a unit that stays binds to one of them). Returns their segments.
    fn drop_units(
        &self,
        candidates: &[Candidate],
        book: &mut Book,
        report: &mut CompactionReport,
    ) -> Result<Vec<(u64, u64)>> {
        let dropping: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.verdict == Verdict::Drop)
            .collect();
        let ids: Vec<UnitId> = dropping.iter().map(|c| c.unit).collect();
        match self.session().remove_units(&ids) {
            Err(kiln::Error::HasDependents { unit, dependents }) => {
                return Err(Error::InUse {
                    unit,
                    users: dependents.into_vec(),
                })
            }
            r => r?,
        }
        let mut units = self.units();
        for c in &dropping {
            units.remove(&c.unit);
            book.forget(c.unit);
        }
        report.dropped = ids;
        report.dropped.sort_unstable();
        Ok(dropping
            .iter()
            .flat_map(|c| c.segments.iter().filter(|s| s.1 > 0).copied())
            .collect())
    }
}

/// One part of the method region (code, read-only or data) laid out: what stays where it is,
/// and where each segment that may move goes.
struct Part {
    start: u64,
    end: u64,
    /// Ranges that stay, (start, end) by address: pinned units' segments, and ranges of links in
    /// progress.
    fixed: Vec<(u64, u64)>,
    /// (piece id, new address) of the segments that may move.
    placed: Vec<((usize, usize), u64)>,
    /// The end of the last range used before the compaction (dropped units included).
    high: u64,
}

/// A segment to place: (unit index in the candidates, segment index), where it is, its size
/// and alignment.
#[derive(Clone, Copy, Debug)]
struct Piece {
    id: (usize, usize),
    old: u64,
    size: u64,
    align: u64,
}

impl Jit {
    /// Lay the method region's parts out (under the region allocator's lock, so that nothing new
    /// is allocated there meanwhile). Also returns the bytes used per part before.
    fn layout(&self, alloc: &kiln::SlabAllocator, candidates: &[Candidate]) -> Result<Vec<Part>> {
        let region = self.zone().method();
        let mut parts = Vec::new();
        for (r, &(start, size)) in region.info.regions.iter().enumerate() {
            let (start, end) = (start.0, start.0 + size);
            let free = alloc.free_ranges(region.slab(), r)?;
            let used = complement(&free, start, end);
            // Segments of units that may move, by address.
            let mut pieces: Vec<Piece> = Vec::new();
            for (i, c) in candidates.iter().enumerate() {
                if c.verdict != Verdict::Keep {
                    continue;
                }
                for (k, &(a, n)) in c.segments.iter().enumerate() {
                    if n > 0 && start <= a && a < end {
                        // Placed as the region's allocator places units: in whole extents.
                        let align = c.aligns.get(k).copied().unwrap_or(16).max(kiln::SLAB_GRAIN);
                        pieces.push(Piece {
                            id: (i, k),
                            old: a,
                            size: kiln::slab_extent(n),
                            align,
                        });
                    }
                }
            }
            pieces.sort_unstable_by_key(|p| p.old);
            // What stays: what is used that is not a segment that may move.
            let movable: Vec<(u64, u64)> = pieces.iter().map(|p| (p.old, p.old + p.size)).collect();
            let high = candidates
                .iter()
                .flat_map(|c| c.segments.iter())
                .filter(|(a, _)| start <= *a && *a < end)
                .map(|(a, n)| a + n)
                .chain(used.last().map(|u| u.1))
                .max()
                .unwrap_or(start);
            let mut part = Part {
                start,
                end,
                fixed: subtract(&used, &movable),
                placed: Vec::new(),
                high,
            };
            slide(&mut part, &pieces);
            parts.push(part);
        }
        Ok(parts)
    }

    /// The region's free lists are everything not used now; freed code is filled with `int3`,
    /// so that a stale return address into it traps rather than running what lies there.
    fn rebuild_free_lists(
        &self,
        alloc: &mut kiln::SlabAllocator,
        parts: &[Part],
        now: &[Option<Vec<(u64, u64)>>],
        report: &mut CompactionReport,
    ) -> Result<()> {
        let region = self.zone().method();
        let s = self.session();
        let mut poison = Vec::new();
        for (r, part) in parts.iter().enumerate() {
            // Where everything is now, from the session (what moved, and what did not).
            let mut used: Vec<(u64, u64)> = part.fixed.iter().map(|&(a, e)| (a, e - a)).collect();
            used.extend(
                now.iter()
                    .flatten()
                    .flatten()
                    .filter(|(a, n)| *n > 0 && part.start <= *a && *a < part.end),
            );
            used.sort_unstable();
            used.dedup();
            alloc.rebuild_region(region.slab(), r, &used)?;
            let free = alloc.free_ranges(region.slab(), r)?;
            report.used_after[r] = used.iter().map(|u| u.1).sum();
            report.largest_free[r] = free.iter().map(|f| f.1).max().unwrap_or(0);
            if r == 0 {
                // Only what was used before can hold stale code.
                let high = part.high;
                for &(a, n) in free.iter().filter(|(a, _)| *a < high) {
                    let n = n.min(high - a);
                    poison.push(SlabWrite::Fill(ExecutorAddr(a), n, 0xcc));
                }
            }
        }
        if !poison.is_empty() {
            s.executor().write_slab(region.slab(), &poison)?;
        }
        Ok(())
    }

    /// Write again, at their new places, the values kiln-jit wrote into fields whose bytes the
    /// move may have changed: fields that moved, targets that moved, and fields kiln applied an
    /// edge to again (the unit moved, or the edge's target did).
    fn rewrite_fields(&self, report: &CompactionReport) -> Result<()> {
        let fields = self.relocate_fields(&|a| report.map.to_new(a));
        let moved: FxHashSet<UnitId> = report.moved.iter().copied().collect();
        let s = self.session();
        let mut bytes: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut relinked: FxHashMap<UnitId, FxHashSet<u64>> = FxHashMap::default();
        for f in fields {
            let relinked = relinked
                .entry(f.unit)
                .or_insert_with(|| edges_applied_again(s, f.unit, &moved));
            if f.changed || moved.contains(&f.unit) || relinked.contains(&f.at) {
                bytes.push((f.at, f.written.encode(f.at)?));
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let writes: Vec<SlabWrite> = bytes
            .iter()
            .map(|(a, b)| SlabWrite::Bytes(ExecutorAddr(*a), b))
            .collect();
        s.executor()
            .write_live(self.zone().method().slab(), &writes)?;
        Ok(())
    }
}

/// The field addresses of `unit`'s edges that were applied again because their target moved.
fn edges_applied_again(
    s: &kiln::Session,
    unit: UnitId,
    moved: &FxHashSet<UnitId>,
) -> FxHashSet<u64> {
    let (Some(rec), Ok(segs)) = (s.relink_record(unit), s.unit_segments(unit)) else {
        return FxHashSet::default();
    };
    rec.edges
        .iter()
        .filter(|e| match e.target {
            kiln::RelinkTarget::Unit { unit: t, .. } => moved.contains(&t),
            _ => false,
        })
        .filter_map(|e| Some(segs.get(usize::from(e.segment))?.0 .0 + u64::from(e.offset)))
        .collect()
}

/// Place `pieces` (sorted by address) in `part`: each at the lowest free address at or below
/// its own that keeps its alignment, around what stays.
fn slide(part: &mut Part, pieces: &[Piece]) {
    // Gaps left in front of ranges that stay: (start, end), by address.
    let mut holes: Vec<(u64, u64)> = Vec::new();
    let mut cursor = part.start;
    let mut fixed = part.fixed.iter().peekable();
    for p in pieces {
        if let Some(at) = take_from_holes(&mut holes, p.size, p.align, p.old) {
            part.placed.push((p.id, at));
            continue;
        }
        let mut at = cursor.next_multiple_of(p.align);
        // Skip what stays in the way; the room in front of it becomes a hole.
        while let Some(&&(fa, fe)) = fixed.peek() {
            if fe <= at {
                fixed.next();
                continue;
            }
            if at + p.size <= fa {
                break;
            }
            if cursor < fa {
                holes.push((cursor, fa));
            }
            cursor = fe;
            at = cursor.next_multiple_of(p.align);
            fixed.next();
        }
        // Never up (cannot happen: everything before it went down, and it is aligned itself).
        let at = at.min(p.old);
        part.placed.push((p.id, at));
        cursor = cursor.max(at + p.size);
    }
}

/// The lowest place in `holes` for `size` bytes at `align`, below `limit`; taken out of it.
fn take_from_holes(holes: &mut Vec<(u64, u64)>, size: u64, align: u64, limit: u64) -> Option<u64> {
    let (i, at) = holes.iter().enumerate().find_map(|(i, &(s, e))| {
        let at = s.next_multiple_of(align);
        (at + size <= e && at <= limit).then_some((i, at))
    })?;
    let (s, e) = holes[i];
    holes.remove(i);
    if at + size < e {
        holes.insert(i, (at + size, e));
    }
    if s < at {
        holes.insert(i, (s, at));
    }
    Some(at)
}

/// The (unit, new segment addresses) of every unit a layout moves.
fn plan_unit_moves(candidates: &[Candidate], parts: &[Part]) -> Vec<(UnitId, Vec<ExecutorAddr>)> {
    let mut new: FxHashMap<usize, Vec<ExecutorAddr>> = FxHashMap::default();
    for p in parts {
        for &((i, k), at) in &p.placed {
            let segs = &candidates[i].segments;
            let v = new
                .entry(i)
                .or_insert_with(|| segs.iter().map(|s| ExecutorAddr(s.0)).collect());
            v[k] = ExecutorAddr(at);
        }
    }
    let mut out: Vec<(UnitId, Vec<ExecutorAddr>)> = new
        .into_iter()
        .filter(|(i, v)| {
            candidates[*i]
                .segments
                .iter()
                .zip(v)
                .any(|(s, n)| s.0 != n.0)
        })
        .map(|(i, v)| (candidates[i].unit, v))
        .collect();
    out.sort_unstable_by_key(|(u, _)| *u);
    out
}

/// The ranges of `[start, end)` not in `free` ((start, size), sorted): (start, end) pairs.
fn complement(free: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for &(a, n) in free {
        if a > at {
            out.push((at, a.min(end)));
        }
        at = at.max(a + n);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

/// `ranges` less `minus` (both (start, end), sorted, `minus` disjoint).
fn subtract(ranges: &[(u64, u64)], minus: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut m = 0;
    for &(mut a, e) in ranges {
        while m < minus.len() && minus[m].1 <= a {
            m += 1;
        }
        let mut j = m;
        while j < minus.len() && minus[j].0 < e {
            if minus[j].0 > a {
                out.push((a, minus[j].0));
            }
            a = a.max(minus[j].1);
            j += 1;
        }
        if a < e {
            out.push((a, e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            complement(&[(0x10, 0x10), (0x40, 0x10)], 0, 0x60),
            [(0, 0x10), (0x20, 0x40), (0x50, 0x60)]
        );
        assert_eq!(complement(&[(0, 0x60)], 0, 0x60), []);
        assert_eq!(
            subtract(&[(0, 0x100)], &[(0x10, 0x20), (0x80, 0x100)]),
            [(0, 0x10), (0x20, 0x80)]
        );
        assert_eq!(
            subtract(&[(0, 0x10), (0x20, 0x30)], &[(0x20, 0x30)]),
            [(0, 0x10)]
        );
    }

    #[test]
    fn survivors_slide_down_around_what_stays() {
        // Free at 0..0x30 but for a pinned range at 0x30..0x40; pieces at 0x40 (0x18 bytes),
        // 0x60 (0x10) and 0x80 (0x20).
        let piece = |n: usize, old, size| Piece {
            id: (n, 0),
            old,
            size,
            align: 16,
        };
        let pieces = [
            piece(1, 0x40, 0x18),
            piece(2, 0x60, 0x10),
            piece(3, 0x80, 0x20),
        ];
        let mut part = Part {
            start: 0,
            end: 0x100,
            fixed: vec![(0x30, 0x40)],
            placed: Vec::new(),
            high: 0xa0,
        };
        slide(&mut part, &pieces);
        // The first goes to 0, the second fits before the pin (0x20), the third goes after it.
        assert_eq!(part.placed, [((1, 0), 0), ((2, 0), 0x20), ((3, 0), 0x40)]);
        // A piece too big for the room before the pin leaves a hole that a later one fills.
        let pieces = [piece(1, 0x40, 0x28), piece(2, 0x80, 0x8)];
        let mut part = Part {
            start: 0,
            end: 0x100,
            fixed: vec![(0x20, 0x30)],
            placed: Vec::new(),
            high: 0x88,
        };
        slide(&mut part, &pieces);
        assert_eq!(part.placed, [((1, 0), 0x30), ((2, 0), 0)]);
    }
}
