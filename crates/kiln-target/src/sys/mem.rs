//! Address-space reservation, protection and copying, over mmap/mprotect/munmap (through
//! rustix). Making a new mapping is safe; touching an existing one is an `unsafe fn` whose
//! contract the ownership table (`crate::table`) lets its callers in `sys/owned.rs` check.

use crate::{Error, ExecutorAddr, MemProt, Placement, Result};
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use std::ffi::c_void;

pub(crate) fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// Free gaps of this process's address space, from `/proc/self/maps`.
fn free_gaps() -> Vec<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut used: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|l| {
            let range = l.split_whitespace().next()?;
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect();
    used.sort_unstable();
    let mut gaps = Vec::new();
    // Keep clear of the zero page region and of the top of the user address space.
    let mut prev_end = 0x10000u64;
    for (s, e) in used {
        if s > prev_end {
            gaps.push((prev_end, s));
        }
        prev_end = prev_end.max(e);
    }
    let top = 0x7fff_ffff_f000u64;
    if top > prev_end {
        gaps.push((prev_end, top));
    }
    gaps
}

/// A new PROT_NONE mapping of `size` bytes: at `addr` exactly (`fixed`, never replacing
/// anything), or where the kernel likes.
fn map_at(addr: u64, size: u64, fixed: bool) -> std::result::Result<u64, String> {
    let mut flags = MapFlags::PRIVATE | MapFlags::NORESERVE;
    if fixed {
        flags |= MapFlags::FIXED_NOREPLACE;
    }
    // SAFETY: a new anonymous PROT_NONE mapping; without MAP_FIXED the address is a hint, and
    // MAP_FIXED_NOREPLACE fails rather than replace an existing mapping, so no memory anyone
    // uses is affected.
    let p = unsafe {
        rustix::mm::mmap_anonymous(
            addr as *mut c_void,
            size as usize,
            ProtFlags::empty(),
            flags,
        )
    }
    .map_err(|e| e.to_string())?;
    let got = p as u64;
    if fixed && got != addr {
        // Old kernels ignore MAP_FIXED_NOREPLACE and treat it as a hint.
        // SAFETY: we just created this mapping and nobody else knows of it.
        let _ = unsafe { rustix::mm::munmap(p, size as usize) };
        return Err("the kernel ignored MAP_FIXED_NOREPLACE".into());
    }
    Ok(got)
}

pub(crate) fn reserve(size: u64, placement: Placement) -> Result<ExecutorAddr> {
    let page = page_size();
    if size == 0 || !size.is_multiple_of(page) || size > (1 << 40) {
        return Err(Error::Reserve {
            size,
            where_: String::new().into(),
            why: "size must be a non-zero multiple of the page size".into(),
        });
    }
    match placement {
        Placement::Anywhere => {
            map_at(0, size, false)
                .map(ExecutorAddr)
                .map_err(|why| Error::Reserve {
                    size,
                    where_: String::new().into(),
                    why: why.into(),
                })
        }
        Placement::Fixed(addr) => {
            if addr % page != 0 {
                return Err(Error::Reserve {
                    size,
                    where_: format!(" at {addr:#x}").into(),
                    why: "address is not page aligned".into(),
                });
            }
            map_at(addr, size, true)
                .map(ExecutorAddr)
                .map_err(|why| Error::Reserve {
                    size,
                    where_: format!(" at {addr:#x}").into(),
                    why: format!("the range is not free ({why})").into(),
                })
        }
        Placement::Within { lo, hi } => {
            let lo = lo.checked_next_multiple_of(page).unwrap_or(u64::MAX);
            let hi = hi / page * page;
            // Another thread reserving at the same time may take the start chosen here (both
            // read the same gaps): while there were starts to try, the gaps are read again,
            // with its mapping in them (bounded: a window that keeps changing counts as full).
            for _ in 0..64 {
                match reserve_in_gaps(size, lo, hi, page) {
                    Ok(a) => return Ok(ExecutorAddr(a)),
                    Err(0) => break,
                    Err(_) => continue,
                }
            }
            Err(Error::Reserve {
                size,
                where_: format!(" within {lo:#x}..{hi:#x}").into(),
                why: "no free range there (the code must stay within ±2 GiB of what it \
                      references with 32-bit displacements)"
                    .into(),
            })
        }
    }
}

/// Reserve `size` bytes in one of the free gaps of `[lo, hi)`, trying the gaps nearest the
/// window's middle first (later links keep room on both sides), each at the start closest to
/// the middle with a guard page before it. On failure, how many starts were tried (each taken
/// by someone else meanwhile; 0: no gap is large enough).
fn reserve_in_gaps(size: u64, lo: u64, hi: u64, page: u64) -> std::result::Result<u64, usize> {
    let mid = lo / 2 + hi / 2;
    let mut candidates: Vec<u64> = Vec::new();
    for (gs, ge) in free_gaps() {
        let s = gs.max(lo);
        let e = ge.min(hi);
        if e <= s || e - s < size {
            continue;
        }
        // Inside [s, e - size], the start closest to mid, with a guard page.
        let first = (s + page).min(e - size);
        let last = (e - size).saturating_sub(page).max(first);
        let best = mid.clamp(first, last) / page * page;
        candidates.push(best.max(s));
    }
    candidates.sort_by_key(|c| c.abs_diff(mid));
    let tried = candidates.len();
    candidates
        .into_iter()
        .find_map(|c| map_at(c, size, true).ok())
        .ok_or(tried)
}

