//! Slabs: shared anonymous memory mapped twice. The view where code runs has the final
//! protections (code `r-x`, read-only data `r--`, data `rw-`) and never changes; a second,
//! writable view of the code and read-only regions (the alias, made with `mremap` of size 0,
//! which duplicates a shared mapping) is where the linker writes new units and patchers change
//! finalized code. No page is writable and executable at the same address.
//!
//! Anonymous rather than a memfd: the kernel names shared anonymous memory `/dev/zero`, which
//! perf treats as JIT memory and resolves through `/tmp/perf-PID.map`; a memfd shows up as a
//! file perf cannot read. (An executor in another process will need a memfd to share the pages.)

use crate::{Error, ExecutorAddr, Placement, Result, SlabId, SlabInfo, SlabWrite};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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
}

/// Where each region of a slab can be written in this process: the alias (or, in a controller,
/// its own mapping of the executor's memfd) for code and read-only data, the data region itself
/// where the code runs in the executor. All writes, fills, working slices and patches go through
/// this one piece of code, on both sides of a shared-memory executor.
#[derive(Copy, Clone, Debug)]
pub(crate) struct WriteView {
    pub(crate) info: SlabInfo,
    /// Host address at which each region's first byte is writable.
    pub(crate) bases: [u64; 3],
}

/// Map a memfd over `[base, base+total)` (shared, read-write) and once more, its first
/// `alias_len` bytes, elsewhere: (alias address, the memfd).
fn memfd_views(base: u64, total: u64, alias_len: u64) -> Result<(u64, OwnedFd)> {
    let name = CString::new("kiln-slab").map_err(|e| Error::InvalidRequest(e.to_string()))?;
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(os_err("memfd_create"));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our own memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), total as libc::off_t) } != 0 {
        return Err(os_err("ftruncate"));
    }
    // Its size is final: a process we share it with can rely on every page staying backed
    // (shrinking would turn its accesses into SIGBUS).
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on our own memfd, created with MFD_ALLOW_SEALING.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(os_err("sealing the slab's memfd"));
    }
    // SAFETY: [base, base+total) is our slab's own mapping; MAP_FIXED replaces it.
    let p = unsafe {
        libc::mmap(
            base as *mut libc::c_void,
            total as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os_err("mmap (slab view)"));
    }
    if alias_len == 0 {
        return Ok((0, fd));
    }
    // SAFETY: a new shared mapping of our memfd at an address the kernel picks.
    let a = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            alias_len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if a == libc::MAP_FAILED {
        return Err(os_err("mmap (slab alias)"));
    }
    Ok((a as u64, fd))
}

