//! Slabs: shared anonymous memory mapped twice. The view where code runs has the final
//! protections (code `r-x`, read-only data `r--`, data `rw-`) and never changes; a second,
//! writable view of the code and read-only regions (the alias, made with `mremap` of size 0,
//! which duplicates a shared mapping) is where the linker writes new units and patchers change
//! finalized code. No page is writable and executable at the same address.
//!
//! Anonymous rather than a memfd: the kernel names shared anonymous memory `/dev/zero`, which
//! perf treats as JIT memory and resolves through `/tmp/perf-PID.map`; a memfd shows up as a
//! file perf cannot read. (An executor in another process needs a memfd to share the pages.)
//!
//! Who may write where is decided by the owner: the executor's ownership table
//! (`crate::table`) for a [`Slab`], the slab's own claims for a [`SharedSlab`]. The raw writes
//! of [`WriteView`] are `unsafe fn`s whose contract is that decision.

use crate::ranges::RangeSet;
use crate::{Error, ExecutorAddr, Placement, Result, SlabId, SlabInfo, SlabWrite};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, MprotectFlags, MremapFlags, ProtFlags};
use std::ffi::c_void;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// A slab of this process, owned by an executor's table. Dropping it unmaps it: the table gives
/// a slab up only when no allocation lives in it and nobody writes it (otherwise the executor
/// leaks it rather than drop it).
pub(crate) struct Slab {
    pub(crate) info: SlabInfo,
    /// The memfd behind the views, when they could not be made from anonymous memory or the
    /// slab is shared with another process.
    fd: Option<OwnedFd>,
    exec_base: u64,
    total: u64,
    alias_base: u64,
    alias_len: u64,
    view: WriteView,
    populated: Populated,
}

/// Where each region of a slab can be written in this process: the alias (or, in a controller,
/// its own mapping of the executor's memfd) for code and read-only data, the data region itself
/// where the code runs in the executor. All writes, fills, working slices and patches go through
/// this one piece of code, on both sides of a shared-memory executor.
#[derive(Copy, Clone, Debug)]
pub(crate) struct WriteView {
    pub(crate) info: SlabInfo,
    /// Host address at which each region's first byte is writable.
    bases: [u64; 3],
}

fn os_err(what: &str, e: rustix::io::Errno) -> Error {
    Error::Memory {
        addr: ExecutorAddr(0),
        size: 0,
        why: format!("{what}: {e}").into(),
    }
}

/// Map a memfd over `[base, base+total)` (shared, read-write) and once more, its first
/// `alias_len` bytes, elsewhere: (alias address, the memfd). `[base, base+total)` must be a
/// reservation of the caller's that nothing uses yet.
fn memfd_views(base: u64, total: u64, alias_len: u64) -> Result<(u64, OwnedFd)> {
    let fd = rustix::fs::memfd_create(
        c"kiln-slab",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| os_err("memfd_create", e))?;
    rustix::fs::ftruncate(&fd, total).map_err(|e| os_err("ftruncate", e))?;
    // Its size is final: a process we share it with can rely on every page staying backed
    // (shrinking would turn its accesses into SIGBUS).
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(|e| os_err("sealing the slab's memfd", e))?;
    let rw = ProtFlags::READ | ProtFlags::WRITE;
    // SAFETY: [base, base+total) is the caller's fresh reservation (this function's
    // contract); MAP_FIXED replaces only its pages.
    unsafe {
        rustix::mm::mmap(
            base as *mut c_void,
            total as usize,
            rw,
            MapFlags::SHARED | MapFlags::FIXED,
            &fd,
            0,
        )
    }
    .map_err(|e| os_err("mmap (slab view)", e))?;
    if alias_len == 0 {
        return Ok((0, fd));
    }
    // SAFETY: a new shared mapping of our memfd at an address the kernel picks.
    let a = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            alias_len as usize,
            rw,
            MapFlags::SHARED,
            &fd,
            0,
        )
    }
    .map_err(|e| os_err("mmap (slab alias)", e))?;
    Ok((a as u64, fd))
}