fn prot_flags(p: MemProt) -> MprotectFlags {
    match p {
        MemProt::Read => MprotectFlags::READ,
        MemProt::ReadExec => MprotectFlags::READ | MprotectFlags::EXEC,
        MemProt::ReadWrite => MprotectFlags::READ | MprotectFlags::WRITE,
    }
}

/// # Safety
/// `[addr, addr + size)` is page aligned and lies in a reservation of the caller's that no one
/// else uses, and nothing reads or runs it meanwhile.
unsafe fn protect(addr: u64, size: u64, prot: MprotectFlags) -> Result<()> {
    // SAFETY: guaranteed by the caller.
    unsafe { rustix::mm::mprotect(addr as *mut c_void, size as usize, prot) }.map_err(|e| {
        Error::Memory {
            addr: ExecutorAddr(addr),
            size,
            why: format!("mprotect: {e}").into(),
        }
    })
}

/// Fill a segment of a reservation: make it writable (never executable), copy the content,
/// then switch to the final protection. No page is writable and executable at once. The rest
/// of the segment (its zero fill) is not written: fresh anonymous memory is zero.
///
/// # Safety
/// `addr` is page aligned; the pages of `[addr, addr + content.len() + zero_fill)` lie in a
/// reservation of the caller's, used by no one else, that has not been written since it was
/// reserved or [`reset`]; nothing reads or runs them meanwhile.
pub(crate) unsafe fn commit(
    addr: ExecutorAddr,
    content: &[u8],
    zero_fill: u64,
    prot: MemProt,
) -> Result<()> {
    let page = page_size();
    let size = content.len() as u64 + zero_fill;
    if size == 0 {
        return Ok(());
    }
    let mapped = size.div_ceil(page) * page;
    // SAFETY: the pages are the caller's (this function's contract).
    unsafe { protect(addr.0, mapped, MprotectFlags::READ | MprotectFlags::WRITE)? };
    // SAFETY: [addr, addr + mapped) was just made readable and writable and belongs to the
    // caller alone; `content` lives in this process's heap, not in a reservation, so the two
    // do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(content.as_ptr(), addr.0 as *mut u8, content.len());
    }
    // SAFETY: as above.
    unsafe { protect(addr.0, mapped, prot_flags(prot)) }
}

/// Put fresh, zero, inaccessible pages over `[addr, addr + size)`: a reservation as `reserve`
/// made it.
///
/// # Safety
/// The range is page aligned, a reservation of the caller's that no one else uses, and nothing
/// reads or runs it.
pub(crate) unsafe fn reset(addr: ExecutorAddr, size: u64) -> Result<()> {
    let flags = MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED;
    // SAFETY: MAP_FIXED replaces exactly the caller's reservation (this function's contract).
    unsafe {
        rustix::mm::mmap_anonymous(
            addr.0 as *mut c_void,
            size as usize,
            ProtFlags::empty(),
            flags,
        )
    }
    .map(drop)
    .map_err(|e| Error::Memory {
        addr,
        size,
        why: format!("mmap (reset): {e}").into(),
    })
}

/// Unmap a reservation.
///
/// # Safety
/// The range is a reservation made by [`reserve`] that the caller owns and has taken out of its
/// table; no code from it runs any more and nothing refers to it (its deinitializers and
/// dealloc actions already ran).
pub(crate) unsafe fn release(addr: ExecutorAddr, size: u64) -> Result<()> {
    // SAFETY: guaranteed by the caller.
    unsafe { rustix::mm::munmap(addr.0 as *mut c_void, size as usize) }.map_err(|e| Error::Memory {
        addr,
        size,
        why: format!("munmap: {e}").into(),
    })
}

/// A copy of `len` bytes at `addr`.
///
/// # Safety
/// `[addr, addr + len)` is mapped readable and stays mapped until this returns.
pub(crate) unsafe fn read(addr: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    // SAFETY: the source is readable (the caller's contract), the destination is our fresh
    // buffer of `len` bytes; they do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, v.as_mut_ptr(), v.len()) };
    v
}

/// Copy `out.len()` bytes at `addr` into `out` with aligned atomic loads, as a reader of memory
/// that JIT'd code or a patch may store into meanwhile must.
///
/// # Safety
/// `[addr, addr + out.len())` is mapped readable and stays mapped until this returns, and no
/// `&mut` reference covers it.
pub(crate) unsafe fn read_into(addr: u64, out: &mut [u8]) {
    // SAFETY: this function's contract.
    unsafe { super::slab::load_words(addr as *const u8, out) }
}

/// x86-64 keeps instruction and data caches coherent; a serialising instruction on the
/// executing core is implied by the mprotect system call. Other architectures will need a real
/// flush here.
pub(crate) fn flush_icache(_addr: ExecutorAddr, _size: u64) {}
