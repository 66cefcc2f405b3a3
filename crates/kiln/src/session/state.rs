//! The session's symbol tables and units: what is live, who defines what, who depends on whom.
//!
//! Scopes behave like shared objects (ORC's JITDylibs): a unit belongs to one scope; its
//! default-visibility (and protected) symbols are visible to every unit that searches its scope;
//! its hidden symbols only to units of the same scope. A unit binds first to its own scope, then
//! to the scopes of that scope's search order, in order.

use super::symbols::{name_key, room_for, Found, Slot, SymbolTable};
use super::units::{AddrIndex, Few, UnitTable};
use crate::error::{DuplicateSymbol, Error, Result};
use crate::link::relink::{RelinkRecord, RelinkTarget};
use crate::link::Export;
use crate::memory::{CodeMemory, SlabRange};
use kiln_target::{AllocId, ExecutorAddr, SlabId};
use smallvec::SmallVec;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A named symbol table with a search order, like ORC's JITDylib. See [`crate::Session::create_scope`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeId(pub(crate) u32);

/// A linked unit of a session. Ids are never reused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId(pub(crate) u64);

impl std::fmt::Display for UnitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unit {}", self.0)
    }
}

/// What a symbol is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SymbolKind {
    /// Code (`STT_FUNC`, or a graph symbol marked callable).
    Function,
    /// Anything else with an address.
    Data,
}

/// A symbol a live unit defines, as lookups report it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SymbolInfo {
    pub addr: ExecutorAddr,
    pub size: u64,
    pub kind: SymbolKind,
    /// Visible to other scopes (default or protected visibility); `false` for hidden symbols,
    /// which only units of the same scope see.
    pub exported: bool,
    pub unit: UnitId,
}

/// A name's definition in a scope's table: three words (a scope's table holds one per symbol
/// of every live unit), the unit id and the flags sharing one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Def {
    pub addr: u64,
    pub size: u64,
    /// `unit << 8 | flags` (unit ids count up from 1 and stay far below 2^56).
    unit_flags: u64,
}

const FUNCTION: u64 = 1;
const EXPORTED: u64 = 2;
const WEAK: u64 = 4;

impl Def {
    pub fn new(
        addr: u64,
        size: u64,
        unit: u64,
        kind: SymbolKind,
        exported: bool,
        weak: bool,
    ) -> Self {
        let flags = if kind == SymbolKind::Function {
            FUNCTION
        } else {
            0
        } | if exported { EXPORTED } else { 0 }
            | if weak { WEAK } else { 0 };
        Def {
            addr,
            size,
            unit_flags: unit << 8 | flags,
        }
    }

    /// Made of what [`Def::unit_flags`] gave (a symbol table's packed entry).
    pub(super) fn from_packed(addr: u64, size: u64, unit_flags: u64) -> Self {
        Def {
            addr,
            size,
            unit_flags,
        }
    }

    /// The unit and the flags, in one word.
    pub(super) fn unit_flags(&self) -> u64 {
        self.unit_flags
    }

    /// The unit of a [`Def::unit_flags`].
    pub(super) fn unit_of(unit_flags: u64) -> u64 {
        unit_flags >> 8
    }

    /// The unit that defines it.
    pub fn unit(&self) -> u64 {
        Self::unit_of(self.unit_flags)
    }

    pub fn kind(&self) -> SymbolKind {
        if self.unit_flags & FUNCTION != 0 {
            SymbolKind::Function
        } else {
            SymbolKind::Data
        }
    }

    /// Visible to other scopes.
    pub fn exported(&self) -> bool {
        self.unit_flags & EXPORTED != 0
    }

    pub fn weak(&self) -> bool {
        self.unit_flags & WEAK != 0
    }

    pub fn info(&self) -> SymbolInfo {
        SymbolInfo {
            addr: ExecutorAddr(self.addr),
            size: self.size,
            kind: self.kind(),
            exported: self.exported(),
            unit: UnitId(self.unit()),
        }
    }
}

pub(crate) struct Scope {
    pub name: String,
    /// Scopes searched after this one, in order.
    pub search: Vec<ScopeId>,
    pub symbols: SymbolTable,
}

/// A live unit's record. Sized for a JIT that keeps a million one-function units: what every
/// unit has is inline (48 bytes), what few units have is in one optional box ([`Rare`]):
/// several segments, or one of 64 KiB or more; several names; several units it binds to or
/// that bind to it, or one whose id does not fit in 32 bits (after four billion links); a
/// scope past the 65,535th; slab ranges that are not its segments, or in a slab past the
/// 65,536th.
pub(crate) struct Unit {
    pub alloc: AllocId,
    /// The address of its one segment, when [`SEGS`] says [`ONE_SEG`] ([`Unit::segments`]).
    seg_addr: u64,
    rare: Option<Box<Rare>>,
    /// The size of that segment.
    seg_size: u16,
    /// The [`name_key`] of the name it defines in its scope's table, if one ([`Unit::names`]
    /// says how many: none, this one, or a list in [`Rare::names`]). The table holds the name;
    /// the unit finds its entries by key and unit id.
    name: u32,
    /// The unit this one binds to, if one ([`Unit::deps`]): 0 for none, [`IN_RARE`] when the
    /// list is in [`Rare::deps`] (ids count up from 1; one of [`IN_RARE`] or more is listed
    /// there too).
    dep: u32,
    /// The unit that binds to this one, if one ([`Unit::dependents`]), the same way.
    dependent: u32,
    /// The slab of its segments and the region of each (two bits a segment, up to three),
    /// when its slab ranges are exactly its segments (what a link into slab memory makes):
    /// then they are not stored. Else `regions` is [`NO_REGIONS`].
    slab: u16,
    regions: u8,
    /// Its scope, or [`SCOPE_IN_RARE`]: [`Rare::scope`] ([`Unit::scope`]).
    scope: u16,
    /// Links in progress that bound to this unit and have not published yet.
    pub pins: AtomicU32,
    /// Its [`MemoryKind`], [`INITIALIZED`], [`NAMES`], [`SEGS`] and [`VACANT`].
    flags: u8,
}

/// [`Unit::dep`], [`Unit::dependent`]: the list is in [`Rare`].
const IN_RARE: u32 = u32::MAX;
/// [`Unit::regions`] when its slab ranges are stored in [`Rare`].
const NO_REGIONS: u8 = u8::MAX;
/// [`Unit::scope`] when the scope is in [`Rare`].
const SCOPE_IN_RARE: u16 = u16::MAX;
/// [`Unit::flags`]: its initializers ran (or were found to have nothing to run).
const INITIALIZED: u8 = 4;
/// [`Unit::flags`]: the bits of its [`MemoryKind`].
const MEMORY: u8 = 3;
/// [`Unit::flags`]: how many names it defines: none, one ([`Unit::name`]), or the list in
/// [`Rare::names`] ([`NAMES_IN_RARE`]).
const NAMES: u8 = 0x18;
const ONE_NAME: u8 = 0x08;
const NAMES_IN_RARE: u8 = 0x10;
/// [`Unit::flags`]: where its segments are: none, one inline ([`ONE_SEG`]: [`Unit::seg_addr`],
/// [`Unit::seg_size`]), or the list in [`Rare::segments`] ([`SEGS_IN_RARE`]).
const SEGS: u8 = 0x60;
const ONE_SEG: u8 = 0x20;
const SEGS_IN_RARE: u8 = 0x40;
/// [`Unit::flags`]: not a unit: a free slot of the unit table ([`Unit::vacant`]).
const VACANT: u8 = 0x80;