impl Slab {
    /// A slab in this process. `shared`: always back it with a memfd (see [`Slab::memfd`]), so
    /// that another process (a controller) can map the same pages.
    pub(crate) fn create(
        id: SlabId,
        sizes: [u64; 3],
        placement: Placement,
        shared: bool,
    ) -> Result<Slab> {
        let page = super::mem::page_size();
        let total = sizes.iter().try_fold(0u64, |a, s| a.checked_add(*s));
        let total = match total {
            Some(t) if t > 0 && t <= (1 << 40) && sizes.iter().all(|s| s.is_multiple_of(page)) => t,
            _ => {
                return Err(Error::InvalidRequest(format!(
                    "slab region sizes {sizes:?} must be page multiples, not all zero, at \
                     most 1 TiB in all"
                )))
            }
        };
        // The exec view: reserve the range (placed as asked), put shared memory over it, then
        // give each region its final protection.
        let base = super::mem::reserve(total, placement)?.0;
        let (alias_base, fd) = match Self::map_views(base, sizes, total, shared) {
            Ok(v) => v,
            Err(e) => {
                // SAFETY: the reservation we just made; nothing else knows it.
                let _ = unsafe { super::mem::release(ExecutorAddr(base), total) };
                return Err(e);
            }
        };
        let alias_len = sizes[0] + sizes[1];
        let mut regions = [(ExecutorAddr(0), 0u64); 3];
        let mut off = 0u64;
        for (i, &size) in sizes.iter().enumerate() {
            regions[i] = (ExecutorAddr(base + off), size);
            off += size;
        }
        let info = SlabInfo { id, regions };
        let slab = Slab {
            info,
            fd,
            exec_base: base,
            total,
            alias_base,
            alias_len,
            view: WriteView {
                info,
                bases: [
                    alias_base,
                    alias_base + sizes[0],
                    regions[2].0 .0, // data is written where it lives
                ],
            },
            populated: Populated::default(),
        };
        let prots = [
            MprotectFlags::READ | MprotectFlags::EXEC,
            MprotectFlags::READ,
            MprotectFlags::READ | MprotectFlags::WRITE,
        ];
        for (&(start, size), &prot) in regions.iter().zip(&prots) {
            if size == 0 {
                continue;
            }
            // SAFETY: a region of the slab mapping we just made; nothing runs from it yet.
            unsafe { rustix::mm::mprotect(start.0 as *mut c_void, size as usize, prot) }
                .map_err(|e| os_err("mprotect (slab region)", e))?; // dropping `slab` unmaps
        }
        Ok(slab)
    }

    /// Shared memory over the reservation `[base, base + total)`, and the alias of its first
    /// two regions: (alias address, memfd if one was needed).
    fn map_views(
        base: u64,
        sizes: [u64; 3],
        total: u64,
        shared: bool,
    ) -> Result<(u64, Option<OwnedFd>)> {
        let alias_len = sizes[0] + sizes[1];
        if shared {
            let (a, fd) = memfd_views(base, total, alias_len)?;
            return Ok((a, Some(fd)));
        }
        // SAFETY: [base, base+total) is the reservation the caller just made and owns; MAP_FIXED
        // replaces only its PROT_NONE pages.
        unsafe {
            rustix::mm::mmap_anonymous(
                base as *mut c_void,
                total as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| os_err("mmap (slab)", e))?;
        if alias_len == 0 {
            return Ok((0, None));
        }
        // SAFETY: mremap with old size 0 on a shared mapping creates a second mapping of the
        // same pages at an address the kernel picks; the original stays as it is.
        let a = unsafe {
            rustix::mm::mremap(
                base as *mut c_void,
                0,
                alias_len as usize,
                MremapFlags::MAYMOVE,
            )
        };
        match a {
            Ok(a) => Ok((a as u64, None)),
            // Not everywhere (valgrind refuses it): the same two views from a memfd.
            Err(_) => {
                let (a, fd) = memfd_views(base, total, alias_len)?;
                Ok((a, Some(fd)))
            }
        }
    }

    /// The memfd behind this slab's pages, if it has one (always, when created `shared`).
    pub(crate) fn memfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fd.as_ref().map(|f| f.as_fd())
    }

    pub(crate) fn view(&self) -> WriteView {
        self.view
    }

    /// A writable slice over `[addr, addr + len)` through the write view, its pages populated
    /// first: [`Slab::populate_for`] then [`WriteView::slice_mut`], with the region found once
    /// (a one-segment unit's writer; each step searched the regions, about 15 instructions).
    ///
    /// # Safety
    /// As [`WriteView::slice_mut`]: the mapping stays alive, and the range is the caller's
    /// alone (claimed), for as long as the slice lives.
    #[inline]
    pub(crate) unsafe fn slice_for_write<'a>(&self, addr: u64, len: u64) -> Result<&'a mut [u8]> {
        let view = &self.view;
        let region = addr.checked_add(len).filter(|_| len > 0).and_then(|end| {
            (view.info.regions.iter())
                .position(|&(start, size)| start.0 <= addr && end <= start.0 + size)
        });
        let Some(r) = region else {
            // Empty, or outside every region (refused): the two steps as they are.
            self.populate_for(addr, len);
            // SAFETY: this function's contract.
            return unsafe { view.slice_mut(addr, len) };
        };
        let offset = addr - view.info.regions[r].0 .0;
        self.populated
            .before_write_in(view, r, offset, offset + len);
        let p = (view.bases[r] + offset) as *mut u8;
        // SAFETY: `[p, p + len)` is `[addr, addr + len)` of region `r` (checked above: inside
        // it) in the writable mapping of this slab, alive and exclusive for the slice's
        // lifetime (this function's contract).
        Ok(unsafe { std::slice::from_raw_parts_mut(p, len as usize) })
    }

    /// Before `len` bytes at `addr` are written through the write view (see [`Populated`]).
    pub(crate) fn populate_for(&self, addr: u64, len: u64) {
        self.populated.before_write(&self.view, addr, len);
    }
}

/// How far from the start of each of a write view's code and read-only regions its pages are
/// known populated; `u64::MAX` once the kernel refused to populate.
///
/// A JIT writes its units one after another into fresh pages, and a first write to a page of
/// shared memory is a page fault: 11% of a one-function link's time on this machine's virtual
/// CPUs (`perf record` of the bench's `link_function` row). Before a write, the pages it covers
/// and [`POPULATE_AHEAD`] bytes past it are populated with one
/// `madvise(MADV_POPULATE_WRITE)`, which costs about 60% of what the faults cost (measured the
/// same way). At most `POPULATE_AHEAD` bytes become resident before they are written. Only a
/// hint: on a kernel without it (before 5.14) the writes fault as before.
#[derive(Default)]
struct Populated([AtomicU64; 2]);