fn os_err(what: &str) -> Error {
    Error::Memory {
        addr: ExecutorAddr(0),
        size: 0,
        why: format!("{what}: {}", std::io::Error::last_os_error()),
    }
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
        if sizes.iter().any(|s| !s.is_multiple_of(page)) || sizes.iter().sum::<u64>() == 0 {
            return Err(Error::InvalidRequest(format!(
                "slab region sizes {sizes:?} must be page multiples, not all zero"
            )));
        }
        let total: u64 = sizes.iter().sum();
        if total > (1 << 40) {
            return Err(Error::InvalidRequest(format!(
                "slab of {total:#x} bytes is too large"
            )));
        }
        // The exec view: reserve the range (placed as asked), put shared anonymous memory over
        // it, then give each region its final protection.
        let base = super::mem::reserve(total, placement)?.0;
        // SAFETY: [base, base+total) is the reservation we just made and own; MAP_FIXED replaces
        // only its PROT_NONE pages.
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                total as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = os_err("mmap (slab)");
            let _ = super::mem::release(ExecutorAddr(base), total);
            return Err(e);
        }
        // The alias first (while everything is still read-write), then the final protections.
        let alias_len = sizes[0] + sizes[1];
        let mut alias_base = 0;
        let mut fd = None;
        if alias_len > 0 || shared {
            let a = if shared {
                libc::MAP_FAILED
            } else {
                // SAFETY: mremap with old size 0 on a shared mapping creates a second mapping of
                // the same pages at an address the kernel picks; the original stays as it is.
                unsafe {
                    libc::mremap(
                        base as *mut libc::c_void,
                        0,
                        alias_len as usize,
                        libc::MREMAP_MAYMOVE,
                    )
                }
            };
            if a != libc::MAP_FAILED {
                alias_base = a as u64;
            } else {
                // Not everywhere (valgrind refuses it): the same two views from a memfd.
                match memfd_views(base, total, alias_len) {
                    Ok((a, f)) => {
                        alias_base = a;
                        fd = Some(f);
                    }
                    Err(e) => {
                        let _ = super::mem::release(ExecutorAddr(base), total);
                        return Err(e);
                    }
                }
            }
        }
        let prots = [
            libc::PROT_READ | libc::PROT_EXEC,
            libc::PROT_READ,
            libc::PROT_READ | libc::PROT_WRITE,
        ];
        let mut off = 0u64;
        let mut regions = [(ExecutorAddr(0), 0u64); 3];
        for (i, (&size, &prot)) in sizes.iter().zip(&prots).enumerate() {
            regions[i] = (ExecutorAddr(base + off), size);
            let failed = size > 0 && {
                // SAFETY: a region of the slab mapping we own; nothing runs from it yet.
                let r = unsafe {
                    libc::mprotect((base + off) as *mut libc::c_void, size as usize, prot)
                };
                r != 0
            };
            if failed {
                let e = os_err("mprotect (slab region)");
                let _ = super::mem::release(ExecutorAddr(base), total);
                if alias_len > 0 {
                    // SAFETY: the alias we just made.
                    unsafe { libc::munmap(alias_base as *mut libc::c_void, alias_len as usize) };
                }
                return Err(e);
            }
            off += size;
        }
        let info = SlabInfo { id, regions };
        let view = WriteView {
            info,
            bases: [
                alias_base,
                alias_base + sizes[0],
                regions[2].0 .0, // data is written where it lives
            ],
        };
        Ok(Slab {
            info,
            fd,
            exec_base: base,
            total,
            alias_base,
            alias_len,
            view,
        })
    }

    /// The memfd behind this slab's pages, if it has one (always, when created `shared`).
    pub(crate) fn memfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fd.as_ref().map(|f| f.as_fd())
    }

    pub(crate) fn write(&self, writes: &[SlabWrite<'_>]) -> Result<()> {
        self.view.write(writes)
    }

    pub(crate) fn with_memory(
        &self,
        ranges: &[(ExecutorAddr, u64)],
        f: &mut dyn FnMut(&mut [&mut [u8]]),
    ) -> Result<()> {
        self.view.with_memory(ranges, f)
    }

    pub(crate) fn patch(&self, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        self.view.patch(addr, bytes)
    }
}

impl WriteView {
    /// Where to write `len` bytes at executor address `addr`. `None` if the range is not
    /// inside one region.
    fn writable(&self, addr: u64, len: u64) -> Option<*mut u8> {
        let end = addr.checked_add(len)?;
        for (i, (start, size)) in self.info.regions.iter().enumerate() {
            if start.0 <= addr && end <= start.0 + size {
                return Some((self.bases[i] + (addr - start.0)) as *mut u8);
            }
        }
        None
    }