/// Where a unit's ranges came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
enum MemoryKind {
    /// A reservation of its own.
    Own,
    /// The session's slabs.
    Session,
    /// Another code memory (a JIT layer's zone): [`Rare::memory`].
    Other,
}

/// The parts of a unit's record that most units of a JIT do not have.
#[derive(Default)]
struct Rare {
    /// Its segments, when [`Unit::seg_addr`] cannot say them.
    segments: Vec<(u64, u64)>,
    /// Its scope, when [`Unit::scope`] cannot say it.
    scope: u32,
    /// Its slab ranges, when [`Unit::regions`] cannot say them.
    slab_ranges: Vec<SlabRange>,
    memory: Option<Arc<dyn CodeMemory>>,
    /// Its edges, when it keeps them (see [`crate::Session::relink_record`]), with its segments
    /// where it was linked.
    relink: Option<Arc<RelinkRecord>>,
    /// Its finalize actions as linked (relink units only): moving it registers them again.
    link_actions: Option<Arc<Vec<kiln_target::ActionPair>>>,
    /// Edges of other units that target this one: (unit, index into its record's edges).
    incoming: Vec<(u64, u32)>,
    stats: Option<Box<crate::LinkStats>>,
    map: Option<Arc<crate::LinkMap>>,
    /// The units it binds to, when not one inline.
    deps: Vec<u64>,
    /// The units that bind to it, when not one inline.
    dependents: Vec<u64>,
    /// The keys of the names it defines, when more than one.
    names: Vec<u32>,
}

/// A list read from a unit's record: one element copied out of it, or a slice of its rare
/// part. Reads as a slice.
pub(crate) enum Listed<'a, T> {
    One([T; 1]),
    Slice(&'a [T]),
}

impl<T> Deref for Listed<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Listed::One(one) => one,
            Listed::Slice(s) => s,
        }
    }
}

/// A new unit's definitions (borrowed: the caller drops them after the lock), with their
/// names keyed ([`name_key`]) before the session's lock is taken.
pub(crate) struct NewSymbols<'e, 'g> {
    exports: &'e [Export<'g>],
    keys: SmallVec<[u32; 4]>,
}

impl<'e, 'g> NewSymbols<'e, 'g> {
    #[inline]
    pub fn new(exports: &'e [Export<'g>]) -> Self {
        let keys = match exports {
            // (A JIT's unit: one key, stored, without a push's checks.)
            [one] => SmallVec::from_buf_and_len([name_key(&one.name), 0, 0, 0], 1),
            _ => exports.iter().map(|e| name_key(&e.name)).collect(),
        };
        NewSymbols { exports, keys }
    }
}

/// A unit [`State::publish`] did not enter, and why. Its record is as it was made.
pub(crate) struct Refused {
    pub unit: Box<Unit>,
    pub error: Error,
}

impl Refused {
    fn new(unit: Unit, error: Error) -> Self {
        Refused {
            unit: Box::new(unit),
            error,
        }
    }
}

/// Whether a new definition `e` clashes with the live definition `d` of its name: both strong,
/// and `d` not of the unit being replaced.
fn clash(d: &Def, e: &Export, replacing: Option<u64>) -> bool {
    !d.weak() && !e.weak && Some(d.unit()) != replacing
}

fn duplicate(d: &Def, e: &Export, input: &str) -> DuplicateSymbol {
    DuplicateSymbol {
        name: String::from_utf8_lossy(&e.name).into_owned(),
        first: format!("unit {}", d.unit()),
        second: input.to_string(),
    }
}

/// Which of a unit's two lists of units.
#[derive(Copy, Clone)]
enum Links {
    Deps,
    Dependents,
}

/// What a new unit's record is made of (its lists borrowed: a one-function unit's are copied
/// into the record, not moved twice on the way).
pub(crate) struct NewUnit<'a> {
    pub alloc: AllocId,
    pub scope: ScopeId,
    /// Where its slab ranges came from: `None` for the session's own slabs (or no slab
    /// ranges).
    pub memory: Option<Arc<dyn CodeMemory>>,
    pub slab_ranges: &'a [SlabRange],
    pub segments: &'a [(u64, u64)],
    pub relink: Option<Arc<RelinkRecord>>,
    pub link_actions: Option<Arc<Vec<kiln_target::ActionPair>>>,
    pub stats: Option<Box<crate::LinkStats>>,
    pub map: Option<Arc<crate::LinkMap>>,
}

/// The list [`Unit::incoming`] gives for a unit without one.
static NO_INCOMING: Vec<(u64, u32)> = Vec::new();

impl Unit {
    /// The record of a new unit: [`Unit::in_one_slab_range`]'s when it says one, else the
    /// general one.
    #[inline]
    pub fn new(n: NewUnit) -> Self {
        match Self::in_one_slab_range(&n) {
            Some(unit) => {
                // Taken only when every owned part of `n` is `None`: nothing to drop, and its
                // drop glue (a call, 23 instructions) is skipped. Forgetting leaks nothing.
                debug_assert!(
                    n.memory.is_none()
                        && n.relink.is_none()
                        && n.link_actions.is_none()
                        && n.stats.is_none()
                        && n.map.is_none()
                );
                std::mem::forget(n);
                unit
            }
            None => Self::new_general(n),
        }
    }

    /// The record of a JIT's usual unit, without the general path's checks: one segment
    /// (below 64 KiB) that is its one slab range (of a 16-bit slab, in one of its three
    /// regions) of the session's slabs, a 16-bit scope, nothing of [`Rare`]. `None` for any
    /// other unit. (tests: `one_slab_range_records_match_the_general_path`)
    #[inline]
    fn in_one_slab_range(n: &NewUnit) -> Option<Self> {
        let ([(addr, size)], [range]) = (n.segments, n.slab_ranges) else {
            return None;
        };
        let plain = n.memory.is_none()
            && n.relink.is_none()
            && n.link_actions.is_none()
            && n.stats.is_none()
            && n.map.is_none();
        let seg_size = u16::try_from(*size).ok()?;
        let slab = u16::try_from(range.slab.0).ok()?;
        let scope = u16::try_from(n.scope.0).ok()?;
        let same = range.addr.0 == *addr && range.size == *size && range.region < 3;
        if !plain || !same || scope == SCOPE_IN_RARE {
            return None;
        }
        Some(Unit {
            alloc: n.alloc,
            seg_addr: *addr,
            rare: None,
            seg_size,
            name: 0,
            dep: 0,
            dependent: 0,
            slab,
            regions: range.region as u8,
            scope,
            pins: AtomicU32::new(0),
            // (Not initialized: see `new_general`.)
            flags: MemoryKind::Session as u8 | ONE_SEG,
        })
    }

