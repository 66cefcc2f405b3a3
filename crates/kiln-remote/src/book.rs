//! What the controller knows of its executor's slabs: their regions, and where live units lie
//! in them. Writes outside a region or over a live unit are refused here, at once, in both
//! memory modes, as the in-process executor refuses them. The executor checks every request
//! again with its own table (in copy mode, writes reach it only with the next request; in
//! shared mode, they go straight into the shared pages and this book is the only check).

use kiln_target::{
    Action, ActionPair, AllocId, Error, ExecutorAddr, Result, SegmentMove, SlabId, SlabInfo,
};
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
pub(crate) struct SlabBook {
    slabs: HashMap<u32, SlabInfo>,
    /// Live units' segments in slabs: start → (end, unit).
    live: BTreeMap<u64, (u64, u64)>,
    /// Each unit's starts in `live`.
    units: HashMap<u64, Vec<u64>>,
    /// What the executor's runtime reads while a unit lives (its registered unwind info and TLS
    /// images): start → (end, unit). `write_live` may not change them.
    registered: BTreeMap<u64, (u64, u64)>,
}

/// The ranges a unit's actions register for the runtime to read: `.eh_frame` sections and TLS
/// images (as the executor's plan counts them).
pub(crate) fn registered_ranges(actions: &[ActionPair]) -> Vec<(u64, u64)> {
    actions
        .iter()
        .filter_map(|p| match p.finalize.as_ref()? {
            Action::RegisterEhFrame { addr, size } => Some((addr.0, *size)),
            Action::RegisterTls {
                image, image_size, ..
            } if *image_size > 0 => Some((image.0, *image_size)),
            _ => None,
        })
        .filter_map(|(a, n)| Some((a, a.checked_add(n)?)))
        .collect()
}

/// The entry of `map` (start → (end, unit)) overlapping `[start, end)`, if any: its unit.
fn overlapping(map: &BTreeMap<u64, (u64, u64)>, start: u64, end: u64) -> Option<u64> {
    let (_, &(e, unit)) = map.range(..end).next_back()?;
    (start < end && e > start).then_some(unit)
}

impl SlabBook {
    pub(crate) fn add_slab(&mut self, info: SlabInfo) {
        self.slabs.insert(info.id.0, info);
    }

    pub(crate) fn remove_slab(&mut self, id: SlabId) {
        self.slabs.remove(&id.0);
    }

    /// The live unit overlapping `[start, end)`, if any.
    fn live_in(&self, start: u64, end: u64) -> Option<u64> {
        overlapping(&self.live, start, end)
    }

    /// May the controller write `[addr, addr + len)` of slab `slab`: inside one region, over
    /// no live unit.
    pub(crate) fn check_write(&self, slab: SlabId, addr: ExecutorAddr, len: u64) -> Result<()> {
        let end = self.check_region(slab, addr, len)?;
        if let Some(unit) = self.live_in(addr.0, end) {
            return Err(Error::Busy(format!(
                "{addr}..+{len:#x} overlaps allocation {unit}: a live unit's bytes change only \
                 through patch"
            )));
        }
        Ok(())
    }

    /// May the controller write `[addr, addr + len)` of slab `slab` while code runs
    /// (`write_live`): inside one region, over nothing the executor's runtime reads.
    pub(crate) fn check_live_write(
        &self,
        slab: SlabId,
        addr: ExecutorAddr,
        len: u64,
    ) -> Result<()> {
        let end = self.check_region(slab, addr, len)?;
        if overlapping(&self.registered, addr.0, end).is_some() {
            return Err(Error::Busy(format!(
                "{addr}..+{len:#x} overlaps unwind info or a TLS image the runtime reads"
            )));
        }
        Ok(())
    }

    /// Whether `addr` lies in the code region of `slab`.
    pub(crate) fn in_code(&self, slab: SlabId, addr: ExecutorAddr) -> bool {
        self.slabs.get(&slab.0).is_some_and(|info| {
            let (start, size) = info.regions[0];
            addr.0 >= start.0 && addr.0 - start.0 < size
        })
    }

    /// The slab one of whose regions holds all of `[addr, addr + len)`.
    pub(crate) fn slab_holding(&self, addr: ExecutorAddr, len: u64) -> Option<SlabId> {
        let end = addr.0.checked_add(len)?;
        self.slabs
            .values()
            .find(|info| {
                info.regions
                    .iter()
                    .any(|(a, n)| a.0 <= addr.0 && a.0.checked_add(*n).is_some_and(|e| end <= e))
            })
            .map(|info| info.id)
    }

    /// `[addr, addr + len)` inside one region of slab `slab`: its end.
    fn check_region(&self, slab: SlabId, addr: ExecutorAddr, len: u64) -> Result<u64> {
        let info = self.slabs.get(&slab.0).ok_or(Error::UnknownSlab(slab.0))?;
        let end = addr
            .0
            .checked_add(len)
            .ok_or(Error::RangeWraps { addr, size: len })?;
        let inside = info
            .regions
            .iter()
            .any(|(a, n)| a.0 <= addr.0 && a.0.checked_add(*n).is_some_and(|e| end <= e));
        if !inside {
            return Err(Error::NotOwned {
                addr,
                size: len,
                what: "inside one region of that slab of this executor".into(),
            });
        }
        Ok(end)
    }

    /// A unit finalized in slabs, with its segments (address, size) and the ranges its actions
    /// registered (start, end).
    pub(crate) fn add_unit(
        &mut self,
        id: AllocId,
        segments: &[(u64, u64)],
        registered: &[(u64, u64)],
    ) {
        self.set_registered(id, registered);
        let mut starts = Vec::with_capacity(segments.len());
        for &(s, n) in segments {
            if let Some(e) = s.checked_add(n).filter(|&e| e > s) {
                if self.live_in(s, e).is_none() {
                    self.live.insert(s, (e, id.0));
                    starts.push(s);
                }
            }
        }
        self.units.insert(id.0, starts);
    }

    pub(crate) fn remove_unit(&mut self, id: AllocId) {
        for s in self.units.remove(&id.0).unwrap_or_default() {
            self.live.remove(&s);
        }
        self.set_registered(id, &[]);
    }

    /// The unit's registered ranges are now `ranges` (start, end).
    pub(crate) fn set_registered(&mut self, id: AllocId, ranges: &[(u64, u64)]) {
        self.registered.retain(|_, &mut (_, unit)| unit != id.0);
        for &(s, e) in ranges {
            if overlapping(&self.registered, s, e).is_none() && s < e {
                self.registered.insert(s, (e, id.0));
            }
        }
    }

    /// The executor moved the unit's segments (as `moves` say; a move that names no segment of
    /// the unit here changes nothing).
    pub(crate) fn move_unit(&mut self, id: AllocId, moves: &[SegmentMove]) {
        let Some(starts) = self.units.get_mut(&id.0) else {
            return;
        };
        let moved: Vec<(u64, u64, u64)> = moves
            .iter()
            .filter(|m| {
                self.live
                    .get(&m.from.0)
                    .is_some_and(|&(_, unit)| unit == id.0)
            })
            .map(|m| (m.from.0, m.to.0, m.len))
            .collect();
        for &(from, _, _) in &moved {
            self.live.remove(&from);
        }
        for &(from, to, len) in &moved {
            if let Some(end) = to.checked_add(len) {
                self.live.insert(to, (end, id.0));
            }
            for s in starts.iter_mut().filter(|s| **s == from) {
                *s = to;
            }
        }
    }
}
