//! The VM region: one `kiln_target::RawMemory` mapping that holds everything, besides the heap,
//! that JIT'd code reads or writes — a context block, the frame records, the value stack, the
//! globals, the constants, the inline caches and the table of code entries per prototype.
//!
//! JIT'd code keeps the region's base in a register (`r12`) and reaches every part of it as
//! `[r12 + OFFSET + 8*index]`: the whole region is far below 2 GiB, so every offset is a 32-bit
//! displacement. The region never moves while the VM lives. Rust reaches it only through the
//! copies `RawMemory` makes (no references), so JIT'd code writing it during a call is sound.
//!
//! Every table is a power-of-two array indexed with a mask, so a safe access never panics; the
//! VM keeps indices in range by construction (the compiler refuses programs that would pass a
//! table's capacity, calls check `max_stack`, frames are limited to `FRAMES_MAX`).
//!
//! ```text
//! offset        what                              entry
//! 0x0000        context block (ctx::*)
//! 0x1000        frame records (FRAMES_MAX)         4 words: closure, ip, base, native return
//! 0x2000        value stack (STACK_SLOTS)          1 word (a Value)
//! 0x0010_0000   globals (MAX_GLOBALS)              1 word (a Value, or UNDEFINED)
//! 0x0100_0000   constants (MAX_CONSTANTS)          1 word (a Value)
//! 0x0400_0000   inline caches (MAX_ICS)            8 entries of 4 words: key, kind, slot, target
//! 0x2400_0000   code entries (MAX_PROTOS)          1 word: address JIT'd code calls for it
//! ```

use kiln_target::RawMemory;

use super::stack::{frame, FRAMES_MAX, STACK_SLOTS};
use crate::bytecode::{IcKind, InlineCache};
use crate::value::Value;

/// Byte offsets of the context block's words.
pub mod ctx {
    /// Address of word 0 of the current semispace (changes at every collection).
    pub const HEAP_BASE: i32 = 0;
    /// Address of the first free value-stack slot, stored by JIT'd code before it calls a
    /// runtime helper (the helper's `sp`).
    pub const JIT_SP: i32 = 8;
    /// Frames in use.
    pub const FRAME_COUNT: i32 = 16;
    /// Open upvalues, highest stack slot first (a Value: an upvalue or nil).
    pub const OPEN_UPVALUES: i32 = 24;
    /// Nonzero while a runtime error unwinds through JIT'd code (a byte).
    pub const ERROR: i32 = 32;
    /// Inline-cache hits counted by JIT'd code, one word per kind of site (`Site`).
    pub const JIT_IC_HITS: i32 = 64;
    /// Bytes JIT'd code allocated inline (for `--stats`).
    pub const JIT_ALLOCATED: i32 = 96;
}

pub const FRAMES_OFFSET: usize = 0x1000;
pub const STACK_OFFSET: usize = 0x2000;
pub const GLOBALS_OFFSET: usize = 0x10_0000;
pub const CONSTANTS_OFFSET: usize = 0x100_0000;
pub const ICS_OFFSET: usize = 0x400_0000;
pub const ENTRIES_OFFSET: usize = 0x2400_0000;
const REGION_BYTES: usize = ENTRIES_OFFSET + MAX_PROTOS * 8;

pub const MAX_GLOBALS: usize = 1 << 20;
pub const MAX_CONSTANTS: usize = 1 << 22;
pub const MAX_ICS: usize = 1 << 21;
pub const MAX_PROTOS: usize = 1 << 21;

/// An inline cache: `ENTRIES` entries of `ENTRY_WORDS` words (a polymorphic cache). Entry 0
/// is the one both tiers test inline; the others are searched on a miss of entry 0. A new
/// shape goes into the first empty entry (entry 0 first); when all are taken, entries 1…
/// shift down and it takes the last.
pub mod ic {
    /// Value bits of the shape (or class, for `super`) the entry is for; nil when empty.
    pub const KEY: usize = 0;
    /// `IcKind` as a raw number.
    pub const KIND: usize = 1;
    /// Raw field slot (instance word or overflow element).
    pub const SLOT: usize = 2;
    /// Value bits of the method closure or the new shape; nil when unused.
    pub const TARGET: usize = 3;
    pub const ENTRY_WORDS: usize = 4;
    pub const ENTRIES: usize = 8;
    pub const WORDS: usize = ENTRY_WORDS * ENTRIES;
}