impl Populated {
    fn before_write(&self, view: &WriteView, addr: u64, len: u64) {
        let starts_in = |r: &usize| {
            let (start, size) = view.info.regions[*r];
            addr >= start.0 && addr - start.0 < size
        };
        if let Some(r) = (0..self.0.len()).find(starts_in) {
            let (start, size) = view.info.regions[r];
            let from = addr - start.0;
            self.before_write_in(view, r, from, from.saturating_add(len).min(size));
        }
    }

    /// [`Populated::before_write`] for a write of `[from, end)` (offsets, `end` within the
    /// region) in region `r`, known to hold it.
    #[inline(always)]
    fn before_write_in(&self, view: &WriteView, r: usize, from: u64, end: u64) {
        if let Some(mark) = self.0.get(r) {
            if end > mark.load(Ordering::Relaxed) {
                self.populate(view, r, from, end);
            }
        }
    }

    /// [`Populated::before_write`]'s work, out of line (once per `POPULATE_AHEAD` bytes
    /// written): populate region `r` of `view` over `[from, end)` (offsets in the region) and
    /// on to `POPULATE_AHEAD` past it, from where it is already populated or from `from`'s page.
    #[cold]
    #[inline(never)]
    fn populate(&self, view: &WriteView, r: usize, from: u64, end: u64) {
        let page = super::mem::page_size();
        let size = view.info.regions[r].1;
        let mark = &self.0[r];
        let known = mark.load(Ordering::Relaxed);
        if known == u64::MAX {
            return;
        }
        let first = (from - from % page).max(known.min(end));
        let last = end
            .saturating_add(POPULATE_AHEAD)
            .next_multiple_of(page)
            .min(size);
        if first >= last {
            return;
        }
        let at = view.bases[r] + first;
        // SAFETY: `[at, at + last - first)` lies inside `view`'s live mapping of region `r`
        // (`first < last <= size`; `first` and `size` page multiples). MADV_POPULATE_WRITE only
        // faults its pages in, writable, as a write would, without changing a byte: whoever
        // else writes, reads or runs these pages sees no difference.
        let done = unsafe {
            rustix::mm::madvise(
                at as *mut c_void,
                (last - first) as usize,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
        match done {
            Ok(()) => mark.fetch_max(last, Ordering::Relaxed),
            // Not supported here, or out of memory for now: the writes fault the pages in.
            Err(_) => mark.swap(u64::MAX, Ordering::Relaxed),
        };
    }
}

/// How far past a write [`Populated`] populates a slab's write view (16 pages).
const POPULATE_AHEAD: u64 = 64 * 1024;

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: both mappings are this slab's own; a `Slab` is dropped only once its owner's
        // table showed no allocation living in it and no writer in it (or it failed to finish
        // creation), and no slice of it outlives a claim.
        unsafe {
            let _ = rustix::mm::munmap(self.exec_base as *mut c_void, self.total as usize);
            if self.alias_len > 0 {
                let _ = rustix::mm::munmap(self.alias_base as *mut c_void, self.alias_len as usize);
            }
        }
    }
}

impl WriteView {
    /// Where to write `len` bytes at executor address `addr`. `None` if the range is not
    /// inside one region (an empty range: in a region or at its end).
    fn writable(&self, addr: u64, len: u64) -> Option<*mut u8> {
        let end = addr.checked_add(len)?;
        for (i, (start, size)) in self.info.regions.iter().enumerate() {
            if start.0 <= addr && end <= start.0 + size {
                return Some((self.bases[i] + (addr - start.0)) as *mut u8);
            }
        }
        None
    }

    fn outside(&self, addr: u64, len: u64) -> Error {
        Error::NotOwned {
            addr: ExecutorAddr(addr),
            size: len,
            what: "inside one region of the slab".into(),
        }
    }

    /// Apply one write.
    ///
    /// # Safety
    /// The mapping is alive, and the range written is the caller's alone until this returns (no
    /// reference to it exists, no other writer; see the module's note on ownership).
    pub(crate) unsafe fn write(&self, w: &SlabWrite<'_>) -> Result<()> {
        let (addr, len) = write_range(w);
        let dst = self
            .writable(addr, len)
            .ok_or_else(|| self.outside(addr, len))?;
        match w {
            // SAFETY: `dst..dst+len` is inside a writable mapping of this slab (checked by
            // `writable`), the caller's alone; the source is a caller's slice in this
            // process's heap, not slab memory, so they do not overlap.
            SlabWrite::Bytes(_, b) => unsafe {
                std::ptr::copy_nonoverlapping(b.as_ptr(), dst, b.len())
            },
            // SAFETY: as above.
            SlabWrite::Fill(_, n, byte) => unsafe {
                std::ptr::write_bytes(dst, *byte, *n as usize)
            },
        }
        Ok(())
    }

