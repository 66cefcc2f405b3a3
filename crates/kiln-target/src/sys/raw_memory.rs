//! Memory a VM shares with its JIT'd code: a heap, a value stack, frames. Machine code reads
//! and writes it at `base + offset`; Rust reads and writes it only through this type's copies
//! (atomic loads and stores of naturally aligned words, relaxed: plain `mov`s on x86-64), never
//! through references. So JIT'd code changing it while Rust holds a `&RawMemory` breaks no Rust
//! aliasing rule, and no safe call can reach outside it: every access is bounds checked.

use crate::{Error, ExecutorAddr, Result};
use rustix::mm::{MapFlags, ProtFlags};
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// A fixed-size region of read-write memory in this process, zeroed, whose address JIT'd code
/// may use. Pages are committed as they are first touched (a large region costs address space,
/// not memory, until used).
pub struct RawMemory {
    base: *mut u8,
    len: usize,
}

// SAFETY: the region is only ever accessed through atomic operations (or by JIT'd code, whose
// use of it is the VM's design), so sharing it between threads cannot make a Rust data race.
unsafe impl Send for RawMemory {}
// SAFETY: as above.
unsafe impl Sync for RawMemory {}

impl std::fmt::Debug for RawMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawMemory({:#x}..+{:#x})", self.base as u64, self.len)
    }
}

impl RawMemory {
    /// A zeroed region of `len` bytes (rounded up to pages), anywhere.
    pub fn new(len: usize) -> Result<RawMemory> {
        let page = super::mem::page_size() as usize;
        let len = len
            .checked_next_multiple_of(page)
            .filter(|l| *l > 0 && *l <= (1 << 40))
            .ok_or_else(|| Error::InvalidRequest(format!("a memory region of {len} bytes")))?;
        // SAFETY: a new private anonymous mapping where the kernel likes: no existing memory is
        // affected.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| Error::Reserve {
            size: len as u64,
            where_: String::new().into(),
            why: e.to_string().into(),
        })?;
        Ok(RawMemory {
            base: p.cast(),
            len,
        })
    }

    /// Where the region starts, for JIT'd code.
    pub fn base(&self) -> ExecutorAddr {
        ExecutorAddr(self.base as u64)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `[offset, offset + n)` lies inside, with `offset` a multiple of `align`.
    #[inline]
    fn check(&self, offset: usize, n: usize, align: usize) -> bool {
        offset.is_multiple_of(align) && offset.checked_add(n).is_some_and(|e| e <= self.len)
    }

    #[cold]
    fn out_of_bounds(&self, offset: usize, n: usize) -> ! {
        panic!(
            "RawMemory access of {n} bytes at offset {offset:#x} is outside its {:#x} bytes or misaligned",
            self.len
        )
    }

    /// The word at `offset` (a multiple of 8). Panics if it lies outside.
    #[inline]
    pub fn load_u64(&self, offset: usize) -> u64 {
        if !self.check(offset, 8, 8) {
            self.out_of_bounds(offset, 8)
        }
        // SAFETY: `offset..offset + 8` lies inside the mapping (checked) and is 8-byte aligned
        // (checked; the mapping is page aligned), and the mapping lives as long as `self`.
        unsafe { (*self.base.add(offset).cast::<AtomicU64>()).load(Ordering::Relaxed) }
    }

    /// Store the word at `offset` (a multiple of 8). Panics if it lies outside.
    #[inline]
    pub fn store_u64(&self, offset: usize, value: u64) {
        if !self.check(offset, 8, 8) {
            self.out_of_bounds(offset, 8)
        }
        // SAFETY: as in `load_u64`.
        unsafe { (*self.base.add(offset).cast::<AtomicU64>()).store(value, Ordering::Relaxed) }
    }

    /// The byte at `offset`. Panics if it lies outside.
    #[inline]
    pub fn load_u8(&self, offset: usize) -> u8 {
        if !self.check(offset, 1, 1) {
            self.out_of_bounds(offset, 1)
        }
        // SAFETY: inside the mapping (checked), which lives as long as `self`.
        unsafe { (*self.base.add(offset).cast::<AtomicU8>()).load(Ordering::Relaxed) }
    }

    /// Store the byte at `offset`. Panics if it lies outside.
    #[inline]
    pub fn store_u8(&self, offset: usize, value: u8) {
        if !self.check(offset, 1, 1) {
            self.out_of_bounds(offset, 1)
        }
        // SAFETY: as in `load_u8`.
        unsafe { (*self.base.add(offset).cast::<AtomicU8>()).store(value, Ordering::Relaxed) }
    }

    /// Copy `out.len()` bytes at `offset` out. Errors if they lie outside.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        if !self.check(offset, out.len(), 1) {
            return Err(self.range_error(offset, out.len()));
        }
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.load_u8(offset + i);
        }
        Ok(())
    }

    /// Copy `bytes` in at `offset`. Errors if they lie outside.
    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        if !self.check(offset, bytes.len(), 1) {
            return Err(self.range_error(offset, bytes.len()));
        }
        for (i, b) in bytes.iter().enumerate() {
            self.store_u8(offset + i, *b);
        }
        Ok(())
    }

    /// Copy `words` words from `from` to `to` (both multiples of 8; the ranges may overlap, as
    /// `memmove`). Errors if either lies outside.
    pub fn copy_words(&self, from: usize, to: usize, words: usize) -> Result<()> {
        let n = words
            .checked_mul(8)
            .ok_or_else(|| self.range_error(from, usize::MAX))?;
        if !self.check(from, n, 8) || !self.check(to, n, 8) {
            return Err(self.range_error(from.max(to), n));
        }
        if to <= from {
            for i in 0..words {
                self.store_u64(to + 8 * i, self.load_u64(from + 8 * i));
            }
        } else {
            for i in (0..words).rev() {
                self.store_u64(to + 8 * i, self.load_u64(from + 8 * i));
            }
        }
        Ok(())
    }

    fn range_error(&self, offset: usize, n: usize) -> Error {
        Error::InvalidRequest(format!(
            "{n} bytes at offset {offset:#x} do not lie inside a region of {:#x} bytes",
            self.len
        ))
    }
}

impl Drop for RawMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours; no Rust reference into it exists (every access copies),
        // and `&mut self` means no call is using it. JIT'd code that kept its address after the
        // region is dropped is the VM's bug, as a dangling pointer in C would be.
        let _ = unsafe { rustix::mm::munmap(self.base.cast::<c_void>(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_bytes_bounds() {
        let m = RawMemory::new(100).unwrap();
        assert!(m.len() >= 4096);
        m.store_u64(8, 0x1122_3344_5566_7788);
        assert_eq!(m.load_u64(8), 0x1122_3344_5566_7788);
        assert_eq!(m.load_u8(8), 0x88);
        m.store_u8(0, 7);
        let mut b = [0u8; 3];
        m.read(0, &mut b).unwrap();
        assert_eq!(b, [7, 0, 0]);
        assert!(m.read(m.len() - 1, &mut b).is_err());
        assert!(m.write(usize::MAX, &[1]).is_err());
        m.copy_words(8, 16, 1).unwrap();
        assert_eq!(m.load_u64(16), 0x1122_3344_5566_7788);
        assert!(m.copy_words(0, m.len() - 8, 2).is_err());
        assert!(
            std::panic::catch_unwind(|| m.load_u64(3)).is_err(),
            "misaligned"
        );
        assert!(
            std::panic::catch_unwind(|| m.load_u64(m.len())).is_err(),
            "outside"
        );
    }
}