    #[inline(never)]
    fn new_general(n: NewUnit) -> Self {
        let slab = regions_of(n.segments, n.slab_ranges);
        let memory = match (&n.memory, n.slab_ranges.is_empty()) {
            (_, true) => MemoryKind::Own,
            (None, false) => MemoryKind::Session,
            (Some(_), false) => MemoryKind::Other,
        };
        let ranges_kept = slab.is_none() && !n.slab_ranges.is_empty();
        let (slab, regions) = slab.unwrap_or((0, NO_REGIONS));
        let one_seg = match *n.segments {
            [(addr, size)] => u16::try_from(size).ok().map(|size| (addr, size)),
            _ => None,
        };
        let segs_kept = one_seg.is_none() && !n.segments.is_empty();
        let scope = u16::try_from(n.scope.0)
            .ok()
            .filter(|&s| s != SCOPE_IN_RARE);
        let has_rare = ranges_kept
            || segs_kept
            || scope.is_none()
            || memory == MemoryKind::Other
            || n.relink.is_some()
            || n.link_actions.is_some()
            || n.stats.is_some()
            || n.map.is_some();
        // (A unit's lists of units join its rare part when they grow past one.)
        let rare = has_rare.then(|| {
            let slab_ranges = if ranges_kept {
                n.slab_ranges.to_vec()
            } else {
                Vec::new()
            };
            let segments = if segs_kept {
                n.segments.to_vec()
            } else {
                Vec::new()
            };
            Box::new(Rare {
                segments,
                scope: n.scope.0,
                slab_ranges,
                memory: n.memory.filter(|_| memory == MemoryKind::Other),
                relink: n.relink,
                link_actions: n.link_actions,
                incoming: Vec::new(),
                stats: n.stats,
                map: n.map,
                deps: Vec::new(),
                dependents: Vec::new(),
                names: Vec::new(),
            })
        });
        let (seg_addr, seg_size) = one_seg.unwrap_or((0, 0));
        let segs = match (one_seg, segs_kept) {
            (Some(_), _) => ONE_SEG,
            (None, true) => SEGS_IN_RARE,
            (None, false) => 0,
        };
        Unit {
            alloc: n.alloc,
            seg_addr,
            rare,
            seg_size,
            name: 0,
            dep: 0,
            dependent: 0,
            slab,
            regions,
            scope: scope.unwrap_or(SCOPE_IN_RARE),
            pins: AtomicU32::new(0),
            // Not initialized, even without initializers: the executor runs a unit's
            // finalizers (destructors, exit handlers) only if it was initialized.
            flags: memory as u8 | segs,
        }
    }

    /// What a free slot of the unit table holds.
    pub fn vacant() -> Self {
        Unit {
            alloc: AllocId(0),
            seg_addr: 0,
            rare: None,
            seg_size: 0,
            name: 0,
            dep: 0,
            dependent: 0,
            slab: 0,
            regions: NO_REGIONS,
            scope: 0,
            pins: AtomicU32::new(0),
            flags: VACANT,
        }
    }

    pub fn is_vacant(&self) -> bool {
        self.flags & VACANT != 0
    }

    /// The ranges it holds in slabs (empty for a unit in a reservation of its own).
    pub fn slab_ranges(&self) -> Few<SlabRange> {
        match self.regions {
            NO_REGIONS => self
                .rare
                .iter()
                .flat_map(|r| r.slab_ranges.iter().copied())
                .collect(),
            regions => self
                .segments()
                .iter()
                .enumerate()
                .map(|(i, &(addr, size))| SlabRange {
                    slab: SlabId(u32::from(self.slab)),
                    region: usize::from(regions >> (2 * i) & 3),
                    addr: ExecutorAddr(addr),
                    size,
                })
                .collect(),
        }
    }

    /// The scope it belongs to.
    #[inline]
    pub fn scope(&self) -> ScopeId {
        match (self.scope, &self.rare) {
            (SCOPE_IN_RARE, Some(r)) => ScopeId(r.scope),
            (s, _) => ScopeId(u32::from(s)),
        }
    }