    /// A writable slice over `[addr, addr + len)`, of whatever lifetime the caller picks.
    ///
    /// # Safety
    /// The mapping stays alive, and the range is the caller's alone (claimed), for as long as
    /// the slice lives.
    pub(crate) unsafe fn slice_mut<'a>(&self, addr: u64, len: u64) -> Result<&'a mut [u8]> {
        if len == 0 {
            return Ok(&mut []);
        }
        let p = self
            .writable(addr, len)
            .ok_or_else(|| self.outside(addr, len))?;
        // SAFETY: `p..p+len` is inside a writable mapping of this slab (checked by `writable`),
        // alive and exclusive for the slice's lifetime (this function's contract).
        Ok(unsafe { std::slice::from_raw_parts_mut(p, len as usize) })
    }

    /// Apply one write to bytes that other threads may be executing or reading: as
    /// [`WriteView::write`], but each naturally aligned 2-, 4- or 8-byte unit inside the range
    /// is stored with one atomic store (see [`aligned_pieces`]). The executor's view and this
    /// one share every address's offset within a page, so the units are aligned where the code
    /// runs too.
    ///
    /// # Safety
    /// The mapping is alive, and the range is the caller's to write until this returns (claimed:
    /// no other call writes it or holds a slice over it); others may read or execute it.
    pub(crate) unsafe fn write_live(&self, w: &SlabWrite<'_>) -> Result<()> {
        let (addr, len) = write_range(w);
        let dst = self
            .writable(addr, len)
            .ok_or_else(|| self.outside(addr, len))?;
        let src = match *w {
            SlabWrite::Bytes(_, b) => Source::Bytes(b),
            SlabWrite::Fill(_, _, byte) => Source::Fill(byte),
        };
        // SAFETY: `dst..dst+len` is inside a live writable mapping of this slab (`writable`, and
        // this function's contract), ours to write; others only read it.
        unsafe { store_words(dst, len as usize, &src) };
        Ok(())
    }

    /// A copy of `len` bytes at executor address `addr`, read through this view with aligned
    /// atomic loads.
    ///
    /// # Safety
    /// The mapping is alive, and no writable slice over the range exists (it is not claimed)
    /// until this returns.
    pub(crate) unsafe fn read(&self, addr: u64, len: u64) -> Result<Vec<u8>> {
        let src = self
            .writable(addr, len)
            .ok_or_else(|| self.outside(addr, len))?;
        let mut out = vec![0u8; len as usize];
        // SAFETY: `src..src+len` is inside a live mapping of this slab (`writable`, and this
        // function's contract) that no reference writes.
        unsafe { load_words(src, &mut out) };
        Ok(out)
    }

    /// Copy `len` bytes from executor address `from` to `to`, both inside one region; the ranges
    /// may overlap (as `memmove`).
    ///
    /// # Safety
    /// The mapping is alive; nobody else writes either range until this returns, and no slice
    /// over them exists (the caller holds the owner's lock, and `to` is claimed for this move).
    pub(crate) unsafe fn copy_within(&self, from: u64, to: u64, len: u64) -> Result<()> {
        let src = self
            .writable(from, len)
            .ok_or_else(|| self.outside(from, len))?;
        let dst = self
            .writable(to, len)
            .ok_or_else(|| self.outside(to, len))?;
        // SAFETY: both ranges are inside live writable mappings of this slab (`writable`) that
        // only this call writes (this function's contract); `copy` allows them to overlap.
        unsafe { std::ptr::copy(src, dst, len as usize) };
        Ok(())
    }

    /// Store 4 or 8 naturally aligned bytes atomically, then make the instruction cache
    /// coherent.
    ///
    /// # Safety
    /// The mapping is alive, and no writable slice over the bytes exists (they are not claimed):
    /// other threads may execute or read them, never hold a reference to write them.
    pub(crate) unsafe fn patch(&self, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        let n = patch_len(addr, bytes)?;
        let dst = self
            .writable(addr.0, n)
            .ok_or_else(|| self.outside(addr.0, n))?;
        if !(dst as u64).is_multiple_of(n) {
            return Err(Error::InvalidRequest(format!(
                "the writable view of {addr} is not {n}-byte aligned"
            )));
        }
        if n == 4 {
            let v = u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]));
            // SAFETY: `dst` is 4-byte aligned (checked) and inside a live writable mapping of
            // the slab (`writable`, and this function's contract); no reference to write it
            // exists, others only read it (as instructions or data), so an atomic store is the
            // right access.
            unsafe { (*(dst as *const AtomicU32)).store(v, Ordering::Release) };
        } else {
            let v = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
            // SAFETY: as above, 8-byte aligned.
            unsafe { (*(dst as *const AtomicU64)).store(v, Ordering::Release) };
        }
        super::mem::flush_icache(addr, n);
        Ok(())
    }
}

/// What a live write stores: given bytes, or one byte repeated.
enum Source<'a> {
    Bytes(&'a [u8]),
    Fill(u8),
}

impl Source<'_> {
    /// The `n` bytes from offset `i`, as a little-endian integer.
    fn value(&self, i: usize, n: usize) -> u64 {
        match self {
            Source::Bytes(b) => b[i..i + n]
                .iter()
                .rev()
                .fold(0, |v, &x| (v << 8) | u64::from(x)),
            Source::Fill(v) => u64::from_le_bytes([*v; 8]) >> (64 - 8 * n),
        }
    }
}