const _: () = {
    assert!(FRAMES_OFFSET + FRAMES_MAX * frame::WORDS * 8 <= STACK_OFFSET);
    assert!(STACK_OFFSET + STACK_SLOTS * 8 <= GLOBALS_OFFSET);
    assert!(GLOBALS_OFFSET + MAX_GLOBALS * 8 <= CONSTANTS_OFFSET);
    assert!(CONSTANTS_OFFSET + MAX_CONSTANTS * 8 <= ICS_OFFSET);
    assert!(ICS_OFFSET + MAX_ICS * ic::WORDS * 8 <= ENTRIES_OFFSET);
    // Every part is reachable with a 32-bit displacement from the base.
    assert!(REGION_BYTES < 1 << 31);
};

impl IcKind {
    pub fn to_raw(self) -> u64 {
        match self {
            IcKind::Empty => 0,
            IcKind::InlineField => 1,
            IcKind::OverflowField => 2,
            IcKind::Method => 3,
            IcKind::AddInlineField => 4,
        }
    }

    pub fn from_raw(raw: u64) -> IcKind {
        match raw {
            1 => IcKind::InlineField,
            2 => IcKind::OverflowField,
            3 => IcKind::Method,
            4 => IcKind::AddInlineField,
            _ => IcKind::Empty,
        }
    }
}

pub struct VmRegion {
    raw: RawMemory,
}

#[inline]
fn masked(index: usize, capacity: usize) -> usize {
    index & (capacity - 1)
}

impl VmRegion {
    pub fn new() -> Result<VmRegion, String> {
        let raw = RawMemory::new(REGION_BYTES).map_err(|e| e.to_string())?;
        let region = VmRegion { raw };
        region.set_open_upvalues(Value::NIL);
        for slot in 0..STACK_SLOTS {
            region.set_stack(slot, Value::NIL);
        }
        Ok(region)
    }

    /// The region's address: JIT'd code's `r12`, and the context pointer runtime helpers get.
    pub fn base_address(&self) -> u64 {
        self.raw.base().0
    }

    #[inline]
    fn word(&self, offset: usize) -> u64 {
        self.raw.load_u64(offset)
    }

    #[inline]
    fn set_word(&self, offset: usize, word: u64) {
        self.raw.store_u64(offset, word)
    }

    // ---- context block ----

    pub fn ctx_word(&self, field: i32) -> u64 {
        self.word(field as usize)
    }

    pub fn set_ctx_word(&self, field: i32, word: u64) {
        self.set_word(field as usize, word)
    }

    #[inline]
    pub fn frame_count(&self) -> usize {
        self.word(ctx::FRAME_COUNT as usize) as usize
    }

    #[inline]
    pub fn set_frame_count(&self, count: usize) {
        self.set_word(ctx::FRAME_COUNT as usize, count as u64)
    }

    #[inline]
    pub fn open_upvalues(&self) -> Value {
        Value(self.word(ctx::OPEN_UPVALUES as usize))
    }

    #[inline]
    pub fn set_open_upvalues(&self, value: Value) {
        self.set_word(ctx::OPEN_UPVALUES as usize, value.0)
    }

    // ---- value stack ----

    #[inline]
    fn stack_offset(slot: usize) -> usize {
        STACK_OFFSET + 8 * masked(slot, STACK_SLOTS)
    }

    #[inline]
    pub fn stack(&self, slot: usize) -> Value {
        Value(self.word(Self::stack_offset(slot)))
    }

    #[inline]
    pub fn set_stack(&self, slot: usize, value: Value) {
        self.set_word(Self::stack_offset(slot), value.0)
    }

    /// The stack slot whose address is `address` (as JIT'd code stores it in `ctx::JIT_SP`).
    pub fn stack_slot_of(&self, address: u64) -> usize {
        let offset = address.wrapping_sub(self.base_address() + STACK_OFFSET as u64) / 8;
        (offset as usize).min(STACK_SLOTS)
    }

    // ---- frames ----

    #[inline]
    fn frame_offset(index: usize, field: usize) -> usize {
        FRAMES_OFFSET + 8 * masked(index * frame::WORDS + field, FRAMES_MAX * frame::WORDS)
    }

    #[inline]
    pub fn frame_closure(&self, index: usize) -> Value {
        Value(self.word(Self::frame_offset(index, frame::CLOSURE)))
    }

    #[inline]
    pub fn set_frame_closure(&self, index: usize, closure: Value) {
        self.set_word(Self::frame_offset(index, frame::CLOSURE), closure.0)
    }

    #[inline]
    pub fn frame_ip(&self, index: usize) -> usize {
        self.word(Self::frame_offset(index, frame::IP)) as usize
    }

    #[inline]
    pub fn set_frame_ip(&self, index: usize, ip: usize) {
        self.set_word(Self::frame_offset(index, frame::IP), ip as u64)
    }

