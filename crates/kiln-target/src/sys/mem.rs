//! Address-space reservation, protection and copying, over mmap/mprotect/munmap.

use crate::{Error, ExecutorAddr, MemProt, Placement, Result};

pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

fn os_err() -> String {
    std::io::Error::last_os_error().to_string()
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

fn map_at(addr: u64, size: u64, fixed: bool) -> Option<u64> {
    let flags = libc::MAP_PRIVATE
        | libc::MAP_ANONYMOUS
        | libc::MAP_NORESERVE
        | if fixed { libc::MAP_FIXED_NOREPLACE } else { 0 };
    // SAFETY: an anonymous PROT_NONE mapping; MAP_FIXED_NOREPLACE never replaces an existing
    // mapping, so no memory anyone uses is affected.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            size as usize,
            libc::PROT_NONE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let got = p as u64;
    if fixed && got != addr {
        // Old kernels ignore MAP_FIXED_NOREPLACE and treat it as a hint.
        // SAFETY: we just created this mapping and nobody else knows of it.
        unsafe { libc::munmap(p, size as usize) };
        return None;
    }
    Some(got)
}

pub(crate) fn reserve(size: u64, placement: Placement) -> Result<ExecutorAddr> {
    let page = page_size();
    if size == 0 || !size.is_multiple_of(page) || size > (1 << 40) {
        return Err(Error::Reserve {
            size,
            where_: String::new(),
            why: "size must be a non-zero multiple of the page size".into(),
        });
    }
    match placement {
        Placement::Anywhere => {
            map_at(0, size, false)
                .map(ExecutorAddr)
                .ok_or_else(|| Error::Reserve {
                    size,
                    where_: String::new(),
                    why: os_err(),
                })
        }
        Placement::Fixed(addr) => {
            if addr % page != 0 {
                return Err(Error::Reserve {
                    size,
                    where_: format!(" at {addr:#x}"),
                    why: "address is not page aligned".into(),
                });
            }
            map_at(addr, size, true)
                .map(ExecutorAddr)
                .ok_or_else(|| Error::Reserve {
                    size,
                    where_: format!(" at {addr:#x}"),
                    why: "the range is not free".into(),
                })
        }
        Placement::Within { lo, hi } => {
            let lo = lo.div_ceil(page) * page;
            let hi = hi / page * page;
            // Try the gaps nearest the middle of the window first, so that later links keep
            // room on both sides. A few attempts per gap cover races with other threads.
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
            for c in candidates {
                if let Some(a) = map_at(c, size, true) {
                    return Ok(ExecutorAddr(a));
                }
            }
            Err(Error::Reserve {
                size,
                where_: format!(" within {lo:#x}..{hi:#x}"),
                why: "no free range there (the code must stay within ±2 GiB of what it \
                      references with 32-bit displacements)"
                    .into(),
            })
        }
    }
}

fn prot_bits(p: MemProt) -> i32 {
    match p {
        MemProt::Read => libc::PROT_READ,
        MemProt::ReadExec => libc::PROT_READ | libc::PROT_EXEC,
        MemProt::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
    }
}

fn protect(addr: u64, size: u64, prot: i32) -> Result<()> {
    // SAFETY: callers pass page-aligned ranges inside a reservation this runtime owns
    // (checked by `inprocess` against its allocation table before calling).
    let r = unsafe { libc::mprotect(addr as *mut libc::c_void, size as usize, prot) };
    if r != 0 {
        return Err(Error::Memory {
            addr: ExecutorAddr(addr),
            size,
            why: format!("mprotect: {}", os_err()),
        });
    }
    Ok(())
}

/// Fill a segment of a reservation: make it writable (never executable), copy the content,
/// zero the rest, then switch to the final protection. No page is writable and executable at once.
pub(crate) fn commit(
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
    protect(addr.0, mapped, libc::PROT_READ | libc::PROT_WRITE)?;
    // SAFETY: the range [addr, addr+mapped) was just made readable and writable, belongs to a
    // reservation of ours (fresh anonymous memory, so already zero beyond `content`), and does
    // not overlap `content`, which lives in the controller's heap.
    unsafe {
        std::ptr::copy_nonoverlapping(content.as_ptr(), addr.0 as *mut u8, content.len());
    }
    protect(addr.0, mapped, prot_bits(prot))?;
    Ok(())
}

pub(crate) fn release(addr: ExecutorAddr, size: u64) -> Result<()> {
    // SAFETY: the range is a reservation made by `reserve` and owned by the caller; no code from
    // it runs any more (its deinitializers and dealloc actions already ran).
    let r = unsafe { libc::munmap(addr.0 as *mut libc::c_void, size as usize) };
    if r != 0 {
        return Err(Error::Memory {
            addr,
            size,
            why: format!("munmap: {}", os_err()),
        });
    }
    Ok(())
}

/// x86-64 keeps instruction and data caches coherent; a serialising instruction on the
/// executing core is implied by the mprotect system call. Other architectures will need a real
/// flush here.
pub(crate) fn flush_icache(_addr: ExecutorAddr, _size: u64) {}