/// `[p, p + len)` cut into naturally aligned pieces of 8, 4, 2 or 1 bytes, each the largest that
/// starts aligned and fits: (offset from `p`, size). Aligned blocks either nest or are disjoint,
/// so every naturally aligned 2-, 4- or 8-byte unit inside the range lies inside one piece.
fn aligned_pieces(p: usize, len: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off >= len {
            return None;
        }
        let at = p + off;
        let size = [8, 4, 2, 1]
            .into_iter()
            .find(|&n| at.is_multiple_of(n) && off + n <= len)
            .unwrap_or(1);
        let piece = (off, size);
        off += size;
        Some(piece)
    })
}

/// Store `len` bytes of `src` at `dst`, each of the [`aligned_pieces`] with one relaxed atomic
/// store: a thread reading or executing a naturally aligned 2-, 4- or 8-byte unit of the range
/// sees its old or its new value, never a mix.
///
/// # Safety
/// `dst..dst+len` is writable memory that no reference covers and no other writer touches until
/// this returns; `src` holds at least `len` bytes.
unsafe fn store_words(dst: *mut u8, len: usize, src: &Source<'_>) {
    for (i, n) in aligned_pieces(dst as usize, len) {
        let v = src.value(i, n);
        // SAFETY: the piece lies inside the range (this function's contract) and `dst + i` is
        // aligned to its size (`aligned_pieces`), as the atomic type needs; truncating `v` to
        // the piece's size keeps exactly its bytes (little-endian).
        unsafe {
            let at = dst.add(i);
            match n {
                8 => (*(at as *const AtomicU64)).store(v, Ordering::Relaxed),
                4 => (*(at as *const AtomicU32)).store(v as u32, Ordering::Relaxed),
                2 => (*(at as *const AtomicU16)).store(v as u16, Ordering::Relaxed),
                _ => (*(at as *const AtomicU8)).store(v as u8, Ordering::Relaxed),
            }
        }
    }
}

/// Fill `out` from `src`, each of the [`aligned_pieces`] with one relaxed atomic load: JIT'd
/// code or a patch may store into the bytes meanwhile, and an aligned unit is read whole.
///
/// # Safety
/// `src..src+out.len()` is readable memory that stays mapped until this returns and that no
/// `&mut` reference covers.
pub(crate) unsafe fn load_words(src: *const u8, out: &mut [u8]) {
    for (i, n) in aligned_pieces(src as usize, out.len()) {
        // SAFETY: the piece lies inside the readable range (this function's contract) and is
        // aligned to its size (`aligned_pieces`).
        let v = unsafe {
            let at = src.add(i);
            match n {
                8 => (*(at as *const AtomicU64)).load(Ordering::Relaxed),
                4 => u64::from((*(at as *const AtomicU32)).load(Ordering::Relaxed)),
                2 => u64::from((*(at as *const AtomicU16)).load(Ordering::Relaxed)),
                _ => u64::from((*(at as *const AtomicU8)).load(Ordering::Relaxed)),
            }
        };
        out[i..i + n].copy_from_slice(&v.to_le_bytes()[..n]);
    }
}

/// The executor range a write covers: (address, length).
pub(crate) fn write_range(w: &SlabWrite<'_>) -> (u64, u64) {
    match w {
        SlabWrite::Bytes(a, b) => (a.0, b.len() as u64),
        SlabWrite::Fill(a, n, _) => (a.0, *n),
    }
}

/// A patch is 4 or 8 bytes, naturally aligned: its length.
pub(crate) fn patch_len(addr: ExecutorAddr, bytes: &[u8]) -> Result<u64> {
    let n = bytes.len() as u64;
    if !(n == 4 || n == 8) || !addr.0.is_multiple_of(n) {
        return Err(Error::InvalidRequest(format!(
            "a patch of running code must be 4 or 8 bytes, naturally aligned (got {n} bytes at {addr})"
        )));
    }
    Ok(n)
}

/// A controller's view of a slab that lives in another process: the executor's memfd, mapped
/// once, read-write, here. The linker writes new units straight into these pages and patchers
/// store into them; the executor sees the same pages at the slab's addresses with their final
/// protections. Nothing is copied.
///
/// Calls may come from several threads: each write and each working slice claims its range
/// first, so two callers never get overlapping slices, and a patch never lands in a slice
/// someone holds. What this process cannot check is the executor: its JIT'd code may write its
/// data region, and a hostile executor any page of the file (see docs/safety.md).
pub struct SharedSlab {
    view: WriteView,
    base: u64,
    len: u64,
    claims: Mutex<RangeSet>,
    populated: Populated,
    _fd: OwnedFd,
}

impl std::fmt::Debug for SharedSlab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedSlab({:?} at {:#x})", self.view.info, self.base)
    }
}

