//! The code zone: one range of address space, reserved where the VM wants it, in two parts.
//!
//! ```text
//!   base                                                                          base + size
//!   | code: fixed | method | read-only data: fixed | method | data: fixed | method |
//! ```
//!
//! The fixed region holds what never moves and is never freed by compaction: trampolines,
//! bridges, runtime routines, lazy stubs, PICs' shared parts. The method region holds compiled
//! methods; it is compacted when it fills. The zone is one kiln slab (W^X mappings, written
//! through a writable alias, many units sharing pages) whose code, read-only and data parts are
//! each split: the fixed region gets the start of each part (its code at the zone's lowest
//! addresses), the method region the rest.

use crate::error::{Error, Result};
use kiln::{CodeMemory, SlabMemory};
use kiln_target::{Executor, ExecutorAddr, Placement, SlabId, SlabInfo};
use std::sync::Arc;

/// Where the zone goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZonePlacement {
    /// Wherever the executor finds room.
    Anywhere,
    /// At exactly this address (page aligned; fails if anything is mapped there), as Cog's
    /// `allocateJITMemory: desiredSize desiredPosition:` asks.
    Exactly(u64),
    /// As near this address as the address space allows.
    Near(u64),
    /// Every byte of the zone within reach of a 32-bit displacement from each of these
    /// addresses (a VM's runtime functions, a library the code calls directly).
    WithinReachOf(Vec<u64>),
}

/// The size of a zone and of its parts.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// Bytes of the whole zone (rounded up to pages).
    pub size: u64,
    /// Bytes of the fixed region at its start (rounded up to pages); the method region has
    /// the rest.
    pub fixed_size: u64,
    pub placement: ZonePlacement,
}

impl ZoneConfig {
    /// A zone of `size` bytes, an eighth of it fixed, wherever the executor finds room (on
    /// Linux, near the libraries: calls from the zone to host functions are then direct; a
    /// call out of reach goes through a stub, and data out of reach fails the link clearly —
    /// use [`ZonePlacement::WithinReachOf`] when the code addresses host data).
    pub fn new(size: u64) -> Self {
        ZoneConfig {
            size,
            fixed_size: (size / 8).max(1 << 16),
            placement: ZonePlacement::Anywhere,
        }
    }
}

/// 2 GiB less a margin for addends and the zone's own extent.
const REACH: u64 = (1 << 31) - (1 << 21);

/// One region of the zone: a slab and the code memory that allocates in it.
#[derive(Debug, Clone)]
pub struct Region {
    pub(crate) info: SlabInfo,
    pub(crate) memory: Arc<SlabMemory>,
}

impl Region {
    /// The slab behind the region.
    pub fn slab(&self) -> SlabId {
        self.info.id
    }

    /// (start, size) of the region's code part.
    pub fn code(&self) -> (ExecutorAddr, u64) {
        self.info.regions[0]
    }

    /// Whether `addr` lies in one of the region's parts.
    pub fn contains(&self, addr: ExecutorAddr) -> bool {
        self.info
            .regions
            .iter()
            .any(|(a, n)| a.0 <= addr.0 && addr.0 < a.0 + n)
    }

    /// Bytes used in each part of the region (code, read-only data, data): what a VM looks at
    /// to decide when to compact.
    pub fn used(&self) -> Result<[u64; 3]> {
        self.used_in(&self.memory.lock())
    }

    /// [`Region::used`] with the region's allocator already locked.
    pub(crate) fn used_in(&self, alloc: &kiln::SlabAllocator) -> Result<[u64; 3]> {
        let mut used = [0; 3];
        for (r, &(_, size)) in self.info.regions.iter().enumerate() {
            let free: u64 = alloc.free_ranges(self.slab(), r)?.iter().map(|f| f.1).sum();
            used[r] = size - free.min(size);
        }
        Ok(used)
    }

    /// The region's allocator, as a link's code memory.
    pub fn code_memory(&self) -> Arc<dyn CodeMemory> {
        self.memory.clone()
    }
}

/// A reserved zone: its fixed and method regions.
#[derive(Debug)]
pub struct Zone {
    pub(crate) base: u64,
    pub(crate) size: u64,
    pub(crate) fixed: Region,
    pub(crate) method: Region,
}

