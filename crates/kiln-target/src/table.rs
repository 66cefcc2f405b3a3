//! The ownership table: what one executor owns, and in which state. Every safe call that
//! writes, protects, releases or runs something asks the table first; the memory operations in
//! `sys/` rely on its answers (see docs/safety.md).
//!
//! - **Reservations** (from `reserve`): free, or used by one allocation. Released only whole and
//!   only while free; a used one goes when its allocation is deallocated.
//! - **Slabs**: three regions each; unmapped only when no allocation and no writer is in them.
//! - **Allocations** and their **segments**: finalizing, live, moving or dying. A slab unit of
//!   one segment and no extras (a JIT's one-function unit) is a *dense* unit: a 16-byte slot,
//!   its segment in the dense index by slab offset; every other allocation has a full record,
//!   its segments in the segment index. "Whose bytes are these" asks both (`Table::hits`).
//!   Slab units' ids are minted here (slot and generation: found without a hash map, never
//!   reused).
//! - **Claims**: ranges of slabs that a call is writing right now (`with_slab_memory`,
//!   `write_slab`, `write_live`, and the destinations of a `move_allocation`) without holding the
//!   table's lock. Two claims never overlap, so two writable slices handed out never alias.
//!   Claims of `with_slab_memory` and `write_slab` overlap no allocation's segment; those of
//!   `write_live` (the write window over running code) only live allocations' segments, outside
//!   registered ranges; a reader (`read_memory`) never reads a claimed range. A dense unit
//!   being written (`finalize_slab_unit`) is claimed by its state, `Writing`, which these
//!   checks see as a claim.
//! - **Registered ranges**: unwind info and TLS images the runtime reads while their unit lives;
//!   `patch` and `write_live` may not change them.
//!
//! Every lookup is a range query in sorted chunks under a B-tree, or an index into the slots:
//! O(log n) in the number of things owned.
//!
//! The table is generic over what a slab carries (`S`): the in-process executor keeps the slab's
//! mappings there, the simulated one nothing.

use crate::executor::{Action, FinalizeRequest};
use crate::plan::{range, Plan, PlannedSegment};
use crate::ranges::{OffsetIndex, RangeMap, RangeSet};
use crate::{Error, ExecutorAddr, MemProt, Result, SlabId, SlabInfo};
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

/// The protection of each slab region, in order.
pub(crate) const REGION_PROTS: [MemProt; 3] =
    [MemProt::ReadExec, MemProt::Read, MemProt::ReadWrite];

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Reservation {
    Free,
    UsedBy(u64),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum AllocState {
    /// Being filled and its finalize actions running: the id is not handed out yet.
    Finalizing,
    Live,
    /// Its deinitializers and dealloc actions are running; its memory goes next.
    Dying,
    /// `move_allocation` is undoing its registrations, copying its bytes or registering it
    /// anew: not deallocated, called, moved or written meanwhile.
    Moving,
}

/// Kept small (a JIT links many one-function units): what most units lack is boxed.
#[derive(Debug)]
struct AllocRecord {
    state: AllocState,
    /// Calls into its code in progress (`run_main`, `call_void`, its initializers): it is not
    /// deallocated under them.
    pins: u32,
    /// `run_initializers` was called (once is all).
    initialized: bool,
    /// Its deinitializers wait in the process-wide exit registry.
    finalizers: bool,
    /// Its entries in the segment index.
    segments: Segments,
    extras: Option<Box<Extras>>,
}

impl AllocRecord {
    /// (base, size) of its own reservation; `None` in a slab.
    fn reservation(&self) -> Option<(u64, u64)> {
        self.extras.as_ref()?.reservation
    }
}

/// An allocation's segments: inline while there is one (a JIT's one-function unit), so that
/// its record needs no allocation of its own.
#[derive(Debug)]
enum Segments {
    One(PlannedSegment),
    /// Any other number.
    Many(Vec<PlannedSegment>),
}

impl From<Vec<PlannedSegment>> for Segments {
    fn from(mut v: Vec<PlannedSegment>) -> Self {
        match v.len() {
            1 => Segments::One(v[0]),
            _ => {
                v.shrink_to_fit();
                Segments::Many(v)
            }
        }
    }
}

impl Segments {
    fn of(segments: &[PlannedSegment]) -> Self {
        match segments {
            [one] => Segments::One(*one),
            _ => Segments::Many(segments.to_vec()),
        }
    }
}

impl std::ops::Deref for Segments {
    type Target = [PlannedSegment];
    fn deref(&self) -> &[PlannedSegment] {
        match self {
            Segments::One(s) => std::slice::from_ref(s),
            Segments::Many(v) => v,
        }
    }
}

#[derive(Debug, Default)]
struct Extras {
    /// (base, size) of its own reservation; `None` in a slab (a JIT's small units: their
    /// records stay small).
    reservation: Option<(u64, u64)>,
    /// Its entries in the registered ranges.
    registered: Vec<(u64, u64)>,
    dealloc: Vec<Action>,
    initializers: Vec<ExecutorAddr>,
}

#[derive(Copy, Clone, Debug)]
struct SegmentOwner {
    alloc: u64,
    prot: MemProt,
}

/// Allocation ids carry their table in the bits from here up (see `sys::owned`); the table
/// mints the ids of slab units in the bits below.
pub(crate) const ID_TAG_SHIFT: u32 = 40;

/// Set in the ids the table mints for slab units ([`Table::begin_slab_unit`]): ids callers
/// give ([`Table::begin_finalize`]) stay below it.
pub(crate) const SLOT_ID_BIT: u64 = 1 << (ID_TAG_SHIFT - 1);

/// A minted id: its slot in the bits above these, the slot's generation in these.
const GEN_BITS: u32 = 15;
const GEN_LIMIT: u16 = 1 << GEN_BITS;
const SLOT_LIMIT: u32 = 1 << (ID_TAG_SHIFT - 1 - GEN_BITS);
const NO_SLOT: u32 = u32::MAX;

/// What a slab unit's slot holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SlotState {
    /// On the free list (or retired: its generations are used up).
    Free,
    /// Dense, finalizing: its writer holds the only writable slice of its bytes (this state is
    /// its claim: no entry in `claims`).
    Writing,
    Live,
    Dying,
    Moving,
    /// The unit's full record is in `records`, under the slot's id (several segments, extras,
    /// or outside the dense slab): the slot only gives it its id.
    Full,
}

/// Flags of a dense unit.
const INITIALIZED: u8 = 1;
const FINALIZERS: u8 = 2;
/// Its region's index (0 code, 1 read-only, 2 read-write) in these bits: its protection.
const REGION_SHIFT: u32 = 2;

/// One slab unit: 16 bytes. A dense unit (one segment in the table's dense slab, nothing
/// registered, no initializers or dealloc actions: a JIT's one-function unit) is all here; its
/// segment is in [`Slots::index`] by start, not in the segment index.
#[derive(Copy, Clone, Debug)]
struct UnitSlot {
    /// Dense: its segment's start, from the dense slab's start. Free: the next free slot.
    offset: u32,
    len: u32,
    /// Calls into its code in progress (as [`AllocRecord::pins`]).
    pins: u32,
    /// Bumped when the slot is freed: an id names the slot's unit only while the generations
    /// agree, so the id of a freed unit never reaches the next unit in its slot.
    gen: u16,
    state: SlotState,
    flags: u8,
}

impl UnitSlot {
    fn end(&self) -> u32 {
        self.offset + self.len
    }

    fn prot(&self) -> MemProt {
        REGION_PROTS[usize::from(self.flags >> REGION_SHIFT) % REGION_PROTS.len()]
    }

    fn alloc_state(&self) -> AllocState {
        match self.state {
            SlotState::Writing => AllocState::Finalizing,
            SlotState::Dying => AllocState::Dying,
            SlotState::Moving => AllocState::Moving,
            _ => AllocState::Live,
        }
    }
}

/// The slab units of a table, by slot: ids that find their unit without a hash map.
#[derive(Debug, Default)]
struct Slots {
    entries: Vec<UnitSlot>,
    /// Head of the free list (through `offset`), [`NO_SLOT`] when empty.
    free: u32,
    /// The dense units' segments by start.
    index: OffsetIndex,
    /// The slab whose one-segment units can be dense (the table's first slab, when its span
    /// fits 32-bit offsets): id, start and end of its span. The in-process executor has a
    /// table per slab, so all of its slab units can be.
    dense_slab: Option<(u32, u64, u64)>,
    /// The table's tag, in the bits above [`ID_TAG_SHIFT`] of every id it mints.
    tag: u64,
}

impl Slots {
    fn id(&self, slot: u32) -> u64 {
        self.id_of(slot, self.entries[slot as usize].gen)
    }

    /// The id of `slot` in generation `gen`.
    fn id_of(&self, slot: u32, gen: u16) -> u64 {
        self.tag << ID_TAG_SHIFT | SLOT_ID_BIT | u64::from(slot) << GEN_BITS | u64::from(gen)
    }

    /// The slot of minted id `id`, if its unit is there (a free slot or another generation:
    /// none).
    fn slot_of(&self, id: u64) -> Option<u32> {
        if id >> ID_TAG_SHIFT != self.tag || id & SLOT_ID_BIT == 0 {
            return None;
        }
        let slot = ((id & (SLOT_ID_BIT - 1)) >> GEN_BITS) as u32;
        let e = self.entries.get(slot as usize)?;
        (u64::from(e.gen) == id & u64::from(GEN_LIMIT - 1) && e.state != SlotState::Free)
            .then_some(slot)
    }

    /// A slot for a new unit, and its id. Nothing changes on an error. (Always inlined: the
    /// LTO build left it a call in `finalize_slab_unit`, its entry and result passed through
    /// memory.)
    #[inline(always)]
    fn take(&mut self, entry: UnitSlot) -> Result<(u32, u64)> {
        if self.free != NO_SLOT {
            let slot = self.free;
            let e = &mut self.entries[slot as usize];
            self.free = e.offset;
            *e = UnitSlot {
                gen: e.gen,
                ..entry
            };
            return Ok((slot, self.id(slot)));
        }
        // A new slot where the vector has room (inline; growing it, or no ids left, out of
        // line). `SLOT_LIMIT` bounds the length, so that the slot fits its id.
        let n = self.entries.len();
        if n < self.entries.capacity() && n < SLOT_LIMIT as usize {
            self.entries.push(UnitSlot { gen: 0, ..entry });
            // (A new slot's generation is 0: its id without reading the entry back.)
            return Ok((n as u32, self.id_of(n as u32, 0)));
        }
        self.take_new(entry)
    }

    /// [`Slots::take`] of a new slot when the vector must grow, or is full.
    #[cold]
    #[inline(never)]
    fn take_new(&mut self, entry: UnitSlot) -> Result<(u32, u64)> {
        let slot = u32::try_from(self.entries.len())
            .ok()
            .filter(|&n| n < SLOT_LIMIT)
            .ok_or_else(|| {
                Error::InvalidRequest("out of allocation ids in this slab's table".into())
            })?;
        self.entries.push(UnitSlot { gen: 0, ..entry });
        Ok((slot, self.id_of(slot, 0)))
    }

    /// Free `slot` (its unit's segment is out of the index): a new generation, and back on the
    /// free list unless its generations are used up (then it is never used again, and no id
    /// can name it).
    fn release(&mut self, slot: u32) {
        let e = &mut self.entries[slot as usize];
        e.state = SlotState::Free;
        e.gen += 1;
        if e.gen < GEN_LIMIT {
            e.offset = self.free;
            self.free = slot;
        }
    }