impl SharedSlab {
    /// Map `fd`, the memfd behind the executor's slab `info` (regions consecutive from its
    /// start, as [`crate::Executor::create_slab`] makes them).
    pub fn map(fd: OwnedFd, info: SlabInfo) -> Result<SharedSlab> {
        let r = info.regions;
        let len = r.iter().try_fold(0u64, |a, (_, n)| a.checked_add(*n));
        // Page-aligned regions (4 KiB, the smallest x86-64 page): patches rely on the mapping
        // and the executor's view sharing every address's offset within a page.
        let contiguous = r[1].0 .0 == r[0].0 .0.wrapping_add(r[0].1)
            && r[2].0 .0 == r[1].0 .0.wrapping_add(r[1].1)
            && r[0].0 .0.checked_add(len.unwrap_or(u64::MAX)).is_some()
            && r[0].0 .0.is_multiple_of(4096)
            && r.iter().all(|(_, n)| n.is_multiple_of(4096));
        let len = match len {
            Some(l) if l > 0 && l <= (1 << 40) && contiguous => l,
            _ => {
                return Err(Error::InvalidRequest(format!(
                    "slab {} has impossible regions {r:?}",
                    info.id.0
                )))
            }
        };
        let flen = rustix::fs::fstat(&fd)
            .map(|st| st.st_size as u64)
            .unwrap_or(0);
        if flen < len {
            return Err(Error::InvalidRequest(format!(
                "the memory file of slab {} holds {flen:#x} bytes, less than its {len:#x}",
                info.id.0
            )));
        }
        let sealed = rustix::fs::fcntl_get_seals(&fd).is_ok_and(|s| s.contains(SealFlags::SHRINK));
        if !sealed {
            return Err(Error::InvalidRequest(format!(
                "the memory file of slab {} can still shrink (not sealed): refusing to map it",
                info.id.0
            )));
        }
        // SAFETY: a new shared mapping of a file we own, at an address the kernel picks; the
        // file is at least `len` bytes long and cannot shrink (both checked), so every mapped
        // page stays backed.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| os_err("mmap (shared slab)", e))?;
        let base = p as u64;
        Ok(SharedSlab {
            view: WriteView {
                info,
                bases: [base, base + r[0].1, base + r[0].1 + r[1].1],
            },
            base,
            len,
            claims: Mutex::new(RangeSet::default()),
            populated: Populated::default(),
            _fd: fd,
        })
    }