    pub(crate) fn write(&self, writes: &[SlabWrite<'_>]) -> Result<()> {
        for w in writes {
            let (addr, len) = match w {
                SlabWrite::Bytes(a, b) => (a.0, b.len() as u64),
                SlabWrite::Fill(a, n, _) => (a.0, *n),
            };
            let dst = self.writable(addr, len).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "write of {len:#x} bytes at {addr:#x} is not inside one region of slab {}",
                    self.info.id.0
                ))
            })?;
            match w {
                // SAFETY: `dst..dst+len` is inside a writable mapping of this slab (checked by
                // `writable`); the source is a caller's slice that cannot overlap it.
                SlabWrite::Bytes(_, b) => unsafe {
                    std::ptr::copy_nonoverlapping(b.as_ptr(), dst, b.len())
                },
                // SAFETY: as above.
                SlabWrite::Fill(_, n, byte) => unsafe {
                    std::ptr::write_bytes(dst, *byte, *n as usize)
                },
            }
        }
        Ok(())
    }

    /// Writable slices over `ranges` (through the alias for code and read-only data).
    pub(crate) fn with_memory(
        &self,
        ranges: &[(ExecutorAddr, u64)],
        f: &mut dyn FnMut(&mut [&mut [u8]]),
    ) -> Result<()> {
        let mut sorted: Vec<(u64, u64)> = ranges.iter().map(|(a, n)| (a.0, *n)).collect();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(Error::InvalidRequest("overlapping slab ranges".into()));
        }
        let mut slices = Vec::with_capacity(ranges.len());
        for (a, n) in ranges {
            let p = self.writable(a.0, *n).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "range {a}..+{n:#x} is not inside one region of slab {}",
                    self.info.id.0
                ))
            })?;
            // SAFETY: `p..p+n` lies inside a writable mapping of this slab (checked by
            // `writable`) and the ranges do not overlap each other (checked above), so the
            // slices are disjoint. They live only for the call of `f`, during which the slab
            // (and its mappings) cannot be released: its owner is borrowed, and callers hold
            // their slab table lock. Ranges being prepared belong to no finalized allocation,
            // so no code reads them meanwhile, here or (for a shared slab) in the executor.
            slices.push(unsafe { std::slice::from_raw_parts_mut(p, *n as usize) });
        }
        f(&mut slices);
        Ok(())
    }

    pub(crate) fn patch(&self, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        let n = bytes.len() as u64;
        if !(n == 4 || n == 8) || !addr.0.is_multiple_of(n) {
            return Err(Error::InvalidRequest(format!(
                "a patch of running code must be 4 or 8 bytes, naturally aligned (got {n} bytes at {addr})"
            )));
        }
        let dst = self.writable(addr.0, n).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "patch at {addr} is outside slab {}",
                self.info.id.0
            ))
        })?;
        if n == 4 {
            let v = u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]));
            // SAFETY: `dst` is 4-byte aligned (the alias and the view share page offsets) and
            // inside a writable mapping of the slab; other threads only read it (as
            // instructions or data), so an atomic store is the right access.
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

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: both mappings are ours; the owner drops a slab only when no unit lives in it.
        unsafe {
            libc::munmap(self.exec_base as *mut libc::c_void, self.total as usize);
            if self.alias_len > 0 {
                libc::munmap(
                    self.alias_base as *mut libc::c_void,
                    self.alias_len as usize,
                );
            }
        }
    }
}

/// A controller's view of a slab that lives in another process: the executor's memfd, mapped
/// once, read-write, here. The linker writes new units straight into these pages and patchers
/// store into them; the executor sees the same pages at the slab's addresses with their final
/// protections. Nothing is copied.
pub struct SharedSlab {
    view: WriteView,
    base: u64,
    len: u64,
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
        let contiguous = r[1].0 .0 == r[0].0 .0.wrapping_add(r[0].1)
            && r[2].0 .0 == r[1].0 .0.wrapping_add(r[1].1);
        let len = match len {
            Some(l) if l > 0 && l <= (1 << 40) && contiguous => l,
            _ => {
                return Err(Error::InvalidRequest(format!(
                    "slab {} has impossible regions {r:?}",
                    info.id.0
                )))
            }
        };
        let file = std::fs::File::from(fd);
        let flen = file.metadata().map(|m| m.len()).unwrap_or(0);
        if flen < len {
            return Err(Error::InvalidRequest(format!(
                "the memory file of slab {} holds {flen:#x} bytes, less than its {len:#x}",
                info.id.0
            )));
        }
        let fd = OwnedFd::from(file);
        // SAFETY: F_GET_SEALS only queries the descriptor.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(Error::InvalidRequest(format!(
                "the memory file of slab {} can still shrink (not sealed): refusing to map it",
                info.id.0
            )));
        }
        // SAFETY: a new shared mapping of a file we own, at an address the kernel picks; the
        // file is at least `len` bytes long (checked), so every mapped page is backed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os_err("mmap (shared slab)"));
        }
        let base = p as u64;
        Ok(SharedSlab {
            view: WriteView {
                info,
                bases: [base, base + r[0].1, base + r[0].1 + r[1].1],
            },
            base,
            len,
            _fd: fd,
        })
    }

    pub fn info(&self) -> SlabInfo {
        self.view.info
    }

    /// Write into the slab (each write inside one region).
    pub fn write(&self, writes: &[SlabWrite<'_>]) -> Result<()> {
        self.view.write(writes)
    }

    /// Writable slices over `ranges` of the slab, for the duration of `f`. The caller must not
    /// let two calls overlap in time on the same slab (the remote executor holds its slab
    /// table's lock).
    pub fn with_memory(
        &self,
        ranges: &[(ExecutorAddr, u64)],
        f: &mut dyn FnMut(&mut [&mut [u8]]),
    ) -> Result<()> {
        self.view.with_memory(ranges, f)
    }

    /// Atomically store 4 or 8 naturally aligned bytes (see [`crate::Executor::patch`]).
    pub fn patch(&self, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        self.view.patch(addr, bytes)
    }
}

impl Drop for SharedSlab {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and no slice of it outlives `with_memory`.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len as usize) };
    }
}
