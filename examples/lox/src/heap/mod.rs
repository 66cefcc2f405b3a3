//! The Lox heap: a flat arena of words holding every object, collected by a moving (copying)
//! GC. See docs/lox.md ("Heap", "GC") for the layouts and the rules.
//!
//! The allocation protocol, which JIT'd code will follow too: `Vm::reserve(n)` may collect
//! (and so move every object and rewrite every root); after it, up to `n` words of `alloc`
//! succeed without collecting. Code that holds a `Value` in a Rust local across a `reserve`
//! holds a stale offset: keep values in roots (the value stack) and load them again.

pub mod gc;
pub mod layout;
pub mod memory;
pub mod objects;
pub mod strings;

use layout::Tag;
use memory::{MapError, Memory};
use strings::StringTable;

use crate::value::ObjRef;

/// Where the GC finds references. The VM implements it over its stack, frames, globals,
/// constants, open upvalues and inline caches.
pub trait RootSet {
    /// Calls `visit` on every strong root slot (Value bits); the slot is rewritten in place.
    fn visit_strong(&mut self, visit: &mut dyn FnMut(&mut u64));
    /// Calls `survivor` on every weak reference: it returns the new bits if the object survived
    /// and `None` if it died, and the holder drops the reference then.
    fn visit_weak(&mut self, survivor: &mut dyn Fn(u64) -> Option<u64>);
}

/// References to heap objects held outside the VM's own structures: the constants a template
/// JIT embeds in machine code (strings, classes, shapes of inline caches). The GC reads them
/// before it moves anything (reading code needs only a read-only view) and hands back the
/// updated references afterwards, so that the holder writes them all in one write window.
pub trait ExternalRoots {
    /// Appends every reference held (Value bits).
    fn read_roots(&self, out: &mut Vec<u64>);
    /// The same references, in the same order, after the move.
    fn write_roots(&mut self, updated: &[u64]);
}

#[derive(Default, Debug, Clone)]
pub struct HeapStats {
    pub collections: u64,
    pub bytes_allocated: u64,
    /// Bytes copied by the collector, over all collections.
    pub bytes_moved: u64,
    /// Reference slots rewritten by the collector (roots, fields, caches), over all collections.
    pub refs_updated: u64,
    pub peak_semispace_bytes: u64,
}

/// The heap could not grow to hold what the program keeps alive.
#[derive(Debug)]
pub struct HeapExhausted;

/// Semispace size to start with (1 MiB, the amount clox allocates before its first GC).
const INITIAL_WORDS: usize = 1 << 17;
/// Under --gc-stress the space starts small, so that each collection is cheap.
const STRESS_INITIAL_WORDS: usize = 1 << 10;
/// Each semispace stays below 1 GiB (so every object offset fits in 32 bits, which JIT'd code
/// relies on when it unboxes a reference).
pub const MAX_WORDS: usize = 1 << 27;
const _: () = assert!(MAX_WORDS * 8 <= 1 << 32);

pub struct Heap {
    pub mem: Memory,
    spare: Memory,
    pub strings: StringTable,
    pub stats: HeapStats,
    stress: bool,
    /// Scratch for packing string bytes.
    packed: Vec<u64>,
}

impl Heap {
    /// Maps both semispaces at their largest size (address space; pages are committed as
    /// the heap grows into them).
    pub fn new(stress: bool) -> Result<Heap, MapError> {
        let words = if stress {
            STRESS_INITIAL_WORDS
        } else {
            INITIAL_WORDS
        };
        let mut heap = Heap {
            mem: Memory::new(words, MAX_WORDS)?,
            spare: Memory::new(words, MAX_WORDS)?,
            strings: StringTable::new(),
            stats: HeapStats {
                peak_semispace_bytes: 8 * words as u64,
                ..HeapStats::default()
            },
            stress,
            packed: Vec::new(),
        };
        heap.publish_inline_limit();
        Ok(heap)
    }