    /// Where segment `[start, end)` of slab `slab` lies as a dense unit's (offset, length), if
    /// it can be one.
    fn dense_place(&self, slab: SlabId, start: u64, end: u64) -> Option<(u32, u32)> {
        let (id, base, span_end) = self.dense_slab?;
        if id != slab.0 || start < base || end > span_end {
            return None;
        }
        // The span fits 32 bits (`Table::add_slab`).
        Some(((start - base) as u32, (end - start) as u32))
    }

    /// The dense units whose segments overlap `[start, end)`, last first: (start, end, slot).
    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        let (base, rel) = match self.dense_slab {
            Some((_, base, span_end)) if start < span_end && base < end && start < end => (
                base,
                (
                    (start.max(base) - base) as u32,
                    (end.min(span_end) - base) as u32,
                ),
            ),
            _ => (0, (0, 0)),
        };
        self.index
            .overlapping(rel.0, rel.1, |slot| self.entries[slot as usize].end())
            .map(move |(off, slot)| {
                let e = &self.entries[slot as usize];
                (base + u64::from(off), base + u64::from(e.end()), slot)
            })
    }
}

/// A segment of some allocation, as the overlap queries find it.
#[derive(Copy, Clone, Debug)]
struct Hit {
    start: u64,
    end: u64,
    alloc: u64,
    prot: MemProt,
    state: AllocState,
}

struct SlabRecord<S> {
    info: SlabInfo,
    /// [start, end) of the whole slab where the code runs.
    span: (u64, u64),
    /// Per region, an address at or above the end of every segment ever placed in it (its
    /// start while none was): a range starting there overlaps no segment, without a search of
    /// the segment index. A JIT's units are mostly placed above the last one, so most new
    /// units need no search; removals leave the mark where it was (it is only a bound).
    high_water: [u64; 3],
    payload: S,
}

impl<S> SlabRecord<S> {
    /// The region that holds all of `[start, end)` (an empty range: in a region or at its
    /// end).
    fn region_of(&self, start: u64, end: u64) -> Result<usize> {
        for (r, (a, n)) in self.info.regions.iter().enumerate() {
            if a.0 <= start && end <= a.0.saturating_add(*n) {
                return Ok(r);
            }
        }
        Err(not_owned(
            start,
            end - start,
            "inside one region of that slab of this executor",
        ))
    }

    /// A segment `[start, end)` was placed in the slab: the mark of the region holding it
    /// goes up to its end.
    fn raise_high_water(&mut self, start: u64, end: u64) {
        for (mark, (a, n)) in self.high_water.iter_mut().zip(self.info.regions) {
            if a.0 <= start && end <= a.0.saturating_add(n) {
                *mark = (*mark).max(end);
            }
        }
    }
}

/// Allocation ids are distinct integers (a counter's, or a slot and generation minted by the
/// table): a multiplicative hash spreads them (SipHash would cost more than the rest of a small
/// unit's bookkeeping).
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // A product's low bits depend only on the factor's low bits, and minted ids keep their
        // slot above a generation that is mostly 0: the high half is folded into the low one,
        // where the hash table takes its bucket (without it, every first-generation id fell
        // into one bucket in 2^15 and an insert probed thousands of entries).
        let h = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

/// How a new allocation starts.
pub(crate) struct NewAlloc {
    pub(crate) initializers: Vec<ExecutorAddr>,
    /// Its deinitializers go to the exit registry.
    pub(crate) finalizers: bool,
    /// Live at once (nothing to fill or run), rather than finalizing.
    pub(crate) live: bool,
}

/// A move the table has checked ([`Table::plan_move`]).
pub(crate) struct MovePlan {
    /// The allocation's segments after the move, sorted by start.
    pub(crate) segments: Vec<PlannedSegment>,
    /// Each move: the slab, and (from, to, len).
    pub(crate) moves: Vec<(SlabId, u64, u64, u64)>,
}

impl MovePlan {
    /// Where the byte at `addr` is after the move (itself if it does not move).
    pub(crate) fn translate(&self, addr: u64) -> u64 {
        self.moves
            .iter()
            .find(|&&(_, from, _, len)| addr >= from && addr - from < len)
            .map_or(addr, |&(_, from, to, _)| to + (addr - from))
    }

    /// `a` with the addresses it names moved along with the bytes they name.
    pub(crate) fn translate_action(&self, a: &Action) -> Action {
        let t = |x: ExecutorAddr| ExecutorAddr(self.translate(x.0));
        match a.clone() {
            Action::CallVoid(f) => Action::CallVoid(t(f)),
            Action::CxaFinalize { dso } => Action::CxaFinalize { dso: t(dso) },
            Action::DiscardTranslations { addr, size } => Action::DiscardTranslations {
                addr: t(addr),
                size,
            },
            other => other,
        }
    }
}

/// Whether a dealloc action undoes a registration (rather than running the unit's code or
/// writing a file): what `move_allocation` runs before the bytes move, because the runtime
/// would otherwise keep pointing at the old addresses.
pub(crate) fn undoes_registration(a: &Action) -> bool {
    matches!(
        a,
        Action::DeregisterEhFrame { .. }
            | Action::DeregisterTls { .. }
            | Action::DeregisterGdbObjects { .. }
            | Action::DiscardTranslations { .. }
    )
}

/// What deallocation needs once the table has marked an allocation dying.
pub(crate) struct Dying {
    pub(crate) dealloc: Vec<Action>,
    pub(crate) reservation: Option<(u64, u64)>,
    /// Its deinitializers are in the exit registry.
    pub(crate) finalizers: bool,
}

impl Dying {
    /// Nothing to run and nothing to unmap: the table can forget the allocation at once.
    pub(crate) fn is_trivial(&self) -> bool {
        self.dealloc.is_empty() && self.reservation.is_none() && !self.finalizers
    }
}

pub(crate) struct Table<S> {
    reservations: RangeMap<Reservation>,
    slabs: Slabs<S>,
    /// Slab spans, for finding the slab that holds an address.
    slab_spans: RangeMap<u32>,
    /// Full records: allocations with ids from the caller, and slab units that are not dense
    /// (their slots say `Full`).
    allocs: HashMap<u64, AllocRecord, BuildHasherDefault<IdHasher>>,
    /// Slab units by slot; the dense ones entirely.
    slots: Slots,
    /// The segments of the allocations with full records (a dense unit's is in
    /// [`Slots::index`]).
    segments: RangeMap<SegmentOwner>,
    claims: RangeSet,
    registered: RangeMap<u64>,
    /// Static TLS blocks handed out: offset → block size.
    static_tls: BTreeMap<i64, u64>,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Table {
            reservations: RangeMap::default(),
            slabs: Slabs(Vec::new()),
            slab_spans: RangeMap::default(),
            allocs: HashMap::default(),
            slots: Slots {
                free: NO_SLOT,
                ..Slots::default()
            },
            segments: RangeMap::default(),
            claims: RangeSet::default(),
            registered: RangeMap::default(),
            static_tls: BTreeMap::new(),
        }
    }
}

/// A table's slabs, sorted by id. The in-process executor's tables have one each (a search of
/// one element, where a B-tree's costs a few dozen instructions on every unit's way in).
struct Slabs<S>(Vec<SlabRecord<S>>);

impl<S> Slabs<S> {
    fn position(&self, id: u32) -> std::result::Result<usize, usize> {
        match self.0.as_slice() {
            [one] if one.info.id.0 == id => Ok(0),
            all => all.binary_search_by_key(&id, |r| r.info.id.0),
        }
    }

    fn get(&self, id: &u32) -> Option<&SlabRecord<S>> {
        self.position(*id).ok().map(|i| &self.0[i])
    }

    fn get_mut(&mut self, id: &u32) -> Option<&mut SlabRecord<S>> {
        self.position(*id).ok().map(|i| &mut self.0[i])
    }

    /// Add slab `id`'s record (replacing one of the same id).
    fn insert(&mut self, id: u32, rec: SlabRecord<S>) {
        match self.position(id) {
            Ok(i) => self.0[i] = rec,
            Err(i) => self.0.insert(i, rec),
        }
    }

    fn remove(&mut self, id: &u32) -> Option<SlabRecord<S>> {
        self.position(*id).ok().map(|i| self.0.remove(i))
    }
}

/// A segment `[start, end)` was placed in slab memory (no-op outside slabs): the high-water
/// mark of its region goes up to its end. (A function of the two fields, not a method: callers
/// hold an allocation record of the same table.)
fn raise_high_water<S>(spans: &RangeMap<u32>, slabs: &mut Slabs<S>, start: u64, end: u64) {
    let Some((_, _, id)) = spans.enclosing(start, end) else {
        return;
    };
    if let Some(slab) = slabs.get_mut(id) {
        slab.raise_high_water(start, end);
    }
}

fn too_many_pins(id: u64) -> Error {
    Error::Busy(format!("allocation {id} has too many calls in progress"))
}

fn not_owned(addr: u64, size: u64, what: &'static str) -> Error {
    Error::NotOwned {
        addr: ExecutorAddr(addr),
        size,
        what: what.into(),
    }
}

impl<S> Table<S> {
    /// A table whose minted ids carry `tag` above [`ID_TAG_SHIFT`] (what routes them to it).
    pub(crate) fn with_id_tag(tag: u64) -> Self {
        let mut t = Table::default();
        t.slots.tag = tag;
        t
    }

    /// The dense unit `id` names (its slot), if it is one.
    fn dense(&self, id: u64) -> Option<u32> {
        let slot = self.slots.slot_of(id)?;
        (self.slots.entries[slot as usize].state != SlotState::Full).then_some(slot)
    }

    fn dense_mut(&mut self, id: u64) -> Option<&mut UnitSlot> {
        let slot = self.dense(id)?;
        Some(&mut self.slots.entries[slot as usize])
    }