    /// The code memory its slab ranges came from (`None`: a reservation of its own);
    /// `session` is the session's own.
    pub fn memory<'a>(
        &'a self,
        session: &'a Arc<dyn CodeMemory>,
    ) -> Option<&'a Arc<dyn CodeMemory>> {
        match self.memory_kind() {
            MemoryKind::Own => None,
            MemoryKind::Session => Some(session),
            MemoryKind::Other => self.rare.as_ref()?.memory.as_ref(),
        }
    }

    fn memory_kind(&self) -> MemoryKind {
        match self.flags & MEMORY {
            0 => MemoryKind::Own,
            1 => MemoryKind::Session,
            _ => MemoryKind::Other,
        }
    }

    /// Whether it lives in slab memory (the session's or another code memory's).
    pub fn in_slabs(&self) -> bool {
        self.memory_kind() != MemoryKind::Own
    }

    /// Whether its initializers ran ([`crate::Session::run_initializers`]).
    pub fn initialized(&self) -> bool {
        self.flags & INITIALIZED != 0
    }

    pub fn set_initialized(&mut self) {
        self.flags |= INITIALIZED;
    }

    /// Its segments moved to `after` (same count, same sizes, same slabs); `translate` maps an
    /// old address to the new one.
    pub fn move_segments(&mut self, after: &[(u64, u64)], translate: impl Fn(u64) -> u64) {
        match (self.flags & SEGS, after) {
            (ONE_SEG, &[(addr, _)]) => self.seg_addr = addr,
            _ => {
                if let Some(r) = self.rare.as_mut() {
                    r.segments = after.to_vec();
                }
            }
        }
        for r in self.rare.iter_mut().flat_map(|r| r.slab_ranges.iter_mut()) {
            r.addr = ExecutorAddr(translate(r.addr.0));
        }
    }

    /// (address, size) of its segments.
    #[inline]
    pub fn segments(&self) -> Listed<'_, (u64, u64)> {
        match self.flags & SEGS {
            ONE_SEG => Listed::One([(self.seg_addr, u64::from(self.seg_size))]),
            SEGS_IN_RARE => Listed::Slice(self.rare.as_ref().map_or(&[], |r| &r.segments)),
            _ => Listed::Slice(&[]),
        }
    }

    /// The [`name_key`]s of the names it defines in its scope's table (the ones that won),
    /// in the order it got them.
    pub fn names(&self) -> &[u32] {
        match self.flags & NAMES {
            0 => &[],
            ONE_NAME => std::slice::from_ref(&self.name),
            _ => self.rare.as_ref().map_or(&[], |r| &r.names),
        }
    }

    /// It defines the name keyed `key` too.
    #[inline]
    pub fn add_name(&mut self, key: u32) {
        if self.flags & NAMES == 0 {
            self.name = key;
            self.flags |= ONE_NAME;
        } else {
            self.add_listed_name(key);
        }
    }

    /// [`Unit::add_name`] of a second name or more: the list in the rare part.
    #[cold]
    #[inline(never)]
    fn add_listed_name(&mut self, key: u32) {
        if self.flags & NAMES == ONE_NAME {
            let first = self.name;
            self.rare_mut().names = vec![first, key];
            self.flags = self.flags & !NAMES | NAMES_IN_RARE;
        } else {
            self.rare_mut().names.push(key);
        }
    }

    /// One name keyed `key` is no longer its (another unit took it over).
    pub fn drop_name(&mut self, key: u32) {
        match self.flags & NAMES {
            0 => {}
            ONE_NAME => {
                if self.name == key {
                    self.flags &= !NAMES;
                }
            }
            _ => {
                let list = &mut self.rare_mut().names;
                if let Some(i) = list.iter().position(|&h| h == key) {
                    list.remove(i);
                }
                if let [one] = list[..] {
                    *list = Vec::new();
                    self.name = one;
                    self.flags = self.flags & !NAMES | ONE_NAME;
                }
            }
        }
    }

    /// The units it binds to.
    pub fn deps(&self) -> Listed<'_, u64> {
        self.links(Links::Deps)
    }

    /// The units that bind to it.
    pub fn dependents(&self) -> Listed<'_, u64> {
        self.links(Links::Dependents)
    }

    /// Bind to `id` (if not bound already).
    pub fn add_dep(&mut self, id: u64) {
        self.add_link(Links::Deps, id);
    }

    /// `id` binds to it (if not known already).
    #[inline]
    pub fn add_dependent(&mut self, id: u64) {
        // (A JIT's usual case, the first dependent, without the list's checks.)
        if self.dependent == 0 && id < u64::from(IN_RARE) {
            self.dependent = id as u32;
        } else {
            self.add_link(Links::Dependents, id);
        }
    }

    pub fn retain_deps(&mut self, keep: impl FnMut(u64) -> bool) {
        self.retain_links(Links::Deps, keep);
    }

    pub fn retain_dependents(&mut self, keep: impl FnMut(u64) -> bool) {
        self.retain_links(Links::Dependents, keep);
    }

    /// The units it binds to are `ids` (no id twice).
    #[inline]
    pub fn set_deps(&mut self, ids: &[u64]) {
        match ids {
            [] => self.dep = 0,
            [one] if *one < u64::from(IN_RARE) => self.dep = *one as u32,
            _ => {
                self.dep = IN_RARE;
                self.rare_mut().deps = ids.to_vec();
            }
        }
    }

    fn link(&mut self, which: Links) -> &mut u32 {
        match which {
            Links::Deps => &mut self.dep,
            Links::Dependents => &mut self.dependent,
        }
    }

    fn links(&self, which: Links) -> Listed<'_, u64> {
        let one = match which {
            Links::Deps => self.dep,
            Links::Dependents => self.dependent,
        };
        match one {
            0 => Listed::Slice(&[]),
            IN_RARE => Listed::Slice(self.rare.as_ref().map_or(&[], |r| r.links(which))),
            id => Listed::One([u64::from(id)]),
        }
    }

    fn add_link(&mut self, which: Links, id: u64) {
        if self.links(which).contains(&id) {
            return;
        }
        match *self.link(which) {
            0 if id < u64::from(IN_RARE) => *self.link(which) = id as u32,
            0 => {
                *self.link(which) = IN_RARE;
                *self.rare_mut().links_mut(which) = vec![id];
            }
            IN_RARE => self.rare_mut().links_mut(which).push(id),
            first => {
                *self.link(which) = IN_RARE;
                *self.rare_mut().links_mut(which) = vec![u64::from(first), id];
            }
        }
    }

    fn retain_links(&mut self, which: Links, mut keep: impl FnMut(u64) -> bool) {
        match *self.link(which) {
            0 => {}
            IN_RARE => {
                let list = self.rare_mut().links_mut(which);
                list.retain(|&x| keep(x));
                // Back inline when one (that fits) or none is left.
                let left = match list[..] {
                    [] => Some(0),
                    [one] => u32::try_from(one).ok().filter(|&x| x != IN_RARE),
                    _ => None,
                };
                if let Some(left) = left {
                    *list = Vec::new();
                    *self.link(which) = left;
                }
            }
            one if !keep(u64::from(one)) => *self.link(which) = 0,
            _ => {}
        }
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    pub fn relink(&self) -> Option<&Arc<RelinkRecord>> {
        self.rare.as_ref()?.relink.as_ref()
    }

    pub fn relink_mut(&mut self) -> Option<&mut Arc<RelinkRecord>> {
        self.rare.as_mut()?.relink.as_mut()
    }

    pub fn link_actions(&self) -> Option<&Arc<Vec<kiln_target::ActionPair>>> {
        self.rare.as_ref()?.link_actions.as_ref()
    }

    /// Edges of other units that target this one: (unit, index into its record's edges).
    pub fn incoming(&self) -> &Vec<(u64, u32)> {
        self.rare.as_ref().map_or(&NO_INCOMING, |r| &r.incoming)
    }

    pub fn add_incoming(&mut self, edge: (u64, u32)) {
        self.rare_mut().incoming.push(edge);
    }

    pub fn retain_incoming(&mut self, keep: impl FnMut(&(u64, u32)) -> bool) {
        if let Some(r) = self.rare.as_mut() {
            r.incoming.retain(keep);
        }
    }

    pub fn stats(&self) -> Option<&crate::LinkStats> {
        self.rare.as_ref()?.stats.as_deref()
    }

    pub fn map(&self) -> Option<&Arc<crate::LinkMap>> {
        self.rare.as_ref()?.map.as_ref()
    }
}

impl Rare {
    fn links(&self, which: Links) -> &[u64] {
        match which {
            Links::Deps => &self.deps,
            Links::Dependents => &self.dependents,
        }
    }

    fn links_mut(&mut self, which: Links) -> &mut Vec<u64> {
        match which {
            Links::Deps => &mut self.deps,
            Links::Dependents => &mut self.dependents,
        }
    }
}

/// The slab and the regions of the segments ([`Unit::regions`]), if `ranges` are exactly
/// `segments`, at most three, in one slab of a 16-bit id, each in one of its three regions.
fn regions_of(segments: &[(u64, u64)], ranges: &[SlabRange]) -> Option<(u16, u8)> {
    let first = ranges.first()?;
    let slab = u16::try_from(first.slab.0).ok()?;
    if ranges.len() != segments.len() || ranges.len() > 3 {
        return None;
    }
    let mut regions = 0u8;
    for (i, (r, &(addr, size))) in ranges.iter().zip(segments).enumerate() {
        if r.slab != first.slab || r.addr.0 != addr || r.size != size || r.region >= 3 {
            return None;
        }
        regions |= (r.region as u8) << (2 * i);
    }
    Some((slab, regions))
}

