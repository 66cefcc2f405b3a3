//! An index from small integer ids to values set once, read without a lock: the in-process
//! executor's table of each slab ([`crate::sys`]'s `OwnedMemory`), found by the slab's id on
//! every unit linked into it. A lookup is two atomic loads and writes nothing, so threads
//! linking into different slabs share no cache line on the way to their slab's lock.

use std::sync::OnceLock;

/// Ids per slot of the first chunk; chunk `c` holds `FIRST << c` ids.
const FIRST: usize = 16;
/// Chunks enough for every id below [`LIMIT`].
const CHUNKS: usize = 21;
/// Ids at or above this are not stored (`FIRST * (2^CHUNKS - 1)`, past 2^24).
pub(crate) const LIMIT: u32 = (FIRST * ((1 << CHUNKS) - 1)) as u32;

/// Values indexed by `u32` ids below [`LIMIT`], each set at most once and kept until the index
/// goes. Chunks double in size and are made when first needed, so memory follows the highest
/// id set, and nothing moves once set (references stay valid).
pub(crate) struct OnceIndex<T> {
    chunks: [OnceLock<Box<[OnceLock<T>]>>; CHUNKS],
}

impl<T> Default for OnceIndex<T> {
    fn default() -> Self {
        OnceIndex {
            chunks: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

/// The chunk and the slot in it of `id` (chunk `c` starts at id `FIRST * (2^c - 1)`).
fn place(id: u32) -> Option<(usize, usize)> {
    if id >= LIMIT {
        return None;
    }
    let n = id as usize / FIRST + 1;
    let c = n.ilog2() as usize;
    Some((c, id as usize - FIRST * ((1 << c) - 1)))
}

impl<T> OnceIndex<T> {
    pub(crate) fn get(&self, id: u32) -> Option<&T> {
        // The first chunk's ids (a process's first slabs) without `place`'s arithmetic.
        if (id as usize) < FIRST {
            return self.chunks[0].get()?[id as usize].get();
        }
        let (c, i) = place(id)?;
        self.chunks[c].get()?[i].get()
    }

    /// Set `id`'s value; `Err(value)` when it is set already or `id` is past [`LIMIT`].
    pub(crate) fn set(&self, id: u32, value: T) -> Result<(), T> {
        let Some((c, i)) = place(id) else {
            return Err(value);
        };
        let chunk =
            self.chunks[c].get_or_init(|| (0..FIRST << c).map(|_| OnceLock::new()).collect());
        chunk[i].set(value)
    }

    /// Every value set, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(|(c, chunk)| Some((c, chunk.get()?)))
            .flat_map(|(c, chunk)| {
                let base = FIRST * ((1 << c) - 1);
                chunk
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, v)| Some(((base + i) as u32, v.get()?)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_to_distinct_slots_across_chunks() {
        let ix = OnceIndex::<u32>::default();
        let ids = [0, 1, 15, 16, 47, 48, 1000, 65535, LIMIT - 1];
        for id in ids {
            ix.set(id, id * 3).unwrap();
        }
        assert!(ix.set(16, 0).is_err(), "set twice");
        assert!(ix.set(LIMIT, 0).is_err(), "past the limit");
        for id in ids {
            assert_eq!(ix.get(id), Some(&(id * 3)));
        }
        for id in [2, 17, 999, 1001, LIMIT, u32::MAX] {
            assert_eq!(ix.get(id), None, "{id}");
        }
        let all: Vec<u32> = ix.iter().map(|(id, _)| id).collect();
        assert_eq!(all, ids, "in id order");
    }
}