    #[inline]
    pub fn frame_base(&self, index: usize) -> usize {
        self.word(Self::frame_offset(index, frame::BASE)) as usize
    }

    /// Fills frame record `index` for an interpreted frame.
    #[inline]
    pub fn set_frame(&self, index: usize, closure: Value, ip: usize, base: usize) {
        self.set_word(Self::frame_offset(index, frame::CLOSURE), closure.0);
        self.set_word(Self::frame_offset(index, frame::IP), ip as u64);
        self.set_word(Self::frame_offset(index, frame::BASE), base as u64);
        self.set_word(Self::frame_offset(index, frame::NATIVE_RETURN), 0);
    }

    // ---- globals, constants ----

    #[inline]
    pub fn global(&self, slot: usize) -> Value {
        Value(self.word(GLOBALS_OFFSET + 8 * masked(slot, MAX_GLOBALS)))
    }

    #[inline]
    pub fn set_global(&self, slot: usize, value: Value) {
        self.set_word(GLOBALS_OFFSET + 8 * masked(slot, MAX_GLOBALS), value.0)
    }

    #[inline]
    pub fn constant(&self, index: usize) -> Value {
        Value(self.word(CONSTANTS_OFFSET + 8 * masked(index, MAX_CONSTANTS)))
    }

    #[inline]
    pub fn set_constant(&self, index: usize, value: Value) {
        self.set_word(CONSTANTS_OFFSET + 8 * masked(index, MAX_CONSTANTS), value.0)
    }

    // ---- inline caches ----

    /// Word `word` of entry 0 of cache `index`; the other entries follow at `ENTRY_WORDS`.
    #[inline]
    fn ic_offset(index: usize, word: usize) -> usize {
        ICS_OFFSET + 8 * (masked(index, MAX_ICS) * ic::WORDS + word)
    }

    fn entry_offset(index: usize, entry: usize, word: usize) -> usize {
        Self::ic_offset(index, (entry % ic::ENTRIES) * ic::ENTRY_WORDS + word)
    }

    /// Entry `entry` of cache `index`.
    pub fn ic_entry(&self, index: usize, entry: usize) -> InlineCache {
        let word = |w| self.word(Self::entry_offset(index, entry, w));
        InlineCache {
            key: word(ic::KEY),
            kind: IcKind::from_raw(word(ic::KIND)),
            slot: word(ic::SLOT) as u32,
            target: word(ic::TARGET),
        }
    }

    fn set_ic_entry(&self, index: usize, entry: usize, cache: &InlineCache) {
        self.set_word(Self::entry_offset(index, entry, ic::KEY), cache.key);
        self.set_word(
            Self::entry_offset(index, entry, ic::KIND),
            cache.kind.to_raw(),
        );
        self.set_word(
            Self::entry_offset(index, entry, ic::SLOT),
            u64::from(cache.slot),
        );
        self.set_word(Self::entry_offset(index, entry, ic::TARGET), cache.target);
    }

    /// The entry of cache `index` for `key` (a shape, or a class for `super`), if any.
    pub fn ic_find(&self, index: usize, key: u64) -> Option<InlineCache> {
        self.ic_position(index, key)
            .map(|e| self.ic_entry(index, e))
    }

    fn ic_position(&self, index: usize, key: u64) -> Option<usize> {
        (0..ic::ENTRIES).find(|&e| {
            self.word(Self::entry_offset(index, e, ic::KEY)) == key
                && self.word(Self::entry_offset(index, e, ic::KIND)) != IcKind::Empty.to_raw()
        })
    }

    /// As `ic_find`, for a slow path: an entry found after entry 0 swaps places with it, so
    /// that a site whose receivers change from one phase of the program to the next hits
    /// inline again.
    pub fn ic_lookup(&self, index: usize, key: u64) -> Option<InlineCache> {
        let entry = self.ic_position(index, key)?;
        let found = self.ic_entry(index, entry);
        if entry > 0 {
            let first = self.ic_entry(index, 0);
            self.set_ic_entry(index, entry, &first);
            self.set_ic_entry(index, 0, &found);
        }
        Some(found)
    }

    /// Records what a miss learned: replaces the entry for the same key, or takes the first
    /// empty one, or (all taken) shifts entries 1… down and takes the last.
    pub fn ic_learn(&self, index: usize, cache: &InlineCache) {
        let entries: Vec<InlineCache> = (0..ic::ENTRIES).map(|e| self.ic_entry(index, e)).collect();
        let same = entries
            .iter()
            .position(|c| c.kind != IcKind::Empty && c.key == cache.key);
        let empty = entries.iter().position(|c| c.kind == IcKind::Empty);
        match same.or(empty) {
            Some(entry) => self.set_ic_entry(index, entry, cache),
            None => {
                for e in 1..ic::ENTRIES - 1 {
                    self.set_ic_entry(index, e, &entries[e + 1]);
                }
                self.set_ic_entry(index, ic::ENTRIES - 1, cache);
            }
        }
    }