impl Zone {
    /// Reserve a zone in `ex` as `config` asks.
    pub fn reserve(ex: &dyn Executor, config: &ZoneConfig) -> Result<Zone> {
        let page = ex.info().page_size;
        let round = |n: u64| n.checked_next_multiple_of(page);
        let (Some(size), Some(fixed)) = (round(config.size), round(config.fixed_size)) else {
            return Err(Error::Config(format!("zone of {:#x} bytes", config.size)));
        };
        if fixed == 0 || fixed >= size || size > (1 << 40) {
            return Err(Error::Config(format!(
                "a zone of {size:#x} bytes with a fixed region of {fixed:#x}: the fixed region \
                 must be smaller than the zone, and neither empty"
            )));
        }
        let (fixed_parts, method_parts) = (split(fixed, page), split(size - fixed, page));
        let total = [0, 1, 2].map(|i| fixed_parts[i] + method_parts[i]);
        let info = ex.create_slab(total, placement(&config.placement, size)?)?;
        let part = |first: bool| {
            let mut regions = info.regions;
            for (i, r) in regions.iter_mut().enumerate() {
                *r = if first {
                    (r.0, fixed_parts[i])
                } else {
                    (ExecutorAddr(r.0 .0 + fixed_parts[i]), method_parts[i])
                };
            }
            let part = SlabInfo {
                id: info.id,
                regions,
            };
            Region {
                info: part,
                memory: Arc::new(SlabMemory::fixed(&[part])),
            }
        };
        Ok(Zone {
            base: info.regions[0].0 .0,
            size,
            fixed: part(true),
            method: part(false),
        })
    }

    /// Where the zone is: (start, size).
    pub fn range(&self) -> (ExecutorAddr, u64) {
        (ExecutorAddr(self.base), self.size)
    }

    pub fn fixed(&self) -> &Region {
        &self.fixed
    }

    pub fn method(&self) -> &Region {
        &self.method
    }

    /// Unmap the zone (no unit may live in it any more).
    pub(crate) fn release(&self, ex: &dyn Executor) {
        let _ = ex.release_slab(self.fixed.info.id);
    }
}

/// A region's parts: three quarters code, an eighth read-only data, an eighth data.
fn split(bytes: u64, page: u64) -> [u64; 3] {
    let pages = bytes / page;
    let ro = (pages / 8).max(1);
    let data = (pages / 8).max(1);
    let code = pages.saturating_sub(ro + data).max(1);
    [code * page, ro * page, (pages - code - ro).max(data) * page]
}

fn placement(p: &ZonePlacement, size: u64) -> Result<Placement> {
    Ok(match p {
        ZonePlacement::Anywhere => Placement::Anywhere,
        ZonePlacement::Exactly(a) => Placement::Fixed(*a),
        ZonePlacement::Near(a) => Placement::Within {
            lo: a.saturating_sub(REACH),
            hi: a.saturating_add(REACH).min(0x7fff_ffff_f000),
        },
        ZonePlacement::WithinReachOf(addrs) => {
            let (Some(&lo), Some(&hi)) = (addrs.iter().min(), addrs.iter().max()) else {
                return Ok(Placement::Anywhere);
            };
            let (wlo, whi) = (
                hi.saturating_sub(REACH),
                lo.saturating_add(REACH).min(0x7fff_ffff_f000),
            );
            if whi <= wlo || whi - wlo < size {
                return Err(Error::Config(format!(
                    "no zone of {size:#x} bytes reaches both {lo:#x} and {hi:#x} with 32-bit \
                     displacements"
                )));
            }
            Placement::Within { lo: wlo, hi: whi }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_split_into_whole_pages() {
        let s = split(64 * 4096, 4096);
        assert_eq!(s.iter().sum::<u64>(), 64 * 4096);
        assert!(s.iter().all(|n| *n > 0 && n % 4096 == 0));
        assert!(s[0] >= 3 * s[1]);
        let tiny = split(3 * 4096, 4096);
        assert_eq!(tiny, [4096; 3]);
    }

    #[test]
    fn placements() {
        assert_eq!(
            placement(&ZonePlacement::Exactly(0x1000), 1).unwrap(),
            Placement::Fixed(0x1000)
        );
        let Placement::Within { lo, hi } = placement(&ZonePlacement::Near(1 << 40), 4096).unwrap()
        else {
            panic!()
        };
        assert!(lo < 1 << 40 && 1 << 40 < hi);
        assert!(placement(&ZonePlacement::WithinReachOf(vec![0, 1 << 40]), 4096).is_err());
    }
}