pub(crate) struct State {
    pub scopes: Vec<Scope>,
    pub units: UnitTable,
    pub next_unit: u64,
    /// Every live unit's segments (of nonzero size) by address (their sizes are in the
    /// units' records).
    by_addr: AddrIndex,
}

impl State {
    pub fn new() -> Self {
        State {
            scopes: vec![Scope {
                name: "default".into(),
                search: Vec::new(),
                symbols: SymbolTable::default(),
            }],
            units: UnitTable::default(),
            next_unit: 1,
            by_addr: AddrIndex::default(),
        }
    }

    pub fn scope(&self, s: ScopeId) -> Result<&Scope> {
        self.scopes
            .get(s.0 as usize)
            .ok_or_else(|| Error::Usage(format!("no scope {}", s.0)))
    }

    pub fn unit(&self, u: UnitId) -> Result<&Unit> {
        self.units.get(&u.0).ok_or_else(|| {
            Error::Usage(format!("no {u} in this session (removed, or never linked)"))
        })
    }

    /// The definition of `name` a unit of scope `from` binds to.
    pub fn visible(&self, from: ScopeId, name: &str) -> Option<Def> {
        let found = self.visible_keyed(from, name_key(name.as_bytes()), name.as_bytes());
        found.map(|d| d.def())
    }