    #[inline]
    pub fn ic_key(&self, index: usize) -> u64 {
        self.word(Self::ic_offset(index, ic::KEY))
    }

    #[inline]
    pub fn ic_kind(&self, index: usize) -> IcKind {
        IcKind::from_raw(self.word(Self::ic_offset(index, ic::KIND)))
    }

    #[inline]
    pub fn ic_slot(&self, index: usize) -> usize {
        self.word(Self::ic_offset(index, ic::SLOT)) as usize
    }

    #[inline]
    pub fn ic_target(&self, index: usize) -> u64 {
        self.word(Self::ic_offset(index, ic::TARGET))
    }

    /// Empties every entry of cache `index`.
    pub fn clear_ic(&self, index: usize) {
        for entry in 0..ic::ENTRIES {
            self.set_ic_entry(index, entry, &InlineCache::empty());
        }
    }

    /// After a collection: each entry's key and target at their new places, and the entries
    /// whose key or target died emptied (`survivor` as in `RootSet::visit_weak`).
    pub fn sweep_ic(&self, index: usize, survivor: &mut dyn Fn(u64) -> Option<u64>) -> u64 {
        let mut updated = 0;
        for entry in 0..ic::ENTRIES {
            let cache = self.ic_entry(index, entry);
            if cache.kind == IcKind::Empty {
                continue;
            }
            match (survivor(cache.key), survivor(cache.target)) {
                (Some(key), Some(target)) => {
                    self.set_word(Self::entry_offset(index, entry, ic::KEY), key);
                    self.set_word(Self::entry_offset(index, entry, ic::TARGET), target);
                    updated += 1;
                }
                _ => self.set_ic_entry(index, entry, &InlineCache::empty()),
            }
        }
        updated
    }

    // ---- code entries ----

    /// Sets the address JIT'd code calls to run prototype `proto` (its code, or the
    /// interpreter bridge).
    pub fn set_entry(&self, proto: usize, address: u64) {
        self.set_word(ENTRIES_OFFSET + 8 * masked(proto, MAX_PROTOS), address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(key: u64, target: u64) -> InlineCache {
        InlineCache {
            key,
            kind: IcKind::Method,
            slot: 0,
            target,
        }
    }

    #[test]
    fn polymorphic_cache_fills_replaces_and_shifts() {
        let region = VmRegion::new().expect("map the region");
        region.clear_ic(7);
        for key in 0..ic::ENTRIES as u64 {
            region.ic_learn(7, &method(100 + key, key));
        }
        // Entry 0 is the first key seen, the others in order.
        assert_eq!(region.ic_key(7), 100);
        for key in 0..ic::ENTRIES as u64 {
            assert_eq!(region.ic_find(7, 100 + key), Some(method(100 + key, key)));
        }
        // The same key again replaces its entry in place.
        region.ic_learn(7, &method(103, 42));
        assert_eq!(region.ic_entry(7, 3), method(103, 42));
        // Full: entry 0 stays, entries 1… shift down, the new key takes the last.
        region.ic_learn(7, &method(200, 9));
        assert_eq!(region.ic_key(7), 100);
        assert_eq!(
            region.ic_find(7, 101),
            None,
            "the oldest after entry 0 is gone"
        );
        assert_eq!(region.ic_entry(7, ic::ENTRIES - 1), method(200, 9));
        assert_eq!(region.ic_entry(7, 1).key, 102);
        // A slow path's hit moves its entry to the front.
        assert_eq!(region.ic_lookup(7, 105), Some(method(105, 5)));
        assert_eq!(region.ic_entry(7, 0), method(105, 5));
        assert_eq!(
            region.ic_find(7, 100),
            Some(method(100, 0)),
            "entry 0 moved, not lost"
        );
        // A collection empties the entries whose key died and moves the others.
        let moved = region.sweep_ic(7, &mut |w| (w != 104).then_some(w + 1000));
        assert_eq!(moved as usize, ic::ENTRIES - 1);
        assert_eq!(region.ic_find(7, 104), None);
        assert_eq!(region.ic_find(7, 1100), Some(method(1100, 1000)));
        // Caches do not overlap.
        region.clear_ic(8);
        assert_eq!(region.ic_find(8, 1100), None);
        assert_eq!(region.ic_key(7), 1105);
    }
}