    pub fn info(&self) -> SlabInfo {
        self.view.info
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, RangeSet> {
        // The map stays consistent across a panic (no code runs while it is locked).
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claim every range (each inside one region, none overlapping another claim), or none.
    fn claim(&self, ranges: &[(u64, u64)]) -> Result<()> {
        let mut claims = self.claims();
        for (i, &(a, n)) in ranges.iter().enumerate() {
            let refused = if self.view.writable(a, n).is_none() {
                Some(self.view.outside(a, n))
            } else if n > 0 && claims.insert(a, a + n).is_err() {
                Some(Error::Busy(format!(
                    "{a:#x}..+{n:#x} of slab {} is being written by another call",
                    self.view.info.id.0
                )))
            } else {
                None
            };
            if let Some(e) = refused {
                for &(a, n) in &ranges[..i] {
                    if n > 0 {
                        claims.remove(a);
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn unclaim(&self, ranges: &[(u64, u64)]) {
        let mut claims = self.claims();
        for &(a, n) in ranges {
            if n > 0 {
                claims.remove(a);
            }
        }
    }

    /// Write into the slab (each write inside one region, applied in order).
    pub fn write(&self, writes: &[SlabWrite<'_>]) -> Result<()> {
        for w in writes {
            let r = [write_range(w)];
            self.claim(&r)?;
            self.populated.before_write(&self.view, r[0].0, r[0].1);
            // SAFETY: the mapping lives as long as `self`, and the range is claimed: no other
            // call of this slab writes it or holds a slice over it until we unclaim.
            let done = unsafe { self.view.write(w) };
            self.unclaim(&r);
            done?;
        }
        Ok(())
    }

    /// Writable slices over `ranges` of the slab (each inside one region, pairwise disjoint,
    /// and not being written by another call), for the duration of `f`.
    pub fn with_memory(
        &self,
        ranges: &[(ExecutorAddr, u64)],
        f: &mut dyn FnMut(&mut [&mut [u8]]),
    ) -> Result<()> {
        let raw: Vec<(u64, u64)> = ranges.iter().map(|(a, n)| (a.0, *n)).collect();
        self.claim(&raw)?;
        let _unclaim = OnDrop(|| self.unclaim(&raw));
        let mut slices = Vec::with_capacity(raw.len());
        for &(a, n) in &raw {
            self.populated.before_write(&self.view, a, n);
            // SAFETY: the mapping lives as long as `self`; the range is claimed until
            // `_unclaim` runs, after `slices` is dropped (declared later, dropped first), so no
            // other call of this slab touches it. (The executor process does not write it
            // either: it holds no live unit. Shared memory trusts the other process that far;
            // see docs/safety.md.)
            slices.push(unsafe { self.view.slice_mut(a, n)? });
        }
        f(&mut slices);
        Ok(())
    }

    /// Atomically store 4 or 8 naturally aligned bytes (see [`crate::Executor::patch`]).
    /// Refused over a range another call is writing.
    pub fn patch(&self, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        let n = patch_len(addr, bytes)?;
        let claims = self.claims();
        if claims.any_in(addr.0, addr.0.saturating_add(n)) {
            return Err(Error::Busy(format!(
                "{addr} is being written by another call"
            )));
        }
        // SAFETY: the mapping lives as long as `self`; the bytes are not claimed, and cannot be
        // while we hold the claims' lock, so no writable slice over them exists.
        unsafe { self.view.patch(addr, bytes) }
    }
}

impl SharedSlab {
    /// Write into the slab while the executor may run code from it (see
    /// [`crate::Executor::write_live`]): each write inside one region and not being written by
    /// another call of this slab, each naturally aligned 2-, 4- or 8-byte unit stored with one
    /// atomic store. Which ranges may
    /// be written (not the runtime's registered ranges) is the caller's book to check; the
    /// executor must then make its cores serialize (`InProcessExecutor::sync_code`) before the
    /// new code may run.
    pub fn write_live(&self, writes: &[SlabWrite<'_>]) -> Result<()> {
        for w in writes {
            let r = [write_range(w)];
            self.claim(&r)?;
            // SAFETY: the mapping lives as long as `self`, and the range is claimed: no other
            // call of this slab writes it or holds a slice over it until we unclaim.
            let done = unsafe { self.view.write_live(w) };
            self.unclaim(&r);
            done?;
        }
        Ok(())
    }

    /// A copy of `len` bytes (at most [`crate::MAX_READ`]) at executor address `addr`, inside
    /// one region; refused while another call of this slab writes any of them.
    pub fn read(&self, addr: ExecutorAddr, len: u64) -> Result<Vec<u8>> {
        if len > crate::MAX_READ {
            return Err(Error::InvalidRequest(format!(
                "a read of {len:#x} bytes (at most {:#x} at once)",
                crate::MAX_READ
            )));
        }
        let claims = self.claims();
        if claims.any_in(addr.0, addr.0.saturating_add(len)) {
            return Err(Error::Busy(format!(
                "{addr}..+{len:#x} is being written by another call"
            )));
        }
        // SAFETY: the mapping lives as long as `self`; no claim covers the range and none can be
        // made while we hold the claims' lock, so no slice over it exists.
        unsafe { self.view.read(addr.0, len) }
    }

    /// Claim `ranges` (each inside one region, disjoint from each other and from every other
    /// claim) until the returned guard is dropped: no write, working slice or patch of this slab
    /// touches them meanwhile (e.g. while the executor moves a unit there).
    pub fn claim_ranges(&self, ranges: &[(ExecutorAddr, u64)]) -> Result<SlabClaim<'_>> {
        let raw: Vec<(u64, u64)> = ranges.iter().map(|(a, n)| (a.0, *n)).collect();
        self.claim(&raw)?;
        Ok(SlabClaim { slab: self, raw })
    }
}

/// Ranges of a [`SharedSlab`] claimed by [`SharedSlab::claim_ranges`], until dropped.
pub struct SlabClaim<'a> {
    slab: &'a SharedSlab,
    raw: Vec<(u64, u64)>,
}

impl Drop for SlabClaim<'_> {
    fn drop(&mut self) {
        self.slab.unclaim(&self.raw);
    }
}

/// Runs its closure when dropped (also when the caller's closure panics).
pub(crate) struct OnDrop<F: FnMut()>(pub(crate) F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

impl Drop for SharedSlab {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours; slices of it live only within `with_memory`, which
        // borrows `self`.
        let _ = unsafe { rustix::mm::munmap(self.base as *mut c_void, self.len as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populating_ahead_keeps_every_byte_and_stays_in_its_region() {
        let page = super::super::mem::page_size();
        let sizes = [POPULATE_AHEAD * 3, 4 * page, page];
        for shared in [false, true] {
            let slab = Slab::create(SlabId(7), sizes, Placement::Anywhere, shared).unwrap();
            let view = slab.view();
            let code = slab.info.regions[0].0 .0;
            let ro = slab.info.regions[1].0 .0;
            let mark = |r: usize| slab.populated.0[r].load(Ordering::Relaxed);
            // SAFETY: nothing else knows this slab; no slice over it exists.
            unsafe { view.write(&SlabWrite::Bytes(ExecutorAddr(code + 0x100), b"kiln")) }.unwrap();
            // A write's pages and POPULATE_AHEAD past them, rounded to pages.
            slab.populate_for(code + 0x100, 4);
            let want = (0x104 + POPULATE_AHEAD).next_multiple_of(page);
            assert_eq!(mark(0), want);
            // Inside what is populated: nothing more to do.
            slab.populate_for(code + 0x200, 16);
            assert_eq!(mark(0), want);
            // Past the mark: from the mark on, clamped to the region's end.
            slab.populate_for(code + want, POPULATE_AHEAD * 2);
            assert_eq!(mark(0), sizes[0]);
            // The read-only region has a mark of its own; the data region none.
            assert_eq!(mark(1), 0);
            slab.populate_for(ro + 8, 8);
            assert_eq!(mark(1), sizes[1]);
            slab.populate_for(slab.info.regions[2].0 .0, 8);
            slab.populate_for(code - 1, 8);
            assert_eq!((mark(0), mark(1)), (sizes[0], sizes[1]));
            // Populating changed no byte, written or not.
            // SAFETY: as above.
            let back = unsafe { view.read(code + 0xfe, 8) }.unwrap();
            assert_eq!(back, [0, 0, b'k', b'i', b'l', b'n', 0, 0]);
        }
    }

    /// `slice_for_write` (one region search) gives the slice, the refusal and the populated
    /// marks that `populate_for` then `slice_mut` give, for ranges in each region, across
    /// regions' ends, outside the slab and empty.
    #[test]
    fn slice_for_write_agrees_with_populate_then_slice() {
        let page = super::super::mem::page_size();
        let sizes = [POPULATE_AHEAD * 3, 4 * page, page];
        let fast = Slab::create(SlabId(8), sizes, Placement::Anywhere, false).unwrap();
        let general = Slab::create(SlabId(9), sizes, Placement::Anywhere, false).unwrap();
        let marks = |s: &Slab| [0, 1].map(|r| s.populated.0[r].load(Ordering::Relaxed));
        // Offsets from the code region's start, so that both slabs see the same requests.
        let (code, data) = (0u64, sizes[0] + sizes[1]);
        let ranges = [
            (code + 0x100, 4),
            (code + 0x200, 16),
            (code + POPULATE_AHEAD * 2, POPULATE_AHEAD),
            (code + sizes[0] - 8, 8),
            (code + sizes[0] - 8, 16),
            (code + sizes[0] + 8, 8),
            (data, 8),
            (data + sizes[2] - 4, 8),
            (code + 0x40, 0),
            (data + sizes[2] + page, 0),
            (u64::MAX - 4, 8),
        ];
        // Where a slice starts: its region and the offset in it.
        let place = |s: &Slab, b: &[u8]| {
            let p = b.as_ptr() as u64;
            (0..3).find_map(|r| {
                let o = p.checked_sub(s.view.bases[r])?;
                (o < s.info.regions[r].1).then_some((r, o, b.len()))
            })
        };
        for (offset, len) in ranges {
            let on = |s: &Slab| s.info.regions[0].0 .0.wrapping_add(offset);
            // SAFETY: nothing else knows these slabs; each slice is gone before the next call.
            let a = unsafe { fast.slice_for_write(on(&fast), len) }.map(|b| place(&fast, b));
            general.populate_for(on(&general), len);
            // SAFETY: as above.
            let b =
                unsafe { general.view().slice_mut(on(&general), len) }.map(|b| place(&general, b));
            match (a, b) {
                // (An empty slice points nowhere in particular: only its length is compared.)
                (Ok(_), Ok(_)) if len == 0 => {}
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{offset:#x}+{len:#x}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{offset:#x}+{len:#x}: {a:?} but {b:?}"),
            }
            assert_eq!(marks(&fast), marks(&general), "{offset:#x}+{len:#x}");
        }
        assert_eq!(
            marks(&fast),
            [sizes[0], sizes[1]],
            "both regions were populated"
        );
    }

    #[test]
    fn aligned_units_lie_inside_one_piece() {
        for p in 0..16 {
            for len in 0..40 {
                let pieces: Vec<_> = aligned_pieces(p, len).collect();
                assert_eq!(pieces.iter().map(|x| x.1).sum::<usize>(), len);
                assert!(pieces.iter().all(|&(i, n)| (p + i).is_multiple_of(n)));
                for k in [2, 4, 8] {
                    for q in (p..p + len).filter(|q| q.is_multiple_of(k) && q + k <= p + len) {
                        assert!(
                            pieces
                                .iter()
                                .any(|&(i, n)| p + i <= q && q + k <= p + i + n),
                            "{k} bytes at {q} in {p}+{len}: {pieces:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn live_writes_split_into_aligned_pieces() {
        let pieces = |p, len| aligned_pieces(p, len).collect::<Vec<_>>();
        // An aligned rel32 or imm32 is one piece, wherever it lies in an 8-byte word.
        assert_eq!(pieces(0x1004, 4), [(0, 4)]);
        assert_eq!(pieces(0x1000, 4), [(0, 4)]);
        assert_eq!(pieces(0x1000, 8), [(0, 8)]);
        assert_eq!(pieces(0x1003, 9), [(0, 1), (1, 4), (5, 4)]);
        assert_eq!(pieces(0x1002, 3), [(0, 2), (2, 1)]);
        assert_eq!(pieces(0x1001, 0), []);
    }

    #[test]
    fn live_writes_store_and_load_every_byte() {
        let mut buf = vec![0u8; 64];
        for start in 0..9 {
            for len in 0..40 {
                buf.fill(0);
                let src: Vec<u8> = (1..=len as u8).collect();
                // SAFETY: `buf[start..start + len]` is ours alone.
                unsafe { store_words(buf.as_mut_ptr().add(start), len, &Source::Bytes(&src)) };
                assert_eq!(&buf[start..start + len], &src[..]);
                assert!(buf[..start]
                    .iter()
                    .chain(&buf[start + len..])
                    .all(|&b| b == 0));
                let mut out = vec![0u8; len];
                // SAFETY: as above.
                unsafe { load_words(buf.as_ptr().add(start), &mut out) };
                assert_eq!(out, src);
                // SAFETY: as above.
                unsafe { store_words(buf.as_mut_ptr().add(start), len, &Source::Fill(0xcc)) };
                assert!(buf[start..start + len].iter().all(|&b| b == 0xcc));
            }
        }
    }
}