    /// [`State::visible`] for a name already keyed ([`name_key`]): one key for every scope
    /// of the search order.
    #[inline]
    pub fn visible_keyed(&self, from: ScopeId, key: u32, name: &[u8]) -> Option<Found<'_>> {
        let own = self.scopes.get(from.0 as usize)?;
        if let Some(d) = own.symbols.find(key, name) {
            return Some(d);
        }
        own.search.iter().find_map(|s| {
            self.scopes
                .get(s.0 as usize)?
                .symbols
                .find(key, name)
                .filter(|d| d.exported())
        })
    }

    /// Strong definitions of `new` that clash with live units' in scope `scope`.
    fn clashes(
        scope: &Scope,
        new: &NewSymbols,
        input: &str,
        replacing: Option<u64>,
    ) -> Vec<DuplicateSymbol> {
        new.exports
            .iter()
            .zip(&new.keys)
            .filter_map(|(e, &k)| {
                let d = scope.symbols.find(k, &e.name)?.def();
                clash(&d, e, replacing).then(|| duplicate(&d, e, input))
            })
            .collect()
    }

    /// Enter a linked unit as unit `self.next_unit`: its symbols into its scope (the first
    /// definition of a name stays), its dependencies both ways, its pins released. Refused,
    /// with the tables as they were and the pins released, if its scope is not one of this
    /// session's or a strong definition clashes with a live unit's (a race with another
    /// thread, or a redefinition): the record comes back for the caller to release its
    /// memory.
    ///
    /// Everything that does not need the tables (the record, the names' keys) is made by
    /// the caller before the lock is taken; `new` keeps the exports (their names copied into
    /// the scope's table) for the caller to drop after the lock.
    pub fn publish(
        &mut self,
        mut unit: Unit,
        new: &NewSymbols,
        deps: &[u64],
        input: &str,
        replacing: Option<u64>,
    ) -> std::result::Result<u64, Refused> {
        let at = unit.scope().0 as usize;
        if at >= self.scopes.len() {
            self.unpin(deps);
            let error = Error::Usage(format!("no scope {} in this session", at));
            return Err(Refused::new(unit, error));
        }
        // With one definition, the insert below finds a clash before it changes anything.
        let checked = new.exports.len() > 1;
        if checked {
            let clashes = Self::clashes(&self.scopes[at], new, input, replacing);
            if !clashes.is_empty() {
                self.unpin(deps);
                return Err(Refused::new(unit, Error::Duplicate(clashes)));
            }
        }
        let id = self.next_unit;
        let scope = &mut self.scopes[at];
        let bytes = new.exports.iter().map(|e| room_for(e.name.len())).sum();
        if !scope.symbols.make_room(bytes) {
            self.unpin(deps);
            let error = Error::Usage("too many symbol names in one scope (4 GiB)".into());
            return Err(Refused::new(unit, error));
        }
        let mut taken: Vec<u32> = Vec::new();
        let mut refused = None;
        for (e, &k) in new.exports.iter().zip(&new.keys) {
            let def = Def::new(e.addr, e.size, id, e.kind, e.exported, e.weak);
            match scope.symbols.slot(k, &e.name) {
                Slot::Free(slot) => {
                    unit.add_name(k);
                    slot.insert(&e.name, def);
                }
                // A redefinition takes over the names of the unit it replaces.
                Slot::Taken(o) if Some(o.def().unit()) == replacing => {
                    o.replace(def);
                    unit.add_name(k);
                    taken.push(k);
                }
                // The only definition (else checked above): nothing changed yet.
                Slot::Taken(o) if !checked && clash(&o.def(), e, replacing) => {
                    refused = Some(duplicate(&o.def(), e, input));
                    break;
                }
                Slot::Taken(_) => {}
            }
        }
        if let Some(clash) = refused {
            self.unpin(deps);
            return Err(Refused::new(unit, Error::Duplicate(vec![clash])));
        }
        self.next_unit += 1;
        for d in deps {
            if let Some(dep) = self.units.get_mut(d) {
                dep.pins.fetch_sub(1, Ordering::Relaxed);
                dep.add_dependent(id);
            }
        }
        if let Some(old) = replacing.and_then(|r| self.units.get_mut(&r)) {
            for h in taken {
                old.drop_name(h);
            }
        }
        unit.set_deps(deps);
        for (i, &(addr, size)) in unit.segments().iter().enumerate() {
            if size > 0 {
                self.by_addr.insert(addr, id, i as u8);
            }
        }
        if let Some(rec) = unit.rare.as_mut().and_then(|r| r.relink.take()) {
            let own = unit.segments().to_vec();
            unit.rare_mut().relink = Some(Arc::new(self.classify(id, &own, rec)));
        }
        self.units.insert(id, unit);
        Ok(id)
    }

    /// The live unit, its segment and the offset in it, at `addr`.
    pub fn unit_at(&self, addr: u64) -> Option<(u64, u8, u64)> {
        let (start, unit, seg) = self.by_addr.last_at_or_below(addr)?;
        let (_, size) = *self.units.get(&unit)?.segments().get(usize::from(seg))?;
        (addr - start < size).then_some((unit, seg, addr - start))
    }

    /// The live segments that start below `end`, highest start first: (start, end, unit).
    pub fn segments_below(&self, end: u64) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.by_addr.below(end).map(|(start, unit, seg)| {
            let size = self
                .units
                .get(&unit)
                .and_then(|u| u.segments().get(usize::from(seg)).map(|s| s.1));
            (start, start + size.unwrap_or(0), unit)
        })
    }

    /// Segment `seg` of `unit`, starting at `start`, into the address index (its size is the
    /// unit's record's).
    pub fn index_segment(&mut self, start: u64, unit: u64, seg: u8) {
        self.by_addr.insert(start, unit, seg);
    }

    /// The segment starting at `start` out of the address index.
    pub fn unindex_segment(&mut self, start: u64) {
        self.by_addr.remove(start);
    }

    /// Name the absolute targets of a new unit's record that lie in other live units, and
    /// record those edges as incoming on their targets.
    /// `own`: the new unit's segments (it is not in the unit table yet).
    fn classify(&mut self, id: u64, own: &[(u64, u64)], rec: Arc<RelinkRecord>) -> RelinkRecord {
        let mut rec = Arc::unwrap_or_clone(rec);
        for (i, e) in rec.edges.iter_mut().enumerate() {
            let RelinkTarget::Absolute(addr) = e.target else {
                continue;
            };
            let in_own = own.iter().enumerate().find_map(|(seg, &(start, size))| {
                (addr.wrapping_sub(start) < size).then(|| (id, seg as u8, addr - start))
            });
            let Some((unit, segment, offset)) = in_own.or_else(|| self.unit_at(addr)) else {
                continue;
            };
            e.target = RelinkTarget::Unit {
                unit: UnitId(unit),
                segment,
                offset,
            };
            if let Some(t) = self.units.get_mut(&unit) {
                t.add_incoming((id, i as u32));
            }
        }
        rec
    }

    /// Release pins a failed link held.
    pub fn unpin(&self, deps: &[u64]) {
        for d in deps {
            if let Some(dep) = self.units.get(d) {
                dep.pins.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Take a unit out of the tables (it must have no dependents and no pins).
    pub fn withdraw(&mut self, id: u64) -> Result<Unit> {
        let unit = self.unit(UnitId(id))?;
        if unit.pins.load(Ordering::Relaxed) > 0 {
            return Err(Error::UnitInUse(UnitId(id)));
        }
        if !unit.dependents().is_empty() {
            let mut dependents: Vec<UnitId> =
                unit.dependents().iter().map(|d| UnitId(*d)).collect();
            dependents.sort_unstable();
            return Err(Error::HasDependents {
                unit: UnitId(id),
                dependents: dependents.into(),
            });
        }
        let unit = self
            .units
            .remove(&id)
            .ok_or_else(|| Error::Internal("unit vanished".into()))?;
        let scope = &mut self.scopes[unit.scope().0 as usize];
        for &h in unit.names() {
            scope.symbols.remove_of(h, id);
        }
        for d in unit.deps().iter() {
            if let Some(dep) = self.units.get_mut(d) {
                dep.retain_dependents(|x| x != id);
            }
        }
        for &(addr, size) in unit.segments().iter() {
            if size > 0 {
                self.by_addr.remove(addr);
            }
        }
        if let Some(rec) = unit.relink() {
            for e in &rec.edges {
                if let RelinkTarget::Unit { unit: t, .. } = e.target {
                    if let Some(t) = self.units.get_mut(&t.0) {
                        t.retain_incoming(|(from, _)| *from != id);
                    }
                }
            }
        }
        Ok(unit)
    }

    /// Take several units out of the tables at once, newest first (dependents before what they
    /// use). Refused before anything changes if a unit outside `ids` binds to one of them, or a
    /// link in progress does.
    pub fn withdraw_all(&mut self, ids: &[u64]) -> Result<Vec<Unit>> {
        let set = UnitSet::new(ids, self.next_unit);
        let mut order: Vec<u64> = ids.to_vec();
        order.sort_unstable();
        order.dedup();
        for &id in &order {
            let unit = self.unit(UnitId(id))?;
            if unit.pins.load(Ordering::Relaxed) > 0 {
                return Err(Error::UnitInUse(UnitId(id)));
            }
            let mut outside: Vec<UnitId> = unit
                .dependents()
                .iter()
                .filter(|d| !set.contains(**d))
                .map(|d| UnitId(*d))
                .collect();
            if !outside.is_empty() {
                outside.sort_unstable();
                return Err(Error::HasDependents {
                    unit: UnitId(id),
                    dependents: outside.into(),
                });
            }
        }
        // Lists of units that stay name withdrawn ones: each is filtered once, at the end.
        let (mut deps_of, mut targets) = (Vec::new(), Vec::new());
        let (mut seen_dep, mut seen_target) = (
            UnitSet::new(&[], self.next_unit),
            UnitSet::new(&[], self.next_unit),
        );
        let mut out = Vec::with_capacity(order.len());
        for &id in order.iter().rev() {
            let Some(unit) = self.units.remove(&id) else {
                continue;
            };
            let scope = &mut self.scopes[unit.scope().0 as usize];
            for &h in unit.names() {
                scope.symbols.remove_of(h, id);
            }
            for &(addr, size) in unit.segments().iter() {
                if size > 0 {
                    self.by_addr.remove(addr);
                }
            }
            for &d in unit.deps().iter() {
                if !set.contains(d) && !seen_dep.contains(d) {
                    seen_dep.insert(d);
                    deps_of.push(d);
                }
            }
            if let Some(rec) = unit.relink() {
                for e in &rec.edges {
                    if let RelinkTarget::Unit { unit: t, .. } = e.target {
                        if !set.contains(t.0) && !seen_target.contains(t.0) {
                            seen_target.insert(t.0);
                            targets.push(t.0);
                        }
                    }
                }
            }
            out.push(unit);
        }
        for d in deps_of {
            if let Some(dep) = self.units.get_mut(&d) {
                dep.retain_dependents(|x| !set.contains(x));
            }
        }
        for t in targets {
            if let Some(t) = self.units.get_mut(&t) {
                t.retain_incoming(|(from, _)| !set.contains(*from));
            }
        }
        Ok(out)
    }

    /// The units whose references to other units cannot be written again after those move:
    /// they keep no relink records, or do not live in slab memory.
    pub fn not_rewritable(&self) -> UnitSet {
        let mut set = UnitSet::new(&[], self.next_unit);
        for (id, u) in self.units.iter() {
            if u.relink().is_none() || !u.in_slabs() {
                set.insert(id);
            }
        }
        set
    }

    /// `id` and every unit that depends on it, directly or not, dependents first.
    pub fn with_dependents(&self, id: u64) -> Result<Vec<u64>> {
        self.unit(UnitId(id))?;
        let mut all = vec![id];
        let mut i = 0;
        while i < all.len() {
            if let Some(u) = self.units.get(&all[i]) {
                for d in u.dependents().iter() {
                    if !all.contains(d) {
                        all.push(*d);
                    }
                }
            }
            i += 1;
        }
        // A unit only binds to units that existed before it: newest first is dependents first.
        all.sort_unstable_by(|a, b| b.cmp(a));
        Ok(all)
    }
}

/// A set of unit ids as a bitmap (ids are dense: they count up from 1).
pub(crate) struct UnitSet(Vec<u64>);

impl UnitSet {
    pub fn new(ids: &[u64], next: u64) -> Self {
        let mut set = UnitSet(vec![0u64; (next as usize).div_ceil(64)]);
        for &id in ids {
            set.insert(id);
        }
        set
    }

    pub fn insert(&mut self, id: u64) {
        if let Some(w) = self.0.get_mut((id / 64) as usize) {
            *w |= 1 << (id % 64);
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.0
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_stay_small() {
        // A JIT keeps a record per unit: a million units, 56 MB of records.
        assert_eq!(std::mem::size_of::<Unit>(), 48);
        assert!(Unit::vacant().is_vacant() && !unit_with_one_segment().is_vacant());
    }

    /// A unit of one 16-byte segment, nothing else.
    fn unit_with_one_segment() -> Unit {
        unit(vec![(0x1000, 16)], Vec::new())
    }

    fn unit(segments: Vec<(u64, u64)>, slab_ranges: Vec<SlabRange>) -> Unit {
        Unit::new(NewUnit {
            alloc: AllocId(1),
            scope: ScopeId(0),
            memory: None,
            slab_ranges: &slab_ranges,
            segments: &segments,
            relink: None,
            link_actions: None,
            stats: None,
            map: None,
        })
    }

    #[test]
    fn lists_of_units_grow_into_the_rare_part_and_come_back() {
        let mut u = unit_with_one_segment();
        assert!(u.deps().is_empty() && u.dependents().is_empty());
        u.add_dependent(7);
        u.add_dependent(7);
        assert_eq!(&*u.dependents(), &[7]);
        assert!(u.rare.is_none(), "one unit stays inline");
        u.add_dependent(9);
        u.add_dependent(11);
        assert_eq!(&*u.dependents(), &[7, 9, 11]);
        assert!(u.deps().is_empty());
        u.retain_dependents(|d| d == 9);
        assert_eq!((u.dependent, &*u.dependents()), (9, &[9][..]));
        u.retain_dependents(|_| false);
        assert!(u.dependents().is_empty());
        u.set_deps(&[3, 4]);
        assert_eq!(&*u.deps(), &[3, 4]);
        u.retain_deps(|d| d != 3);
        assert_eq!(&*u.deps(), &[4]);
        u.set_deps(&[5]);
        assert_eq!(&*u.deps(), &[5]);
        u.add_dep(6);
        u.retain_deps(|_| false);
        assert!(u.deps().is_empty() && u.dep == 0);
    }

    /// Unit ids that do not fit the record's 32-bit slots (after four billion links): listed
    /// in the rare part, alone or not, and never inline.
    #[test]
    fn ids_past_32_bits_take_the_rare_path() {
        let far = u64::from(u32::MAX);
        let farther = 1u64 << 40;
        let mut u = unit_with_one_segment();
        u.add_dependent(far);
        assert_eq!((u.dependent, &*u.dependents()), (IN_RARE, &[far][..]));
        u.add_dependent(far);
        u.add_dependent(8);
        assert_eq!(&*u.dependents(), &[far, 8]);
        u.retain_dependents(|d| d != 8);
        assert_eq!((u.dependent, &*u.dependents()), (IN_RARE, &[far][..]));
        u.add_dependent(farther);
        u.retain_dependents(|d| d != far);
        assert_eq!(&*u.dependents(), &[farther]);
        u.retain_dependents(|_| false);
        assert!(u.dependents().is_empty() && u.dependent == 0);
        u.set_deps(&[farther]);
        assert_eq!((u.dep, &*u.deps()), (IN_RARE, &[farther][..]));
        u.add_dep(far - 1);
        assert_eq!(&*u.deps(), &[farther, far - 1]);
        u.retain_deps(|d| d != farther);
        assert_eq!((u.dep, &*u.deps()), (u32::MAX - 1, &[far - 1][..]));
        u.set_deps(&[]);
        assert!(u.deps().is_empty());
    }

    /// Segments that do not fit the record's one inline segment: several, none, or one of
    /// 4 GiB or more; each read back as made and moved.
    #[test]
    fn segments_inline_when_one_fits() {
        let lists: [Vec<(u64, u64)>; 6] = [
            vec![],
            vec![(0x1000, 160)],
            vec![(0x1000, u64::from(u16::MAX))],
            vec![(0x1000, 1 << 16)],
            vec![(0x1000, 1 << 32)],
            vec![(0x1000, 16), (0x9000, 8)],
        ];
        for list in lists {
            let mut u = unit(list.clone(), Vec::new());
            assert_eq!(&*u.segments(), &list[..]);
            let inline = list.len() == 1 && list[0].1 <= u64::from(u16::MAX);
            assert_eq!(u.rare.is_none(), inline || list.is_empty(), "{list:?}");
            let moved: Vec<(u64, u64)> = list.iter().map(|&(a, n)| (a + 0x100, n)).collect();
            u.move_segments(&moved, |a| a + 0x100);
            assert_eq!(&*u.segments(), &moved[..]);
        }
    }

    /// A scope or a slab past what the record's 16 bits say: kept in the rare part.
    #[test]
    fn scopes_and_slabs_past_16_bits_take_the_rare_path() {
        let range = |slab| SlabRange {
            slab: SlabId(slab),
            region: 1,
            addr: ExecutorAddr(0x1000),
            size: 16,
        };
        for (scope, slab) in [
            (0, 0),
            (65_534, 65_535),
            (65_535, 65_536),
            (u32::MAX, u32::MAX),
        ] {
            let u = Unit::new(NewUnit {
                alloc: AllocId(1),
                scope: ScopeId(scope),
                memory: None,
                slab_ranges: &[range(slab)],
                segments: &[(0x1000, 16)],
                relink: None,
                link_actions: None,
                stats: None,
                map: None,
            });
            assert_eq!(u.scope(), ScopeId(scope));
            assert_eq!(&*u.slab_ranges(), &[range(slab)]);
            assert_eq!(u.rare.is_none(), scope < 65_535 && slab < 65_536);
        }
    }

    #[test]
    fn names_stay_inline_while_one_and_keep_their_order() {
        let mut u = unit_with_one_segment();
        u.set_initialized();
        assert!(u.names().is_empty());
        u.add_name(0);
        assert_eq!(u.names(), &[0], "a key of 0 is a name like any other");
        assert!(u.rare.is_none());
        u.add_name(7);
        u.add_name(0);
        assert_eq!(u.names(), &[0, 7, 0]);
        u.drop_name(0);
        assert_eq!(
            u.names(),
            &[7, 0],
            "one name dropped, not every name of the key"
        );
        u.drop_name(9);
        u.drop_name(7);
        assert_eq!(u.names(), &[0]);
        u.drop_name(0);
        assert!(u.names().is_empty());
        assert!(u.initialized() && !u.in_slabs(), "the other flags are kept");
    }

    #[test]
    fn defs_keep_unit_and_flags_in_one_word() {
        assert_eq!(std::mem::size_of::<Def>(), 24);
        let unit = (1u64 << 56) - 1;
        for kind in [SymbolKind::Function, SymbolKind::Data] {
            for (exported, weak) in [(false, false), (true, false), (false, true), (true, true)] {
                let d = Def::new(0x1000, u64::MAX, unit, kind, exported, weak);
                assert_eq!(
                    (d.unit(), d.kind(), d.exported(), d.weak()),
                    (unit, kind, exported, weak)
                );
                assert_eq!(d.info().size, u64::MAX);
            }
        }
    }

    #[test]
    fn slab_ranges_equal_to_segments_are_not_stored() {
        let range = |region, addr, size| SlabRange {
            slab: SlabId(3),
            region,
            addr: ExecutorAddr(addr),
            size,
        };
        let ranges = vec![range(0, 0x1000, 16), range(2, 0x9000, 8)];
        let u = unit(vec![(0x1000, 16), (0x9000, 8)], ranges.clone());
        assert!(u.regions == 0b10_00 && u.slab == 3);
        assert!(
            u.rare.as_ref().is_some_and(|r| r.slab_ranges.is_empty()),
            "two segments are in the rare part, their ranges are not"
        );
        assert_eq!(&*u.slab_ranges(), &ranges[..]);
        assert!(u.in_slabs());
        // A range that is not a segment: kept as it is.
        let odd = vec![range(0, 0x1000, 32)];
        let mut u = unit(vec![(0x1000, 16)], odd.clone());
        assert!(u.rare.is_some() && u.regions == NO_REGIONS);
        assert_eq!(&*u.slab_ranges(), &odd[..]);
        u.move_segments(&[(0x2000, 16)], |a| a + 0x1000);
        assert_eq!(u.slab_ranges()[0].addr, ExecutorAddr(0x2000));
        assert_eq!(&*u.segments(), &[(0x2000, 16)]);
        // A reservation of its own.
        let u = unit(vec![(0x5000, 64)], Vec::new());
        assert!(!u.in_slabs() && u.slab_ranges().is_empty() && u.rare.is_none());
    }

    /// The one-slab-range record is the general path's record for every unit it takes, and
    /// it leaves every other unit to the general path.
    #[test]
    fn one_slab_range_records_match_the_general_path() {
        let range = |slab, region, addr, size| SlabRange {
            slab: SlabId(slab),
            region,
            addr: ExecutorAddr(addr),
            size,
        };
        let other: Arc<dyn CodeMemory> = Arc::new(crate::memory::SlabMemory::new());
        let actions = Arc::new(Vec::new());
        // (segments, slab ranges, scope, other memory, link actions, fast path expected)
        type Case = (Vec<(u64, u64)>, Vec<SlabRange>, u32, bool, bool, bool);
        let cases: Vec<Case> = vec![
            (
                vec![(0x1000, 16)],
                vec![range(3, 1, 0x1000, 16)],
                0,
                false,
                false,
                true,
            ),
            (
                vec![(0x1000, 16)],
                vec![range(3, 2, 0x1000, 16)],
                7,
                false,
                false,
                true,
            ),
            (
                vec![(0x1000, 0xffff)],
                vec![range(0, 0, 0x1000, 0xffff)],
                0,
                false,
                false,
                true,
            ),
            // Not taken: a segment of 64 KiB, a slab or scope past 16 bits, a range that is
            // not the segment, a fourth region, two segments, no slab, other memory, actions.
            (
                vec![(0x1000, 0x10000)],
                vec![range(3, 0, 0x1000, 0x10000)],
                0,
                false,
                false,
                false,
            ),
            (
                vec![(0x1000, 16)],
                vec![range(0x10000, 0, 0x1000, 16)],
                0,
                false,
                false,
                false,
            ),
            (
                vec![(0x1000, 16)],
                vec![range(3, 0, 0x1000, 16)],
                0xffff,
                false,
                false,
                false,
            ),
            (
                vec![(0x1000, 16)],
                vec![range(3, 0, 0x1000, 16)],
                0x10000,
                false,
                false,
                false,
            ),
            (
                vec![(0x1000, 16)],
                vec![range(3, 0, 0x1000, 32)],
                0,
                false,
                false,
                false,
            ),
            (
                vec![(0x1000, 16)],
                vec![range(3, 0, 0x1008, 16)],
                0,
                false,
                false,
                false,
            ),
            (
                vec![(0x1000, 16)],
                vec![range(3, 3, 0x1000, 16)],
                0,
                false,
                false,
                false,
            ),
            (
                vec![(0x1000, 16), (0x9000, 8)],
                vec![range(3, 0, 0x1000, 16), range(3, 2, 0x9000, 8)],
                0,
                false,
                false,
                false,
            ),
            (vec![(0x1000, 16)], vec![], 0, false, false, false),
            (
                vec![(0x1000, 16)],
                vec![range(3, 0, 0x1000, 16)],
                0,
                true,
                false,
                false,
            ),
            (
                vec![(0x1000, 16)],
                vec![range(3, 0, 0x1000, 16)],
                0,
                false,
                true,
                false,
            ),
        ];
        for (segments, slab_ranges, scope, in_other, with_actions, fast) in cases {
            let new = || NewUnit {
                alloc: AllocId(5),
                scope: ScopeId(scope),
                memory: in_other.then(|| other.clone()),
                slab_ranges: &slab_ranges,
                segments: &segments,
                relink: None,
                link_actions: with_actions.then(|| actions.clone()),
                stats: None,
                map: None,
            };
            let general = Unit::new_general(new());
            let case = format!("{segments:x?} {slab_ranges:?} scope {scope}");
            match Unit::in_one_slab_range(&new()) {
                Some(u) => {
                    assert!(fast, "{case}: taken");
                    assert!(u.rare.is_none() && general.rare.is_none(), "{case}");
                    let fields = |u: &Unit| {
                        (
                            (u.alloc, u.seg_addr, u.seg_size, u.name, u.dep, u.dependent),
                            (u.slab, u.regions, u.scope, u.flags),
                            u.pins.load(Ordering::Relaxed),
                        )
                    };
                    assert_eq!(fields(&u), fields(&general), "{case}");
                }
                None => assert!(!fast, "{case}: not taken"),
            }
            // Either way, the record reads back what it was made of.
            let u = Unit::new(new());
            assert_eq!(&*u.segments(), &segments[..], "{case}");
            assert_eq!(&*u.slab_ranges(), &slab_ranges[..], "{case}");
            assert_eq!(u.scope(), ScopeId(scope), "{case}");
        }
    }
}