    /// Every allocation's segment that overlaps `[start, end)`: dense units' (last first),
    /// then full records' (last first).
    fn hits(&self, start: u64, end: u64) -> impl Iterator<Item = Hit> + '_ {
        let dense = self.slots.overlapping(start, end).map(move |(s, e, slot)| {
            let u = &self.slots.entries[slot as usize];
            Hit {
                start: s,
                end: e,
                alloc: self.slots.id(slot),
                prot: u.prot(),
                state: u.alloc_state(),
            }
        });
        let full = self
            .segments
            .overlapping_all(start, end)
            .map(move |(s, e, o)| Hit {
                start: s,
                end: e,
                alloc: o.alloc,
                prot: o.prot,
                state: self
                    .allocs
                    .get(&o.alloc)
                    .map_or(AllocState::Dying, |a| a.state),
            });
        dense.chain(full)
    }

    /// A segment that overlaps `[start, end)`, if any does.
    fn any_hit(&self, start: u64, end: u64) -> Option<Hit> {
        self.hits(start, end).next()
    }

    /// Whether a dense unit being written (claimed by its writer) overlaps `[start, end)`.
    fn dense_writing(&self, start: u64, end: u64) -> bool {
        self.slots
            .overlapping(start, end)
            .any(|(_, _, slot)| self.slots.entries[slot as usize].state == SlotState::Writing)
    }

    /// Dense unit `slot` gets a full record (for what a dense unit cannot hold), in its state.
    fn promote(&mut self, slot: u32) {
        let id = self.slots.id(slot);
        let Some((_, base, _)) = self.slots.dense_slab else {
            return;
        };
        let u = self.slots.entries[slot as usize];
        let seg = PlannedSegment {
            start: base + u64::from(u.offset),
            end: base + u64::from(u.end()),
            mapped_end: base + u64::from(u.end()),
            prot: u.prot(),
        };
        self.slots.index.remove(u.offset);
        let owner = SegmentOwner {
            alloc: id,
            prot: seg.prot,
        };
        // Its range was the dense unit's: no other segment overlaps it.
        self.segments.insert_disjoint(seg.start, seg.end, owner);
        self.allocs.insert(
            id,
            AllocRecord {
                state: u.alloc_state(),
                pins: u.pins,
                initialized: u.flags & INITIALIZED != 0,
                finalizers: u.flags & FINALIZERS != 0,
                segments: Segments::One(seg),
                extras: None,
            },
        );
        self.slots.entries[slot as usize].state = SlotState::Full;
    }

    /// Dense unit `slot` is gone: its segment leaves the index, its slot is free.
    fn forget_dense(&mut self, slot: u32) {
        let offset = self.slots.entries[slot as usize].offset;
        self.slots.index.remove(offset);
        self.slots.release(slot);
    }

    // ---- reservations -------------------------------------------------------------------

    /// Whether `[addr, addr + size)` is clear of everything this executor owns.
    pub(crate) fn is_free(&self, addr: u64, size: u64) -> bool {
        range(addr, size)
            .is_ok_and(|(s, e)| !self.reservations.any_in(s, e) && !self.slab_spans.any_in(s, e))
    }

    /// Record a reservation just made.
    pub(crate) fn add_reservation(&mut self, addr: u64, size: u64) -> Result<()> {
        let (s, e) = range(addr, size)?;
        if self.slab_spans.any_in(s, e) {
            return Err(Error::Busy(format!(
                "{addr:#x}..+{size:#x} overlaps a slab of this executor"
            )));
        }
        self.reservations
            .insert(s, e, Reservation::Free)
            .map_err(|_| {
                Error::Busy(format!(
                    "{addr:#x}..+{size:#x} overlaps a reservation of this executor"
                ))
            })
    }

    /// Forget a reservation the caller will unmap: exactly a reservation of ours (not part of
    /// one, not two), and used by no allocation.
    pub(crate) fn take_reservation(&mut self, addr: u64, size: u64) -> Result<()> {
        let (s, e) = range(addr, size)?;
        match self.reservations.get(s) {
            Some((end, Reservation::Free)) if end == e => {
                self.reservations.remove(s);
                Ok(())
            }
            Some((end, Reservation::UsedBy(a))) if end == e => Err(Error::Busy(format!(
                "the reservation {addr:#x}..+{size:#x} holds allocation {a}: deallocate it"
            ))),
            _ => Err(not_owned(
                addr,
                size,
                "exactly a reservation of this executor (a whole one, as reserve returned it)",
            )),
        }
    }

    // ---- slabs --------------------------------------------------------------------------

    /// Record a slab just made (its regions consecutive from its start). Refused (handing the
    /// payload back) if it overlaps anything recorded.
    pub(crate) fn add_slab(&mut self, info: SlabInfo, payload: S) -> Result<(), S> {
        let start = info.regions[0].0 .0;
        let Some(end) = info.regions[2].0 .0.checked_add(info.regions[2].1) else {
            return Err(payload);
        };
        if self.reservations.any_in(start, end)
            || self.slab_spans.insert(start, end, info.id.0).is_err()
        {
            return Err(payload);
        }
        if self.slots.dense_slab.is_none() && end - start <= u64::from(u32::MAX) {
            self.slots.dense_slab = Some((info.id.0, start, end));
        }
        self.slabs.insert(
            info.id.0,
            SlabRecord {
                info,
                span: (start, end),
                high_water: info.regions.map(|(a, _)| a.0),
                payload,
            },
        );
        Ok(())
    }

    /// Record only where slab `info` lies (its records are kept in a table of its own): for
    /// the table of reservations, which must not overlap slabs, and which finds the slab an
    /// address lies in ([`Table::slab_at`]). Refused if it overlaps anything recorded.
    pub(crate) fn add_slab_span(&mut self, info: SlabInfo) -> Result<()> {
        let start = info.regions[0].0 .0;
        let end = info.regions[2].0 .0.checked_add(info.regions[2].1);
        let busy = || Error::Busy(format!("slab {} overlaps memory in use", info.id.0));
        let end = end.ok_or_else(busy)?;
        if start >= end || self.reservations.any_in(start, end) {
            return Err(busy());
        }
        self.slab_spans
            .insert(start, end, info.id.0)
            .map_err(|_| busy())
    }

    /// Forget where slab `id` lay ([`Table::add_slab_span`]).
    pub(crate) fn remove_slab_span(&mut self, id: SlabId, start: u64) {
        if self.slab_spans.get(start).is_some_and(|(_, &s)| s == id.0) {
            self.slab_spans.remove(start);
        }
    }

    /// The slab whose span holds `[start, end)` (an empty range: the one holding `start`).
    pub(crate) fn slab_at(&self, start: u64, end: u64) -> Option<SlabId> {
        self.slab_spans
            .enclosing(start, end.max(start.saturating_add(1)))
            .map(|(_, _, &id)| SlabId(id))
    }

    fn slab(&self, id: SlabId) -> Result<&SlabRecord<S>> {
        // (Not `ok_or`: that builds the error, and drops it, on every success.)
        match self.slabs.get(&id.0) {
            Some(s) => Ok(s),
            None => Err(Error::UnknownSlab(id.0)),
        }
    }

    pub(crate) fn slab_payload(&self, id: SlabId) -> Result<&S> {
        self.slab(id).map(|s| &s.payload)
    }

    /// The region of slab `id` that holds all of `[start, end)` (an empty range: in a region or
    /// at its end).
    fn region(&self, id: SlabId, start: u64, end: u64) -> Result<usize> {
        self.slab(id)?.region_of(start, end)
    }

    /// The segment that overlaps `[start, end)`, which lies in region `r` of slab `id`: none
    /// when the range starts at or above the region's high-water mark (see
    /// [`SlabRecord::high_water`]), otherwise a search of the segment index.
    #[inline]
    fn segment_in_region(&self, id: SlabId, r: usize, start: u64, end: u64) -> Option<Hit> {
        let above = self
            .slabs
            .get(&id.0)
            .is_some_and(|s| start >= s.high_water[r]);
        if above {
            debug_assert!(self.any_hit(start, end).is_none());
            return None;
        }
        self.searched_hit(start, end)
    }

    /// [`Table::any_hit`] out of line: the search's frame stays off the path of a unit placed
    /// above the high-water mark.
    #[inline(never)]
    fn searched_hit(&self, start: u64, end: u64) -> Option<Hit> {
        self.any_hit(start, end)
    }

    /// Claim `[addr, addr + len)` of slab `id` for writing: inside one region, over no
    /// allocation's bytes and no other claim. An empty range is checked and not recorded.
    pub(crate) fn claim(&mut self, id: SlabId, addr: u64, len: u64) -> Result<()> {
        let (s, e) = range(addr, len)?;
        let r = self.region(id, s, e)?;
        if s == e {
            return Ok(());
        }
        if let Some(o) = self.segment_in_region(id, r, s, e) {
            return Err(Error::Busy(format!(
                "{addr:#x}..+{len:#x} overlaps allocation {} (at {:#x}): a live unit's bytes \
                 change only through patch",
                o.alloc, o.start
            )));
        }
        self.claims.insert(s, e).map_err(|()| {
            Error::Busy(format!(
                "{addr:#x}..+{len:#x} is being written by another call"
            ))
        })
    }

    /// Claim every range, or none.
    pub(crate) fn claim_all(&mut self, id: SlabId, ranges: &[(ExecutorAddr, u64)]) -> Result<()> {
        for (i, &(a, n)) in ranges.iter().enumerate() {
            if let Err(e) = self.claim(id, a.0, n) {
                for &(a, n) in &ranges[..i] {
                    self.unclaim(a.0, n);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    pub(crate) fn unclaim(&mut self, addr: u64, len: u64) {
        if len > 0 {
            self.claims.remove(addr);
        }
    }

    /// May `[addr, addr + n)` of slab `id` be patched now: inside one region, not being
    /// written by another call, not read by the runtime.
    pub(crate) fn check_patch(&self, id: SlabId, addr: u64, n: u64) -> Result<&S> {
        let (s, e) = range(addr, n)?;
        self.region(id, s, e)?;
        if self.claims.any_in(s, e) || self.dense_writing(s, e) {
            return Err(Error::Busy(format!(
                "{addr:#x} is being written by another call"
            )));
        }
        if self.registered.any_in(s, e) {
            return Err(Error::Busy(format!(
                "{addr:#x} lies in unwind info or a TLS image the runtime reads"
            )));
        }
        self.slab_payload(id)
    }

    /// `[addr, addr + len)` lies inside one region of slab `id`: which one.
    pub(crate) fn check_in_slab(&self, id: SlabId, addr: u64, len: u64) -> Result<usize> {
        let (s, e) = range(addr, len)?;
        self.region(id, s, e)
    }

    /// Claim `[addr, addr + len)` of slab `id` for writing while code may run from it
    /// (`write_live`): inside one region, over no other claim, no registered range, and no
    /// allocation that is not live (being finalized, moved or deallocated). An empty range is
    /// checked and not recorded.
    pub(crate) fn claim_live(&mut self, id: SlabId, addr: u64, len: u64) -> Result<()> {
        let (s, e) = range(addr, len)?;
        self.region(id, s, e)?;
        if s == e {
            return Ok(());
        }
        if let Some(o) = self.hits(s, e).find(|h| h.state != AllocState::Live) {
            return Err(Error::Busy(format!(
                "{addr:#x}..+{len:#x} overlaps allocation {} (at {:#x}), which is being \
                 finalized, moved or deallocated",
                o.alloc, o.start
            )));
        }
        if self.registered.any_in(s, e) {
            return Err(Error::Busy(format!(
                "{addr:#x}..+{len:#x} overlaps unwind info or a TLS image the runtime reads"
            )));
        }
        self.claims.insert(s, e).map_err(|()| {
            Error::Busy(format!(
                "{addr:#x}..+{len:#x} is being written by another call"
            ))
        })
    }

    /// May `[addr, addr + len)` be read now: inside one region of one of our slabs, or inside
    /// one segment of a live allocation (whose memory stays mapped while the table's lock is
    /// held); and claimed by no call (no writable slice over it exists). An empty range must
    /// start in such memory.
    pub(crate) fn check_read(&self, addr: u64, len: u64) -> Result<()> {
        let (s, e) = range(addr, len.max(1))?;
        let in_slab = self
            .slab_spans
            .enclosing(s, e)
            .is_some_and(|(_, _, &id)| self.region(SlabId(id), s, e).is_ok());
        let in_live_segment = || {
            self.hits(s, e)
                .any(|h| h.start <= s && e <= h.end && h.state == AllocState::Live)
        };
        if !in_slab && !in_live_segment() {
            return Err(not_owned(
                addr,
                len,
                "inside one region of a slab or one segment of a live unit of this executor",
            ));
        }
        let end = s.saturating_add(len);
        if self.claims.any_in(s, end) || self.dense_writing(s, end) {
            return Err(Error::Busy(format!(
                "{addr:#x}..+{len:#x} is being written by another call"
            )));
        }
        Ok(())
    }

    /// Forget a slab the caller will unmap: no allocation lives in it, nobody writes it.
    pub(crate) fn take_slab(&mut self, id: SlabId) -> Result<S> {
        let (s, e) = self.slab(id)?.span;
        if let Some(o) = self.any_hit(s, e) {
            return Err(Error::Busy(format!(
                "slab {} still holds allocation {} (at {:#x}): deallocate its units first",
                id.0, o.alloc, o.start
            )));
        }
        if self.claims.any_in(s, e) {
            return Err(Error::Busy(format!(
                "slab {} is being written by another call",
                id.0
            )));
        }
        self.slab_spans.remove(s);
        if self.slots.dense_slab.is_some_and(|(d, _, _)| d == id.0) {
            self.slots.dense_slab = None;
        }
        self.slabs
            .remove(&id.0)
            .map(|r| r.payload)
            .ok_or(Error::UnknownSlab(id.0))
    }

    // ---- static TLS ---------------------------------------------------------------------

    pub(crate) fn add_static_tls(&mut self, offset: i64, block_size: u64) {
        let b = self.static_tls.entry(offset).or_insert(0);
        *b = (*b).max(block_size);
    }

    /// The static TLS blocks handed out: (offset, block size).
    pub(crate) fn static_tls_blocks(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.static_tls.iter().map(|(&o, &n)| (o, n))
    }

    // ---- allocations --------------------------------------------------------------------

    /// Check that `req` (planned as `plan`) lies in memory this executor owns and nobody else
    /// uses, and mark that memory as allocation `id`'s: finalizing, or live at once.
    pub(crate) fn begin_finalize(
        &mut self,
        id: u64,
        req: &FinalizeRequest,
        plan: Plan,
        new: NewAlloc,
    ) -> Result<()> {
        if id & SLOT_ID_BIT != 0 {
            return Err(Error::InvalidRequest(format!(
                "allocation id {id:#x} is in the range the table mints"
            )));
        }
        let reservation = if req.in_slab {
            self.check_slab_segments(&plan)?;
            None
        } else {
            Some(self.check_reservation(req, &plan)?)
        };
        self.check_static_tls(plan.static_tls.as_slice())?;
        let std::collections::hash_map::Entry::Vacant(slot) = self.allocs.entry(id) else {
            return Err(Error::InvalidRequest(format!("allocation id {id} reused")));
        };
        // Checked: from here on nothing fails.
        if let Some((base, _)) = reservation {
            if let Some((_, r)) = self.reservations.get_mut(base) {
                *r = Reservation::UsedBy(id);
            }
        }
        let Plan {
            segments,
            mut registered,
            ..
        } = plan;
        // Checked disjoint from every allocation's segments above (`check_slab_segments`, or
        // a free reservation of ours holds none), and from each other by the plan; the plan's
        // segments are non-empty.
        for s in &segments {
            let owner = SegmentOwner {
                alloc: id,
                prot: s.prot,
            };
            self.segments.insert_disjoint(s.start, s.end, owner);
            if req.in_slab {
                raise_high_water(&self.slab_spans, &mut self.slabs, s.start, s.end);
            }
        }
        registered.retain(|&(s, e)| self.registered.insert(s, e, id).is_ok());
        let extras = (reservation.is_some()
            || !registered.is_empty()
            || !new.initializers.is_empty())
        .then(|| {
            Box::new(Extras {
                reservation,
                registered,
                initializers: new.initializers,
                dealloc: Vec::new(),
            })
        });
        slot.insert(AllocRecord {
            state: if new.live {
                AllocState::Live
            } else {
                AllocState::Finalizing
            },
            pins: 0,
            initialized: false,
            finalizers: new.finalizers,
            segments: Segments::of(&segments),
            extras,
        });
        Ok(())
    }

    /// Check and take the segments of a new unit in slab `slab`
    /// ([`crate::Executor::finalize_slab_unit`]; `planned` from [`Plan::slab_segments`]): each inside
    /// one region of that slab with the region's protection (empty ones too), over no
    /// allocation's bytes and no claim. Records the unit as finalizing with those segments,
    /// claimed for its writer, who holds the only writable slices of them until
    /// [`Table::slab_unit_written`] or [`Table::abort_slab_unit`], and returns its new id. One
    /// search per segment (none above the high-water mark): the claim and the allocation are
    /// the same check. A unit of one segment in the dense slab is a dense unit: one slot, its
    /// state its claim. Nothing changes on an error.
    pub(crate) fn begin_slab_unit(
        &mut self,
        slab: SlabId,
        segments: &[crate::SlabSegment],
        planned: &[PlannedSegment],
    ) -> Result<u64> {
        let rec = self.slab(slab)?;
        for seg in segments {
            let (s, e) = range(seg.addr.0, seg.size)?;
            let r = rec.region_of(s, e)?;
            if s == e {
                continue;
            }
            self.check_slab_segment(slab, r, s, e, seg.prot, rec.high_water[r])?;
        }
        let dense = match planned {
            [one] => self
                .slots
                .dense_place(slab, one.start, one.end)
                .map(|place| (place, one.prot)),
            _ => None,
        };
        let region = |prot: MemProt| REGION_PROTS.iter().position(|&p| p == prot).unwrap_or(0);
        let entry = match dense {
            Some(((offset, len), prot)) => UnitSlot {
                offset,
                len,
                pins: 0,
                gen: 0,
                state: SlotState::Writing,
                flags: (region(prot) as u8) << REGION_SHIFT,
            },
            None => UnitSlot {
                offset: 0,
                len: 0,
                pins: 0,
                gen: 0,
                state: SlotState::Full,
                flags: 0,
            },
        };
        let (slot, id) = self.slots.take(entry)?;
        // Checked: from here on nothing fails. The plan's segments are non-empty and pairwise
        // disjoint, and disjoint from every allocation's segments and every claim (above).
        if let Some(rec) = self.slabs.get_mut(&slab.0) {
            for seg in planned {
                rec.raise_high_water(seg.start, seg.end);
            }
        }
        if dense.is_some() {
            self.slots.index.insert(entry.offset, slot);
            return Ok(id);
        }
        for seg in planned {
            let _ = self.claims.insert(seg.start, seg.end);
            let owner = SegmentOwner {
                alloc: id,
                prot: seg.prot,
            };
            self.segments.insert_disjoint(seg.start, seg.end, owner);
        }
        self.allocs.insert(
            id,
            AllocRecord {
                state: AllocState::Finalizing,
                pins: 0,
                initialized: false,
                finalizers: false,
                segments: Segments::of(planned),
                extras: None,
            },
        );
        Ok(id)
    }

    /// [`Table::begin_slab_unit`] for a unit of one segment (a JIT's function): the same checks
    /// and the same record, with the slab looked up once and only the segment's own region's
    /// high-water mark raised when it is a dense unit; otherwise the general path. Returns the
    /// unit's id and the slab's payload (its writable view, in process). (Inlined into the
    /// executor's one caller: its result is not written out and read back.)
    #[inline]
    pub(crate) fn begin_one_segment_unit(
        &mut self,
        slab: SlabId,
        seg: &crate::SlabSegment,
    ) -> Result<(u64, &S)> {
        let (s, e) = range(seg.addr.0, seg.size)?;
        let dense = self.slots.dense_place(slab, s, e).filter(|_| s < e);
        let (Some((offset, len)), Ok(i)) = (dense, self.slabs.position(slab.0)) else {
            return self.begin_one_segment_unit_generally(slab, seg);
        };
        let rec = &self.slabs.0[i];
        let r = rec.region_of(s, e)?;
        self.check_slab_segment(slab, r, s, e, seg.prot, rec.high_water[r])?;
        // (The check made `r` the region of the segment's protection: the flags the general
        // path computes from it.)
        let entry = UnitSlot {
            offset,
            len,
            pins: 0,
            gen: 0,
            state: SlotState::Writing,
            flags: (r as u8) << REGION_SHIFT,
        };
        let (slot, id) = self.slots.take(entry)?;
        // Checked: from here on nothing fails. Regions are disjoint: only `r` holds the segment.
        let mark = &mut self.slabs.0[i].high_water[r];
        *mark = (*mark).max(e);
        self.slots.index.insert(offset, slot);
        Ok((id, &self.slabs.0[i].payload))
    }

    /// [`Table::begin_one_segment_unit`] for a unit that is not dense (or a slab that is not
    /// the table's), out of line.
    #[cold]
    #[inline(never)]
    fn begin_one_segment_unit_generally(
        &mut self,
        slab: SlabId,
        seg: &crate::SlabSegment,
    ) -> Result<(u64, &S)> {
        let segments = std::slice::from_ref(seg);
        let planned = Plan::slab_segments(segments)?;
        let id = self.begin_slab_unit(slab, segments, &planned)?;
        // (Found: `begin_slab_unit` looked the slab up.)
        Ok((id, self.slab_payload(slab)?))
    }

    /// The bytes of new slab unit `id` ([`Table::begin_slab_unit`]) are written and its
    /// actions planned (`plan`): its claims end, its registered ranges are recorded, and it is
    /// live with `new`'s initializers and finalizers, or (`!new.live`: it has actions to run)
    /// stays finalizing until [`Table::finish_finalize`]. Refused, changing nothing, when its
    /// static TLS blocks are not this executor's or `id` is not such a unit. Takes the plan's
    /// registered ranges (the plan by reference: it is not copied on the way in). A dense unit
    /// that has more to keep than a slot holds gets its full record here.
    pub(crate) fn slab_unit_written(
        &mut self,
        id: u64,
        plan: &mut Plan,
        new: NewAlloc,
    ) -> Result<()> {
        if !plan.static_tls.is_empty() {
            self.check_static_tls(&plan.static_tls)?;
        }
        if let Some(slot) = self.dense(id) {
            let u = &mut self.slots.entries[slot as usize];
            if u.state != SlotState::Writing {
                return Err(Error::UnknownAllocation(id));
            }
            if new.live && plan.registered.is_empty() && new.initializers.is_empty() {
                u.state = SlotState::Live;
                if new.finalizers {
                    u.flags |= FINALIZERS;
                }
                return Ok(());
            }
            self.promote(slot);
        }
        let a = match self.allocs.get_mut(&id) {
            Some(a) if a.state == AllocState::Finalizing && a.reservation().is_none() => a,
            _ => return Err(Error::UnknownAllocation(id)),
        };
        for g in a.segments.iter() {
            // (A promoted dense unit has no claims: no other claim starts in its bytes.)
            self.claims.remove(g.start);
        }
        let mut registered = std::mem::take(&mut plan.registered);
        // (Cannot fail: inside the allocation's own segments, pairwise disjoint.)
        registered.retain(|&(s, e)| self.registered.insert(s, e, id).is_ok());
        if !registered.is_empty() || !new.initializers.is_empty() {
            a.extras = Some(Box::new(Extras {
                reservation: None,
                registered,
                initializers: new.initializers,
                dealloc: Vec::new(),
            }));
        }
        a.finalizers = new.finalizers;
        if new.live {
            a.state = AllocState::Live;
        }
        Ok(())
    }

    /// [`Table::slab_unit_written`] for a unit with no actions, initializers or deinitializers
    /// (a JIT's typical unit): live at once, with nothing more to record. (Inlined into its one
    /// caller, as `begin_one_segment_unit`.)
    #[inline]
    pub(crate) fn slab_unit_live(&mut self, id: u64) -> Result<()> {
        match self.dense_mut(id) {
            Some(u) if u.state == SlotState::Writing => {
                u.state = SlotState::Live;
                Ok(())
            }
            _ => self.slab_unit_live_generally(id),
        }
    }

    /// [`Table::slab_unit_live`] for a unit that is not a writing dense unit: a full record, or
    /// refused. (Out of line: its empty plan, built inline, made the frame of its caller
    /// (`make_live`) larger, 5 instructions a unit in the bench's non-LTO build.)
    #[cold]
    #[inline(never)]
    fn slab_unit_live_generally(&mut self, id: u64) -> Result<()> {
        let new = NewAlloc {
            initializers: Vec::new(),
            finalizers: false,
            live: true,
        };
        self.slab_unit_written(id, &mut Plan::default(), new)
    }

    /// New slab unit `id` does not go live (its writer gave up, its actions were refused or
    /// failed): its claims (while `claimed`) and its segments go, its memory is free again.
    pub(crate) fn abort_slab_unit(&mut self, id: u64, claimed: bool) {
        if claimed {
            if let Some(a) = self.allocs.get(&id) {
                for g in a.segments.iter() {
                    self.claims.remove(g.start);
                }
            }
        }
        self.forget(id, true);
    }

    /// Every static TLS block a plan's TLS registration uses was handed out by this executor,
    /// big enough.
    pub(crate) fn check_static_tls(&self, blocks: &[(i64, u64)]) -> Result<()> {
        for &(off, size) in blocks {
            if self.static_tls.get(&off).is_none_or(|&have| have < size) {
                return Err(Error::InvalidRequest(format!(
                    "static TLS offset {off:#x} with {size:#x} bytes was not allocated by this \
                     executor"
                )));
            }
        }
        Ok(())
    }

    /// The reservation a non-slab request names: exactly one of ours, free, holding every
    /// segment's pages.
    fn check_reservation(&self, req: &FinalizeRequest, plan: &Plan) -> Result<(u64, u64)> {
        let (base, size) = (req.reservation.0 .0, req.reservation.1);
        let (s, e) = range(base, size)?;
        match self.reservations.get(s) {
            Some((end, Reservation::Free)) if end == e => {}
            Some((end, Reservation::UsedBy(a))) if end == e => {
                return Err(Error::Busy(format!(
                    "the reservation {base:#x}..+{size:#x} already holds allocation {a}"
                )))
            }
            _ => {
                return Err(not_owned(
                    base,
                    size,
                    "exactly a reservation of this executor",
                ))
            }
        }
        for seg in &plan.segments {
            if seg.start < s || seg.mapped_end > e {
                return Err(not_owned(
                    seg.start,
                    seg.end - seg.start,
                    "inside the request's reservation",
                ));
            }
        }
        Ok((base, size))
    }

    /// `[s, e)`, in region `r` of `slab`, may become a segment of protection `prot`: the region
    /// has that protection, and no allocation's segment and no range being written overlaps it.
    /// (`high_water`: the region's mark, [`SlabRecord::high_water`]; at or below it the
    /// segment index is searched.)
    #[inline]
    fn check_slab_segment(
        &self,
        slab: SlabId,
        r: usize,
        s: u64,
        e: u64,
        prot: MemProt,
        high_water: u64,
    ) -> Result<()> {
        // The usual case, inline: the region's protection, above the mark (nothing to search),
        // no claim there. Whatever fails is worked out, with its error, out of line.
        if REGION_PROTS[r] == prot && s >= high_water && !self.claims.any_in(s, e) {
            debug_assert!(self.any_hit(s, e).is_none());
            return Ok(());
        }
        self.check_slab_segment_generally(slab, r, s, e, prot, high_water)
    }

    /// [`Table::check_slab_segment`] for a segment below its region's mark, or refused.
    #[cold]
    #[inline(never)]
    fn check_slab_segment_generally(
        &self,
        slab: SlabId,
        r: usize,
        s: u64,
        e: u64,
        prot: MemProt,
        high_water: u64,
    ) -> Result<()> {
        if REGION_PROTS[r] != prot {
            return Err(Error::InvalidRequest(format!(
                "segment {s:#x}..{e:#x} is {} but lies in the {} region of slab {}",
                prot.as_str(),
                REGION_PROTS[r].as_str(),
                slab.0
            )));
        }
        let hit = if s >= high_water {
            debug_assert!(self.any_hit(s, e).is_none());
            None
        } else {
            self.searched_hit(s, e)
        };
        if let Some(o) = hit {
            return Err(Error::Busy(format!(
                "segment {s:#x}..{e:#x} overlaps allocation {}",
                o.alloc
            )));
        }
        if self.claims.any_in(s, e) {
            return Err(Error::Busy(format!(
                "segment {s:#x}..{e:#x} is being written by another call"
            )));
        }
        Ok(())
    }

    /// Every segment of a slab request: inside one region of one of our slabs, with that
    /// region's protection, over no other allocation and no range being written.
    fn check_slab_segments(&self, plan: &Plan) -> Result<()> {
        for seg in &plan.segments {
            let (s, e) = (seg.start, seg.end);
            let slab = self
                .slab_spans
                .enclosing(s, e)
                .map(|(_, _, &id)| SlabId(id))
                .ok_or_else(|| not_owned(s, e - s, "inside a slab of this executor"))?;
            let rec = self.slab(slab)?;
            let r = rec.region_of(s, e)?;
            self.check_slab_segment(slab, r, s, e, seg.prot, rec.high_water[r])?;
        }
        Ok(())
    }

    /// Finalize failed: the memory is free again (a reservation goes back to free).
    pub(crate) fn abort_finalize(&mut self, id: u64) {
        self.forget(id, true);
    }

    /// The allocation is live, with what runs when it goes.
    pub(crate) fn finish_finalize(&mut self, id: u64, dealloc: Vec<Action>) {
        if let Some(a) = self.allocs.get_mut(&id) {
            a.state = AllocState::Live;
            if !dealloc.is_empty() {
                a.extras.get_or_insert_with(Box::default).dealloc = dealloc;
            }
        }
    }

    fn live_mut(&mut self, id: u64) -> Result<&mut AllocRecord> {
        match self.allocs.get_mut(&id) {
            Some(a) if a.state == AllocState::Live => Ok(a),
            _ => Err(Error::UnknownAllocation(id)),
        }
    }

    /// Mark a live, idle allocation dying and hand over what deallocating it needs.
    pub(crate) fn begin_dealloc(&mut self, id: u64) -> Result<Dying> {
        if let Some(u) = self.dense_mut(id) {
            if u.state != SlotState::Live {
                return Err(Error::UnknownAllocation(id));
            }
            if u.pins > 0 {
                return Err(Error::Busy(format!(
                    "allocation {id} has code running (run_main, call_void or its initializers)"
                )));
            }
            u.state = SlotState::Dying;
            return Ok(Dying {
                dealloc: Vec::new(),
                reservation: None,
                finalizers: u.flags & FINALIZERS != 0,
            });
        }
        let a = self.live_mut(id)?;
        if a.pins > 0 {
            return Err(Error::Busy(format!(
                "allocation {id} has code running (run_main, call_void or its initializers)"
            )));
        }
        a.state = AllocState::Dying;
        Ok(Dying {
            dealloc: a
                .extras
                .as_mut()
                .map(|x| std::mem::take(&mut x.dealloc))
                .unwrap_or_default(),
            reservation: a.reservation(),
            finalizers: a.finalizers,
        })
    }

    /// Deallocation cannot go on (the process is exiting): the allocation stays live.
    pub(crate) fn cancel_dealloc(&mut self, id: u64, dying: Dying) {
        if let Some(u) = self.dense_mut(id) {
            if u.state == SlotState::Dying {
                u.state = SlotState::Live;
            }
            return;
        }
        if let Some(a) = self.allocs.get_mut(&id) {
            a.state = AllocState::Live;
            if let Some(x) = a.extras.as_mut() {
                x.dealloc = dying.dealloc;
            }
        }
    }

    /// The allocation is gone: its segments and its reservation leave the table (the caller
    /// unmaps the reservation next; until then nobody can name it).
    pub(crate) fn finish_dealloc(&mut self, id: u64) {
        self.forget(id, false);
    }

    fn forget(&mut self, id: u64, keep_reservation: bool) {
        let slot = self.slots.slot_of(id);
        if let Some(slot) = slot {
            if self.slots.entries[slot as usize].state != SlotState::Full {
                return self.forget_dense(slot);
            }
        }
        let Some(a) = self.allocs.remove(&id) else {
            return;
        };
        if let Some(slot) = slot {
            self.slots.release(slot);
        }
        for s in a.segments.iter() {
            self.segments.remove(s.start);
        }
        for &(s, _) in a.extras.iter().flat_map(|x| &x.registered) {
            self.registered.remove(s);
        }
        if let Some((base, _)) = a.reservation() {
            if keep_reservation {
                if let Some((_, r)) = self.reservations.get_mut(base) {
                    *r = Reservation::Free;
                }
            } else {
                self.reservations.remove(base);
            }
        }
    }

    /// Pin a live allocation whose initializers are to run, and take them, with whether it
    /// has finalizers in the exit registry (`None`: they ran or are running already; nothing is
    /// pinned then).
    pub(crate) fn start_initializers(
        &mut self,
        id: u64,
    ) -> Result<Option<(Vec<ExecutorAddr>, bool)>> {
        if let Some(u) = self.dense_mut(id) {
            if u.state != SlotState::Live {
                return Err(Error::UnknownAllocation(id));
            }
            if u.flags & INITIALIZED != 0 {
                return Ok(None);
            }
            let pins = u.pins.checked_add(1).ok_or_else(|| too_many_pins(id))?;
            u.flags |= INITIALIZED;
            u.pins = pins;
            return Ok(Some((Vec::new(), u.flags & FINALIZERS != 0)));
        }
        let a = self.live_mut(id)?;
        if a.initialized {
            return Ok(None);
        }
        a.initialized = true;
        a.pins += 1;
        let inits = a
            .extras
            .as_mut()
            .map(|x| std::mem::take(&mut x.initializers))
            .unwrap_or_default();
        Ok(Some((inits, a.finalizers)))
    }

    /// Pin the live allocation whose executable segment holds `addr`; returns its id.
    pub(crate) fn pin_code(&mut self, addr: ExecutorAddr) -> Result<u64> {
        let owner = match addr.0.checked_add(1).and_then(|e| self.any_hit(addr.0, e)) {
            Some(o) if o.prot == MemProt::ReadExec && o.state == AllocState::Live => o,
            _ => return Err(Error::NotCode(addr)),
        };
        let pins = match self.dense_mut(owner.alloc) {
            Some(u) => &mut u.pins,
            None => {
                &mut self
                    .live_mut(owner.alloc)
                    .map_err(|_| Error::NotCode(addr))?
                    .pins
            }
        };
        *pins = pins
            .checked_add(1)
            .ok_or_else(|| too_many_pins(owner.alloc))?;
        Ok(owner.alloc)
    }

    pub(crate) fn unpin(&mut self, id: u64) {
        if let Some(u) = self.dense_mut(id) {
            u.pins = u.pins.saturating_sub(1);
        } else if let Some(a) = self.allocs.get_mut(&id) {
            a.pins = a.pins.saturating_sub(1);
        }
    }

    // ---- moving -------------------------------------------------------------------------

    /// Check a move of allocation `id`'s segments (see [`crate::Executor::move_allocation`]):
    /// a live, idle allocation in slabs, nobody writing any of its bytes; each move names
    /// exactly one of its segments, at most once, and a destination in the same region of the
    /// same slab that overlaps no other segment (of any allocation, this one's included, except
    /// its own old range), no claim and no other destination. Changes nothing.
    pub(crate) fn plan_move(&self, id: u64, moves: &[crate::SegmentMove]) -> Result<MovePlan> {
        let dense;
        let (pins, old_segments): (u32, &[PlannedSegment]) = if let Some(slot) = self.dense(id) {
            let u = &self.slots.entries[slot as usize];
            let base = self.slots.dense_slab.map_or(0, |(_, base, _)| base);
            if u.state != SlotState::Live {
                return Err(Error::UnknownAllocation(id));
            }
            dense = PlannedSegment {
                start: base + u64::from(u.offset),
                end: base + u64::from(u.end()),
                mapped_end: base + u64::from(u.end()),
                prot: u.prot(),
            };
            (u.pins, std::slice::from_ref(&dense))
        } else {
            let a = match self.allocs.get(&id) {
                Some(a) if a.state == AllocState::Live => a,
                _ => return Err(Error::UnknownAllocation(id)),
            };
            if a.reservation().is_some() {
                return Err(Error::InvalidRequest(format!(
                    "allocation {id} has a reservation of its own: only units in slabs move"
                )));
            }
            (a.pins, &a.segments)
        };
        if pins > 0 {
            return Err(Error::Busy(format!(
                "allocation {id} has code running (run_main, call_void, call or its \
                 initializers)"
            )));
        }
        if let Some(seg) = old_segments
            .iter()
            .find(|g| self.claims.any_in(g.start, g.end))
        {
            return Err(Error::Busy(format!(
                "allocation {id} is being written at {:#x}..{:#x} by another call",
                seg.start, seg.end
            )));
        }
        let mut segments = old_segments.to_vec();
        let mut plan = Vec::with_capacity(moves.len());
        for m in moves {
            let i = old_segments
                .binary_search_by_key(&m.from.0, |g| g.start)
                .ok()
                .filter(|&i| old_segments[i].end - old_segments[i].start == m.len)
                .ok_or_else(|| {
                    not_owned(m.from.0, m.len, "exactly one segment of that allocation")
                })?;
            if plan.iter().any(|&(_, from, _, _)| from == m.from.0) {
                return Err(Error::InvalidRequest(format!(
                    "the segment at {} is moved twice",
                    m.from
                )));
            }
            let old = old_segments[i];
            let slab = self
                .slab_spans
                .enclosing(old.start, old.end)
                .map(|(_, _, &s)| SlabId(s))
                .ok_or(Error::UnknownAllocation(id))?;
            let (to, to_end) = range(m.to.0, m.len)?;
            let same_region = self.region(slab, old.start, old.end).ok();
            if same_region.is_none() || self.region(slab, to, to_end).ok() != same_region {
                return Err(not_owned(
                    to,
                    m.len,
                    "inside the region of the slab that holds the segment it moves",
                ));
            }
            for o in self.hits(to, to_end) {
                if o.alloc != id || o.start != old.start {
                    return Err(Error::Busy(format!(
                        "the destination {to:#x}..{to_end:#x} overlaps allocation {} (at \
                         {:#x})",
                        o.alloc, o.start
                    )));
                }
            }
            if self.claims.any_in(to, to_end) {
                return Err(Error::Busy(format!(
                    "the destination {to:#x}..{to_end:#x} is being written by another call"
                )));
            }
            segments[i].start = to;
            segments[i].end = to_end;
            segments[i].mapped_end = to_end;
            plan.push((slab, old.start, to, m.len));
        }
        let mut dests: Vec<(u64, u64)> = plan.iter().map(|&(_, _, t, n)| (t, t + n)).collect();
        dests.sort_unstable();
        if let Some(w) = dests.windows(2).find(|w| w[0].1 > w[1].0) {
            return Err(Error::InvalidRequest(format!(
                "the destinations at {:#x} and {:#x} overlap",
                w[0].0, w[1].0
            )));
        }
        segments.sort_unstable_by_key(|g| g.start);
        Ok(MovePlan {
            segments,
            moves: plan,
        })
    }

    /// Start a move [`Table::plan_move`] accepted (under the same lock): the allocation is
    /// moving, its destinations are claimed, and its dealloc actions that undo registrations are
    /// handed over to run now (the others stay).
    pub(crate) fn begin_move(&mut self, id: u64, plan: &MovePlan) -> Vec<Action> {
        for &(_, _, to, len) in &plan.moves {
            // Cannot fail: checked free of claims and of each other by `plan_move`.
            let _ = self.claims.insert(to, to + len);
        }
        if let Some(u) = self.dense_mut(id) {
            // Nothing registered: nothing to undo.
            u.state = SlotState::Moving;
            return Vec::new();
        }
        let Some(a) = self.allocs.get_mut(&id) else {
            return Vec::new();
        };
        a.state = AllocState::Moving;
        let Some(x) = a.extras.as_mut() else {
            return Vec::new();
        };
        let (undo, keep) = std::mem::take(&mut x.dealloc)
            .into_iter()
            .partition(undoes_registration);
        x.dealloc = keep;
        undo
    }

    /// The bytes have been copied: the segments are at their new addresses and the old ranges
    /// free, the destinations no longer claimed; what the allocation keeps naming its bytes
    /// (dealloc actions, initializers not yet run) follows them; its registrations are gone.
    pub(crate) fn relocate(&mut self, id: u64, plan: &MovePlan) {
        for &(_, _, to, len) in &plan.moves {
            self.unclaim(to, len);
        }
        if let Some(slot) = self.dense(id) {
            return self.relocate_dense(slot, plan);
        }
        let Some(a) = self.allocs.get_mut(&id) else {
            return;
        };
        for &(_, from, _, _) in &plan.moves {
            self.segments.remove(from);
        }
        for g in &plan.segments {
            if plan.moves.iter().any(|&(_, _, to, _)| to == g.start) {
                let owner = SegmentOwner {
                    alloc: id,
                    prot: g.prot,
                };
                // Cannot fail: checked free by `plan_move`, and the old ranges are gone.
                let _ = self.segments.insert(g.start, g.end, owner);
                raise_high_water(&self.slab_spans, &mut self.slabs, g.start, g.end);
            }
        }
        a.segments = plan.segments.clone().into();
        if let Some(x) = a.extras.as_mut() {
            for (s, _) in std::mem::take(&mut x.registered) {
                self.registered.remove(s);
            }
            for d in &mut x.dealloc {
                *d = plan.translate_action(d);
            }
            for f in &mut x.initializers {
                *f = ExecutorAddr(plan.translate(f.0));
            }
        }
    }

    /// [`Table::relocate`] for dense unit `slot`: its one segment at its new place (in the
    /// dense slab: `plan_move` kept it in its region).
    fn relocate_dense(&mut self, slot: u32, plan: &MovePlan) {
        let (Some((_, base, _)), [new]) = (self.slots.dense_slab, plan.segments.as_slice()) else {
            return;
        };
        if plan.moves.is_empty() {
            return;
        }
        let u = &mut self.slots.entries[slot as usize];
        let old = u.offset;
        u.offset = (new.start - base) as u32;
        let offset = u.offset;
        self.slots.index.remove(old);
        // Checked free by `plan_move`, and the old range is gone.
        self.slots.index.insert(offset, slot);
        raise_high_water(&self.slab_spans, &mut self.slabs, new.start, new.end);
    }

    /// The move is over: the allocation is live with its new registrations (`registered`,
    /// from the plan of its new actions) and their dealloc halves after the actions it kept.
    pub(crate) fn finish_move(
        &mut self,
        id: u64,
        mut registered: Vec<(u64, u64)>,
        dealloc: Vec<Action>,
    ) {
        if let Some(slot) = self.dense(id) {
            if registered.is_empty() && dealloc.is_empty() {
                self.slots.entries[slot as usize].state = SlotState::Live;
                return;
            }
            self.promote(slot);
        }
        let Some(a) = self.allocs.get_mut(&id) else {
            return;
        };
        a.state = AllocState::Live;
        // (Cannot fail: inside the allocation's own segments, pairwise disjoint.)
        registered.retain(|&(s, e)| self.registered.insert(s, e, id).is_ok());
        if registered.is_empty() && dealloc.is_empty() {
            return;
        }
        let x = a.extras.get_or_insert_with(Box::default);
        x.registered = registered;
        x.dealloc.extend(dealloc);
    }

    // ---- the end ------------------------------------------------------------------------

    /// Everything the table holds, for an executor that goes away: reservations no allocation
    /// uses (to unmap), and the slabs split into those nothing lives or is written in (to
    /// unmap) and the others (to leak: live code may still run from them, and exit handlers
    /// will).
    pub(crate) fn drain(&mut self) -> Drained<S> {
        let free_reservations = self
            .reservations
            .iter()
            .filter(|(_, _, r)| **r == Reservation::Free)
            .map(|(s, e, _)| (s, e - s))
            .collect();
        let mut empty_slabs = Vec::new();
        let mut occupied_slabs = Vec::new();
        for rec in std::mem::take(&mut self.slabs.0) {
            let (s, e) = rec.span;
            if self.any_hit(s, e).is_some() || self.claims.any_in(s, e) {
                occupied_slabs.push(rec.payload);
            } else {
                empty_slabs.push(rec.payload);
            }
        }
        self.reservations = RangeMap::default();
        self.slab_spans = RangeMap::default();
        Drained {
            free_reservations,
            empty_slabs,
            occupied_slabs,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.reservations.is_empty()
            && self.slabs.0.is_empty()
            && self.allocs.is_empty()
            && self.slots.index.is_empty()
            && self
                .slots
                .entries
                .iter()
                .all(|u| u.state == SlotState::Free)
            && self.segments.is_empty()
            && self.claims.is_empty()
            && self.registered.is_empty()
    }
}

pub(crate) struct Drained<S> {
    pub(crate) free_reservations: Vec<(u64, u64)>,
    pub(crate) empty_slabs: Vec<S>,
    pub(crate) occupied_slabs: Vec<S>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Segment;

    const PAGE: u64 = 0x1000;

    fn seg(addr: u64, prot: MemProt, size: u64) -> Segment {
        Segment {
            addr: ExecutorAddr(addr),
            prot,
            content: Vec::new(),
            zero_fill: size,
        }
    }

    /// The low bits of a hash pick its bucket: minted ids of the first generation (slot above
    /// 15 zero bits), counter ids and ids of several tables must all spread over them.
    #[test]
    fn id_hashes_spread_over_buckets() {
        use std::hash::Hasher;
        let bucket = |id: u64| {
            let mut h = IdHasher::default();
            h.write_u64(id);
            h.finish() & 1023
        };
        let minted = |tag: u64, slot: u64| tag << ID_TAG_SHIFT | SLOT_ID_BIT | slot << GEN_BITS;
        let families: [&dyn Fn(u64) -> u64; 3] =
            [&|i| minted(1, i), &|i| minted(5, i) + 1, &|i| i + 1];
        for ids in families {
            let buckets: std::collections::HashSet<u64> =
                (0..1024).map(|i| bucket(ids(i))).collect();
            // A uniform hash fills about 63% of 1,024 buckets with 1,024 keys.
            assert!(
                buckets.len() > 500,
                "{} of 1024 buckets used",
                buckets.len()
            );
        }
    }

    fn finalize(t: &mut Table<()>, id: u64, req: &FinalizeRequest) -> Result<()> {
        let plan = Plan::of(req, PAGE)?;
        let new = NewAlloc {
            initializers: Vec::new(),
            finalizers: false,
            live: true,
        };
        t.begin_finalize(id, req, plan, new)?;
        Ok(())
    }

    fn in_reservation(base: u64, size: u64) -> FinalizeRequest {
        FinalizeRequest {
            reservation: (ExecutorAddr(base), size),
            segments: vec![seg(base, MemProt::ReadExec, 0x10)],
            ..Default::default()
        }
    }

    #[test]
    fn reservations_are_released_whole_and_only_when_free() {
        let mut t = Table::<()>::default();
        t.add_reservation(0x10000, 0x4000).unwrap();
        t.add_reservation(0x14000, 0x4000).unwrap();
        assert!(t.add_reservation(0x13000, 0x2000).is_err(), "overlaps");
        for (a, n) in [
            (0x10000, 0x8000), // straddles both
            (0x10000, 0x1000), // part of one
            (0x11000, 0x3000), // tail of one
            (0x10000, u64::MAX),
            (u64::MAX, 2),
            (0, 0),
        ] {
            assert!(t.take_reservation(a, n).is_err(), "{a:#x}+{n:#x}");
        }
        finalize(&mut t, 1, &in_reservation(0x10000, 0x4000)).unwrap();
        assert!(matches!(
            t.take_reservation(0x10000, 0x4000),
            Err(Error::Busy(_))
        ));
        assert!(
            finalize(&mut t, 2, &in_reservation(0x10000, 0x4000)).is_err(),
            "used twice"
        );
        let mut outside = in_reservation(0x14000, 0x4000);
        outside.segments[0].addr = ExecutorAddr(0x10000);
        assert!(finalize(&mut t, 3, &outside).is_err(), "segment elsewhere");
        t.take_reservation(0x14000, 0x4000).unwrap();
        assert!(t.take_reservation(0x14000, 0x4000).is_err(), "twice");
        t.begin_dealloc(1).unwrap();
        t.finish_dealloc(1);
        assert!(t.begin_dealloc(1).is_err(), "double free");
        assert!(t.is_empty(), "the deallocation took its reservation along");
    }

    fn slab(t: &mut Table<()>) -> SlabId {
        let id = SlabId(0);
        let info = SlabInfo {
            id,
            regions: [
                (ExecutorAddr(0x100000), 0x1000),
                (ExecutorAddr(0x101000), 0x1000),
                (ExecutorAddr(0x102000), 0x1000),
            ],
        };
        t.add_slab(info, ()).map_err(drop).unwrap();
        id
    }

    fn in_slab(addr: u64, prot: MemProt, size: u64) -> FinalizeRequest {
        FinalizeRequest {
            segments: vec![seg(addr, prot, size)],
            in_slab: true,
            ..Default::default()
        }
    }

    #[test]
    fn slab_claims_and_units_never_overlap() {
        let mut t = Table::<()>::default();
        let s = slab(&mut t);
        t.claim(s, 0x100000, 0x100).unwrap();
        assert!(t.claim(s, 0x1000f0, 0x20).is_err(), "overlapping claim");
        assert!(
            t.claim(s, 0x100f00, 0x200).is_err(),
            "straddles two regions"
        );
        assert!(t.claim(s, 0x200000, 0x10).is_err(), "outside the slab");
        assert!(t.claim(s, u64::MAX, 2).is_err(), "wraps");
        assert!(t.claim(SlabId(7), 0x100200, 0x10).is_err(), "unknown slab");
        assert!(
            finalize(&mut t, 1, &in_slab(0x100080, MemProt::ReadExec, 0x10)).is_err(),
            "over a claim"
        );
        t.unclaim(0x100000, 0x100);
        finalize(&mut t, 1, &in_slab(0x100080, MemProt::ReadExec, 0x10)).unwrap();
        assert!(t.claim(s, 0x100000, 0x100).is_err(), "over a live unit");
        assert!(
            finalize(&mut t, 2, &in_slab(0x101000, MemProt::ReadExec, 0x10)).is_err(),
            "wrong region's protection"
        );
        assert!(t.take_slab(s).is_err(), "a live unit is in it");
        let id = t.pin_code(ExecutorAddr(0x100085)).unwrap();
        assert!(t.begin_dealloc(id).is_err(), "running");
        t.unpin(id);
        assert!(t.pin_code(ExecutorAddr(0x100090)).is_err(), "past its code");
        t.begin_dealloc(id).unwrap();
        assert!(t.pin_code(ExecutorAddr(0x100085)).is_err(), "dying");
        t.finish_dealloc(id);
        t.take_slab(s).unwrap();
        assert!(t.take_slab(s).is_err(), "released twice");
        assert!(t.is_empty());
    }

    fn slab_unit(t: &mut Table<()>, s: SlabId, addr: u64, len: u64) -> Result<u64> {
        let segments = [crate::SlabSegment {
            addr: ExecutorAddr(addr),
            size: len,
            prot: MemProt::ReadExec,
        }];
        let planned = Plan::slab_segments(&segments)?;
        let id = t.begin_slab_unit(s, &segments, &planned)?;
        let new = NewAlloc {
            initializers: Vec::new(),
            finalizers: false,
            live: true,
        };
        t.slab_unit_written(id, &mut Plan::default(), new)?;
        Ok(id)
    }

    /// `slab_unit_live` (its dense unit inline, the rest out of line) answers as
    /// `slab_unit_written` with nothing to record: a writing dense unit and a full record of
    /// two segments go live; the same ids again, another generation's and an unknown id are
    /// refused with the same error.
    #[test]
    fn slab_units_go_live_as_written_with_nothing_to_record() {
        let (mut fast, mut general) = (Table::<()>::default(), Table::<()>::default());
        let s = slab(&mut fast);
        slab(&mut general);
        let seg = |addr, size, prot| crate::SlabSegment {
            addr: ExecutorAddr(addr),
            size,
            prot,
        };
        let dense = [seg(0x100100, 0x40, MemProt::ReadExec)];
        let full = [
            seg(0x100200, 0x20, MemProt::ReadExec),
            seg(0x101000, 0x10, MemProt::Read),
        ];
        let mut ids = Vec::new();
        for segments in [&dense[..], &full[..]] {
            let planned = Plan::slab_segments(segments).unwrap();
            let a = fast.begin_slab_unit(s, segments, &planned).unwrap();
            let b = general.begin_slab_unit(s, segments, &planned).unwrap();
            assert_eq!(a, b);
            ids.push(a);
        }
        assert!(fast.dense(ids[0]).is_some() && fast.dense(ids[1]).is_none());
        let (d, f) = (ids[0], ids[1]);
        for (i, id) in [d, f, d, f, d ^ 1, d + (1 << GEN_BITS), 12345]
            .into_iter()
            .enumerate()
        {
            let a = fast.slab_unit_live(id).map_err(|e| e.to_string());
            let new = NewAlloc {
                initializers: Vec::new(),
                finalizers: false,
                live: true,
            };
            let b = general
                .slab_unit_written(id, &mut Plan::default(), new)
                .map_err(|e| e.to_string());
            assert_eq!(a, b, "request {i}");
            assert_eq!(a.is_ok(), i < 2, "request {i}");
        }
        for id in [d, f] {
            for t in [&mut fast, &mut general] {
                t.begin_dealloc(id).unwrap();
                t.finish_dealloc(id);
            }
        }
        for t in [&mut fast, &mut general] {
            t.take_slab(s).unwrap();
            assert!(t.is_empty());
        }
    }

    /// A unit of one segment gets from `begin_one_segment_unit` what `begin_slab_unit` gives
    /// it: the same id or the same error, request after request (dense and not, fresh, over
    /// units and claims, in the wrong region, across regions, empty, wrapping, in an unknown
    /// slab, below the high-water mark after a removal), and the tables end up alike.
    #[test]
    fn one_segment_units_are_begun_as_any_unit() {
        let (mut fast, mut general) = (Table::<()>::default(), Table::<()>::default());
        let s = slab(&mut fast);
        slab(&mut general);
        let requests = [
            (s, 0x100100, 0x40, MemProt::ReadExec),
            (s, 0x100120, 0x40, MemProt::ReadExec),
            (s, 0x101000, 0x20, MemProt::ReadExec),
            (s, 0x101000, 0x20, MemProt::Read),
            (s, 0x102010, 0x18, MemProt::ReadWrite),
            (s, 0x100ff0, 0x20, MemProt::ReadExec),
            (s, 0x100400, 0, MemProt::ReadExec),
            (s, u64::MAX - 4, 0x10, MemProt::ReadExec),
            (SlabId(9), 0x100600, 0x10, MemProt::ReadExec),
            (s, 0x100300, 0x10, MemProt::ReadExec),
            (s, 0x100500, 0x10, MemProt::ReadExec),
            (s, 0x100000, 0x100, MemProt::ReadExec),
        ];
        for t in [&mut fast, &mut general] {
            t.claim(s, 0x100500, 0x8).unwrap();
        }
        let mut live = Vec::new();
        for (i, &(slab, addr, size, prot)) in requests.iter().enumerate() {
            if i == 9 {
                // Below the mark: a removed unit's bytes are searched, and free.
                let first = live.remove(0);
                for t in [&mut fast, &mut general] {
                    t.begin_dealloc(first).unwrap();
                    t.finish_dealloc(first);
                }
            }
            let seg = crate::SlabSegment {
                addr: ExecutorAddr(addr),
                size,
                prot,
            };
            let a = fast.begin_one_segment_unit(slab, &seg).map(|(id, _)| id);
            let b = Plan::slab_segments(&[seg])
                .and_then(|planned| general.begin_slab_unit(slab, &[seg], &planned));
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "request {i}");
                    fast.slab_unit_live(a).unwrap();
                    general.slab_unit_live(b).unwrap();
                    live.push(a);
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "request {i}"),
                (a, b) => panic!("request {i}: {a:?} and {b:?}"),
            }
        }
        assert_eq!(live.len(), 5, "{live:?}");
        assert!(
            fast.dense(live[0]).is_some(),
            "the fast path's dense units were tested"
        );
        assert_eq!(fast.slabs.0[0].high_water, general.slabs.0[0].high_water);
        for &id in &live {
            for t in [&mut fast, &mut general] {
                t.begin_dealloc(id).unwrap();
                t.finish_dealloc(id);
            }
        }
        for t in [&mut fast, &mut general] {
            t.unclaim(0x100500, 0x8);
            t.take_slab(s).unwrap();
            assert!(t.is_empty());
        }
    }

    /// New slab units in one visit: refused over units, claims and other regions, and over
    /// units placed below a region's high-water mark, after removals and moves.
    #[test]
    fn slab_units_are_checked_below_and_above_the_high_water_mark() {
        use crate::SegmentMove;
        let mut t = Table::<()>::default();
        let s = slab(&mut t);
        let u1 = slab_unit(&mut t, s, 0x100100, 0x40).unwrap();
        let u2 = slab_unit(&mut t, s, 0x100200, 0x40).unwrap();
        assert!(slab_unit(&mut t, s, 0x100230, 0x20).is_err(), "over unit 2");
        assert!(slab_unit(&mut t, s, 0x1000f0, 0x20).is_err(), "over unit 1");
        assert!(slab_unit(&mut t, s, 0x101000, 0x20).is_err(), "code in ro");
        t.claim(s, 0x100300, 0x10).unwrap();
        assert!(
            slab_unit(&mut t, s, 0x1002f8, 0x10).is_err(),
            "over a claim"
        );
        t.unclaim(0x100300, 0x10);
        t.begin_dealloc(u1).unwrap();
        t.finish_dealloc(u1);
        // Below the mark: searched.
        let u3 = slab_unit(&mut t, s, 0x100100, 0x40).unwrap();
        assert_ne!(u3, u1, "a new id in the freed slot");
        assert!(
            slab_unit(&mut t, s, 0x100000, 0x210).is_err(),
            "over 3 and 2"
        );
        // Unit 2 moves above everything: the mark follows it.
        let mv = SegmentMove {
            from: ExecutorAddr(0x100200),
            to: ExecutorAddr(0x100800),
            len: 0x40,
        };
        let plan = t.plan_move(u2, &[mv]).unwrap();
        t.begin_move(u2, &plan);
        t.relocate(u2, &plan);
        t.finish_move(u2, Vec::new(), Vec::new());
        assert!(
            slab_unit(&mut t, s, 0x100820, 0x10).is_err(),
            "over moved 2"
        );
        let u4 = slab_unit(&mut t, s, 0x100200, 0x40).unwrap();
        // A writer that gives up leaves nothing behind.
        let segments = [crate::SlabSegment {
            addr: ExecutorAddr(0x100900),
            size: 0x10,
            prot: MemProt::ReadExec,
        }];
        let planned = Plan::slab_segments(&segments).unwrap();
        let u5 = t.begin_slab_unit(s, &segments, &planned).unwrap();
        assert!(t.claim(s, 0x100900, 1).is_err(), "being written");
        assert!(t.pin_code(ExecutorAddr(0x100900)).is_err(), "not live");
        t.abort_slab_unit(u5, true);
        t.claim(s, 0x100900, 0x10).unwrap();
        t.unclaim(0x100900, 0x10);
        for id in [u2, u3, u4] {
            t.begin_dealloc(id).unwrap();
            t.finish_dealloc(id);
        }
        t.take_slab(s).unwrap();
        assert!(t.is_empty());
    }

    #[test]
    fn moves_are_checked_then_recorded() {
        use crate::SegmentMove;
        let mut t = Table::<()>::default();
        let s = slab(&mut t);
        let mut req = in_slab(0x100100, MemProt::ReadExec, 0x40);
        req.segments.push(seg(0x101100, MemProt::Read, 0x40));
        req.deinitializers = vec![Action::CallVoid(ExecutorAddr(0x100104))];
        finalize(&mut t, 1, &req).unwrap();
        finalize(&mut t, 2, &in_slab(0x100800, MemProt::ReadExec, 0x10)).unwrap();
        let mv = |from: u64, to: u64, len: u64| SegmentMove {
            from: ExecutorAddr(from),
            to: ExecutorAddr(to),
            len,
        };
        for (what, moves) in [
            ("not a segment", vec![mv(0x100108, 0x100400, 0x38)]),
            ("wrong length", vec![mv(0x100100, 0x100400, 0x41)]),
            (
                "twice",
                vec![mv(0x100100, 0x100400, 0x40), mv(0x100100, 0x100500, 0x40)],
            ),
            ("onto another unit", vec![mv(0x100100, 0x1007f8, 0x40)]),
            ("into another region", vec![mv(0x100100, 0x101400, 0x40)]),
            ("past the slab", vec![mv(0x100100, 0x200000, 0x40)]),
            ("wraps", vec![mv(0x100100, u64::MAX - 8, 0x40)]),
            (
                "overlapping destinations",
                vec![mv(0x100100, 0x100400, 0x40), mv(0x101100, 0x100420, 0x40)],
            ),
        ] {
            assert!(t.plan_move(1, &moves).is_err(), "{what}");
        }
        assert!(t.plan_move(3, &[]).is_err(), "unknown id");
        t.claim(s, 0x100400, 0x10).unwrap();
        assert!(
            t.plan_move(1, &[mv(0x100100, 0x100400, 0x40)]).is_err(),
            "claimed"
        );
        t.unclaim(0x100400, 0x10);
        let id = t.pin_code(ExecutorAddr(0x100100)).unwrap();
        assert!(
            t.plan_move(1, &[mv(0x100100, 0x100400, 0x40)]).is_err(),
            "running"
        );
        t.unpin(id);
        // Sliding down over its own old range.
        let plan = t.plan_move(1, &[mv(0x100100, 0x1000f0, 0x40)]).unwrap();
        assert_eq!(plan.translate(0x100104), 0x1000f4);
        assert_eq!(plan.translate(0x101104), 0x101104, "does not move");
        assert!(
            t.begin_move(1, &plan).is_empty(),
            "no registrations to undo"
        );
        assert!(t.begin_dealloc(1).is_err(), "moving");
        assert!(
            t.claim(s, 0x1000f0, 0x8).is_err(),
            "the destination is claimed"
        );
        t.relocate(1, &plan);
        t.finish_move(1, Vec::new(), Vec::new());
        assert!(t.claim(s, 0x100130, 0x10).is_ok(), "the old tail is free");
        t.unclaim(0x100130, 0x10);
        assert!(
            t.claim(s, 0x1000f0, 0x8).is_err(),
            "the new range is the unit's"
        );
        assert_eq!(t.pin_code(ExecutorAddr(0x10012f)).unwrap(), 1);
        t.unpin(1);
        assert!(t.pin_code(ExecutorAddr(0x100130)).is_err());
        for id in [1, 2] {
            t.begin_dealloc(id).unwrap();
            t.finish_dealloc(id);
        }
        t.take_slab(s).unwrap();
        assert!(t.is_empty());
    }

    /// A dense unit's states: while written (its claim), live, dying or moving, each call
    /// refuses what that state forbids; one that needs a full record later gets one.
    #[test]
    fn dense_unit_states_are_enforced() {
        use crate::SegmentMove;
        let mut t = Table::<()>::with_id_tag(3);
        let s = slab(&mut t);
        let segments = [crate::SlabSegment {
            addr: ExecutorAddr(0x100100),
            size: 0x20,
            prot: MemProt::ReadExec,
        }];
        let planned = Plan::slab_segments(&segments).unwrap();
        let id = t.begin_slab_unit(s, &segments, &planned).unwrap();
        assert_eq!(id >> ID_TAG_SHIFT, 3, "minted in the table's tag");
        assert!(t.dense(id).is_some());
        // Being written.
        assert!(t.begin_dealloc(id).is_err());
        assert!(t.start_initializers(id).is_err());
        assert!(t.pin_code(ExecutorAddr(0x100100)).is_err());
        assert!(t.plan_move(id, &[]).is_err());
        assert!(t.check_read(0x100110, 4).is_err(), "read while written");
        assert!(
            t.check_patch(s, 0x100110, 4).is_err(),
            "patched while written"
        );
        assert!(t.claim(s, 0x100110, 4).is_err());
        assert!(t.claim_live(s, 0x100110, 4).is_err());
        let live = || NewAlloc {
            initializers: Vec::new(),
            finalizers: false,
            live: true,
        };
        t.slab_unit_written(id, &mut Plan::default(), live())
            .unwrap();
        assert!(
            t.slab_unit_written(id, &mut Plan::default(), live())
                .is_err(),
            "written twice"
        );
        // Live.
        t.check_read(0x100110, 4).unwrap();
        t.check_patch(s, 0x100110, 4).unwrap();
        t.claim_live(s, 0x100110, 4).unwrap();
        t.unclaim(0x100110, 4);
        assert!(t.claim(s, 0x100110, 4).is_err(), "a live unit's bytes");
        assert_eq!(t.pin_code(ExecutorAddr(0x10011f)).unwrap(), id);
        assert!(t.begin_dealloc(id).is_err(), "pinned");
        t.unpin(id);
        assert!(t.start_initializers(id).unwrap().is_some());
        assert!(t.start_initializers(id).unwrap().is_none(), "once");
        t.unpin(id);
        // Dying, then back.
        let dying = t.begin_dealloc(id).unwrap();
        assert!(dying.is_trivial());
        assert!(t.begin_dealloc(id).is_err(), "dying");
        assert!(t.pin_code(ExecutorAddr(0x100100)).is_err(), "dying");
        assert!(t.plan_move(id, &[]).is_err(), "dying");
        assert!(t.claim_live(s, 0x100110, 4).is_err(), "dying");
        t.cancel_dealloc(id, dying);
        // Moving.
        let mv = SegmentMove {
            from: ExecutorAddr(0x100100),
            to: ExecutorAddr(0x100400),
            len: 0x20,
        };
        let plan = t.plan_move(id, &[mv]).unwrap();
        assert!(t.begin_move(id, &plan).is_empty());
        assert!(t.begin_dealloc(id).is_err(), "moving");
        assert!(t.pin_code(ExecutorAddr(0x100100)).is_err(), "moving");
        assert!(t.claim_live(s, 0x100100, 4).is_err(), "moving");
        assert!(
            t.claim(s, 0x100400, 4).is_err(),
            "the destination is claimed"
        );
        t.relocate(id, &plan);
        // Its new registrations need a full record: the same id keeps working.
        t.finish_move(id, vec![(0x100404, 0x100408)], Vec::new());
        assert!(t.dense(id).is_none());
        assert!(t.check_patch(s, 0x100404, 2).is_err(), "registered");
        assert_eq!(t.pin_code(ExecutorAddr(0x100400)).unwrap(), id);
        t.unpin(id);
        t.claim(s, 0x100100, 0x20).unwrap();
        t.unclaim(0x100100, 0x20);
        t.begin_dealloc(id).unwrap();
        t.finish_dealloc(id);
        assert!(t.begin_dealloc(id).is_err(), "freed");
        t.take_slab(s).unwrap();
        assert!(t.is_empty());
    }

    /// A slot is reused with a new generation each time; once its generations are used up it
    /// is retired, so no id is ever minted twice.
    #[test]
    fn slots_are_reused_and_ids_never_are() {
        let mut t = Table::<()>::default();
        let s = slab(&mut t);
        let mut seen = std::collections::HashSet::new();
        let mut last = 0;
        for _ in 0..u32::from(GEN_LIMIT) + 2 {
            let id = slab_unit(&mut t, s, 0x100100, 0x10).unwrap();
            assert!(seen.insert(id), "id {id:#x} minted twice");
            t.begin_dealloc(id).unwrap();
            t.finish_dealloc(id);
            assert!(t.begin_dealloc(id).is_err(), "stale");
            last = id;
        }
        assert_eq!(
            t.slots.entries.len(),
            2,
            "the first slot retired, then the second"
        );
        assert_eq!(
            (last & (SLOT_ID_BIT - 1)) >> GEN_BITS,
            1,
            "in the second slot"
        );
        t.take_slab(s).unwrap();
        assert!(t.is_empty());
    }
}