    /// How far machine code may allocate inline in the current space: all of it, or nothing
    /// under --gc-stress (every allocation then goes to the runtime, which collects).
    fn publish_inline_limit(&mut self) {
        let limit = if self.stress {
            0
        } else {
            self.mem.capacity_words()
        };
        self.mem.set_inline_limit(limit);
    }

    /// Counts what machine code allocated inline (it bumps `top` itself).
    pub fn count_inline_bytes(&mut self, bytes: u64) {
        self.stats.bytes_allocated += bytes;
    }

    /// Whether an allocation of `words` must collect first.
    #[inline]
    pub fn needs_collection(&self, words: usize) -> bool {
        self.stress || self.mem.free_words() < words
    }

    /// Allocates from space reserved before (see the module comment); fields start as nil.
    #[inline]
    pub fn alloc(&mut self, tag: Tag, words: usize) -> ObjRef {
        self.stats.bytes_allocated += 8 * words as u64;
        match self.mem.bump(tag, words) {
            Some(r) => r,
            None => panic!("kiln-lox: allocation of {words} words without a reservation"),
        }
    }

    /// Copies everything reachable from `roots` into the other semispace, then makes sure
    /// `need_words` are free (growing both spaces if the live data fills half of one).
    pub fn collect(
        &mut self,
        roots: &mut dyn RootSet,
        need_words: usize,
    ) -> Result<(), HeapExhausted> {
        self.spare.reset();
        if self.spare.capacity_words() < self.mem.capacity_words() {
            self.spare.resize(self.mem.capacity_words());
        }
        let mut copier = gc::Copier::new(&mut self.mem, &mut self.spare);
        roots.visit_strong(&mut |slot| *slot = copier.forward(*slot));
        copier.scan();
        roots.visit_weak(&mut |word| copier.survivor(word));
        self.strings
            .sweep(copier.to_space(), |word| copier.survivor(word));
        self.stats.refs_updated += copier.refs_updated;

        std::mem::swap(&mut self.mem, &mut self.spare);
        self.stats.collections += 1;
        self.stats.bytes_moved += 8 * self.mem.used_words() as u64;
        if self.stress {
            self.spare.poison();
        }
        let grown = self.grow_for(need_words);
        self.publish_inline_limit();
        grown
    }

    /// Keeps at least half of the space free after a collection, and `need_words` at least.
    fn grow_for(&mut self, need_words: usize) -> Result<(), HeapExhausted> {
        let wanted = self
            .mem
            .used_words()
            .checked_add(need_words)
            .ok_or(HeapExhausted)?;
        let capacity = self.mem.capacity_words();
        if wanted <= capacity / 2 || (self.stress && wanted <= capacity) {
            return Ok(());
        }
        let new_capacity = (capacity * 2).max(wanted.saturating_mul(2)).min(MAX_WORDS);
        if new_capacity < wanted {
            return Err(HeapExhausted);
        }
        self.mem.resize(new_capacity);
        self.stats.peak_semispace_bytes =
            self.stats.peak_semispace_bytes.max(8 * new_capacity as u64);
        Ok(())
    }

    /// The interned string with these bytes, if any.
    pub fn find_string(&mut self, bytes: &[u8]) -> Option<ObjRef> {
        strings::pack(bytes, &mut self.packed);
        self.strings.find(
            &self.mem,
            &self.packed,
            bytes.len(),
            strings::hash_bytes(bytes),
        )
    }

    /// Allocates and interns a string known not to be interned yet, from reserved space
    /// (`strings::string_words(bytes.len())` words).
    pub fn alloc_string(&mut self, bytes: &[u8]) -> ObjRef {
        strings::pack(bytes, &mut self.packed);
        let s = self.alloc(Tag::String, strings::string_words(bytes.len()));
        let hash = strings::hash_bytes(bytes);
        self.mem.store(
            s,
            layout::string::LEN_HASH,
            strings::len_hash(bytes.len(), hash),
        );
        self.mem
            .copy_words_in(s, layout::string::BYTES, &self.packed);
        self.strings.insert(&self.mem, s);
        s
    }
}
