//! The in-process executor's memory: its ownership table, and every operation that writes,
//! protects, releases or runs memory, each after the table said the memory is this
//! executor's and in the right state. This is the one place where the executor's safe calls
//! reach `unsafe` code; the checks are in `crate::plan` (what a request may name) and
//! `crate::table` (what this executor owns). See docs/safety.md.

use super::slab::{patch_len, write_range, OnDrop, Slab, WriteView};
use super::{actions, call, mem, sync, valgrind};
use crate::executor::{Action, ActionPair, FinalizeRequest, Segment, SlabSegment, UnitActions};
use crate::plan::{range, Plan, PlannedSegments};
use crate::shards::{self, OnceIndex};
use crate::table::{MovePlan, NewAlloc, Table, ID_TAG_SHIFT, SLOT_ID_BIT};
use crate::{
    AllocId, Error, ExecutorAddr, Placement, Result, SegmentMove, SlabId, SlabInfo, SlabWrite,
    MAX_READ,
};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The most writes of one `write_slab` or `write_live` call claimed together (claims are a
/// sorted vector: a few dozen at a time keep inserting them cheap).
const CLAIM_BATCH: usize = 64;

/// An allocation id carries the table that holds the allocation: its top bits are the slab's id
/// plus one (0: the home table, allocations in reservations of their own), its low
/// `ID_SHIFT` bits name the allocation in that table: a counter's value below `SLOT_ID_BIT`
/// (`finalize`), or the slot and generation the table minted (`finalize_slab_unit`), never
/// reused. Slab ids are unique in the process, so allocation ids are too (the exit registry is
/// process-wide).
const ID_SHIFT: u32 = ID_TAG_SHIFT;

/// Slab ids below this fit in an allocation id's top bits (as the id plus one).
const SLAB_LIMIT: u32 = (1 << (64 - ID_SHIFT)) - 1;

/// Allocation ids of the home tables (every executor's: unique in the process).
static NEXT_HOME_ALLOC: AtomicU64 = AtomicU64::new(1);

/// Slab ids, unique in the process.
static NEXT_SLAB: AtomicU32 = AtomicU32::new(0);

/// One ownership table and the counter of its allocation ids, on cache lines of its own: two
/// threads finalizing into two slabs write nothing the other reads.
#[repr(align(128))]
struct Shard {
    table: Mutex<Table<Slab>>,
    /// Which table this is: 0 the home table, otherwise the slab's id plus one.
    tag: u64,
    next_seq: AtomicU64,
}

impl Shard {
    fn new(tag: u64, table: Table<Slab>) -> Self {
        Shard {
            table: Mutex::new(table),
            tag,
            next_seq: AtomicU64::new(1),
        }
    }

    #[inline(always)]
    fn lock(&self) -> Result<MutexGuard<'_, Table<Slab>>> {
        self.table.lock().map_err(|_| poisoned())
    }

    /// For undoing a claim or a pin on the way out (also while unwinding): the table's methods
    /// do not panic, so a poisoned lock still guards a consistent table.
    fn lock_anyway(&self) -> MutexGuard<'_, Table<Slab>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new allocation id of this table.
    fn new_id(&self) -> Result<u64> {
        let counter = if self.tag == 0 {
            &NEXT_HOME_ALLOC
        } else {
            &self.next_seq
        };
        let seq = counter.fetch_add(1, Ordering::Relaxed);
        if seq >= SLOT_ID_BIT {
            return Err(Error::InvalidRequest(
                "out of allocation ids in this table".into(),
            ));
        }
        Ok(self.tag << ID_SHIFT | seq)
    }
}

/// The in-process executor's ownership, split so that units of different slabs never take the
/// same lock: a table per slab (its units, their segments, claims and registered ranges), and
/// the home table (reservations and the allocations in them, where every slab lies, the static
/// TLS blocks). Each table checks everything about what it holds, as one table did; what spans
/// tables is routed: an allocation id names its table, a slab id is its table, an address is
/// looked up in the home table's slab spans. Locks are taken home first, then at most one slab's.
pub(crate) struct OwnedMemory {
    home: Shard,
    slabs: OnceIndex<Shard>,
    page: u64,
}

impl OwnedMemory {
    pub(crate) fn new() -> Self {
        actions::install_exit_hook();
        OwnedMemory {
            home: Shard::new(0, Table::default()),
            slabs: OnceIndex::default(),
            page: mem::page_size(),
        }
    }

    /// The table of slab `slab` (one released stays, empty, and refuses everything). (Always
    /// inlined: the LTO build left it a call in `finalize_slab_unit`, 21 instructions a unit
    /// for two atomic loads and a bounds check.)
    #[inline(always)]
    fn slab_shard(&self, slab: SlabId) -> Result<&Shard> {
        // (Built only when it is one: `ok_or` made the error, and dropped it, on every call.)
        self.slabs.get(slab.0).ok_or_else(|| unknown_slab(slab))
    }

    /// The table that holds allocation `id` (if any does).
    fn alloc_shard(&self, id: u64) -> Result<&Shard> {
        match id >> ID_SHIFT {
            0 => Ok(&self.home),
            tag => u32::try_from(tag - 1)
                .ok()
                .and_then(|slab| self.slabs.get(slab))
                .ok_or(Error::UnknownAllocation(id)),
        }
    }

    /// The table of the slab whose span holds `[addr, addr + len)`, else the home table.
    fn shard_at(&self, addr: u64, len: u64) -> Result<&Shard> {
        let slab = self.home.lock()?.slab_at(addr, addr.saturating_add(len));
        slab.map_or(Ok(&self.home), |s| self.slab_shard(s))
    }

    /// The table of a finalize request: the home table's for one in a reservation, else that of
    /// the slab holding its segments (all in one slab).
    fn request_shard(&self, req: &FinalizeRequest) -> Result<&Shard> {
        if !req.in_slab {
            return Ok(&self.home);
        }
        let mut slab = None;
        {
            let home = self.home.lock()?;
            for seg in &req.segments {
                let (s, e) = range(seg.addr.0, seg.size())?;
                let here = home.slab_at(s, e).ok_or_else(|| Error::NotOwned {
                    addr: seg.addr,
                    size: seg.size(),
                    what: "inside a slab of this executor".into(),
                })?;
                if slab.is_some_and(|first| first != here) {
                    return Err(Error::InvalidRequest(format!(
                        "the segment at {} lies in another slab than the request's first: an \
                         allocation's segments lie in one slab",
                        seg.addr
                    )));
                }
                slab = Some(here);
            }
        }
        slab.map_or(Ok(&self.home), |s| self.slab_shard(s))
    }

    pub(crate) fn reserve(&self, size: u64, placement: Placement) -> Result<ExecutorAddr> {
        let addr = mem::reserve(size, placement)?;
        let recorded = self
            .home
            .lock()
            .and_then(|mut t| t.add_reservation(addr.0, size));
        if let Err(e) = recorded {
            // SAFETY: the mapping `reserve` just made; nobody else knows of it.
            let _ = unsafe { mem::release(addr, size) };
            return Err(e);
        }
        Ok(addr)
    }

    pub(crate) fn release(&self, addr: ExecutorAddr, size: u64) -> Result<()> {
        self.home.lock()?.take_reservation(addr.0, size)?;
        // SAFETY: `take_reservation` checked that this is exactly a reservation this executor
        // made, used by no allocation, and took it out of the table: nothing can name it now.
        unsafe { mem::release(addr, size) }
    }

    pub(crate) fn finalize(&self, req: FinalizeRequest) -> Result<AllocId> {
        let mut plan = Plan::of(&req, self.page)?;
        let eh_frames = std::mem::take(&mut plan.eh_frames);
        let shard = self.request_shard(&req)?;
        let id = shard.new_id()?;
        let finalizers = !req.deinitializers.is_empty();
        // Nothing to copy and nothing to run (a JIT's typical unit): live in one visit to the
        // table.
        let live = req.in_slab && req.actions.is_empty();
        let new = NewAlloc {
            initializers: req.initializers.clone(),
            finalizers,
            live,
        };
        shard.lock()?.begin_finalize(id, &req, plan, new)?;
        if live {
            flush_icache(&req);
        } else {
            match self.fill_and_run(&req, &eh_frames) {
                Ok(dealloc) => shard.lock_anyway().finish_finalize(id, dealloc),
                Err(e) => {
                    abort(shard, id, &req);
                    return Err(e);
                }
            }
        }
        if finalizers {
            if let Err(e) = actions::add_finalizers(id, req.deinitializers) {
                // Nobody has its id yet: undo it as deallocation would.
                let _ = self.deallocate(AllocId(id));
                return Err(e);
            }
        }
        Ok(AllocId(id))
    }

    /// A new unit written into a slab and made live: one visit to the table checks and takes
    /// its segments (for the allocation and for its writer at once), `fill` writes through the
    /// slab's alias with no lock held, and a second visit, without a search, ends the claims and
    /// makes it live. A unit with actions runs them in between, as `finalize` does.
    pub(crate) fn finalize_slab_unit(
        &self,
        slab: SlabId,
        segments: &[SlabSegment],
        fill: &mut dyn FnMut(&mut [&mut [u8]]) -> Option<UnitActions>,
    ) -> Result<Option<AllocId>> {
        if let [one] = segments {
            return self.finalize_one_segment_unit(slab, one, fill);
        }
        let planned = Plan::slab_segments(segments)?;
        let shard = self.slab_shard(slab)?;
        let (id, view) = {
            let mut t = shard.lock()?;
            let id = t.begin_slab_unit(slab, segments, &planned)?;
            let payload = t.slab_payload(slab)?;
            for seg in segments {
                payload.populate_for(seg.addr.0, seg.size);
            }
            (id, payload.view())
        };
        let pending = PendingUnit {
            shard,
            id,
            claimed: true,
        };
        let unit = {
            // A unit has a segment per slab region at most: those slices need no vector.
            let mut few: [&mut [u8]; 3] = Default::default();
            let mut many: Vec<&mut [u8]> = Vec::new();
            let inline = segments.len() <= few.len();
            for (i, seg) in segments.iter().enumerate() {
                // SAFETY: every non-empty segment is claimed for this call (inside one region
                // of our live slab, over no allocation's bytes and no other claim; a dense
                // unit's claim is its `Writing` state, which every other call's check sees as
                // one) until `slab_unit_live`, `slab_unit_written` or `pending`'s abort, all
                // after this block drops `few` and `many`; the segments are pairwise disjoint
                // (`Plan::slab_segments`), so the slices are; the slab is not unmapped while an
                // allocation lies in it.
                let slice = unsafe { view.slice_mut(seg.addr.0, seg.size)? };
                if inline {
                    few[i] = slice;
                } else {
                    many.push(slice);
                }
            }
            fill(if inline {
                &mut few[..segments.len()]
            } else {
                &mut many
            })
        };
        let Some(unit) = unit else {
            return Ok(None);
        };
        if runs_nothing(&unit) {
            // A JIT's typical unit: nothing to check, register or run, so no plan beyond its
            // segments (checked by `begin_slab_unit`).
            for s in segments {
                mem::flush_icache(s.addr, s.size);
            }
            return make_live(pending, unit);
        }
        self.finish_slab_unit(pending, segments, planned, unit)
    }

    /// [`OwnedMemory::finalize_slab_unit`] for a unit of one segment (a JIT's function): the
    /// same steps, with the segment checked and recorded by
    /// [`Table::begin_one_segment_unit`] (no plan made first: a unit with actions makes it
    /// after its writer ran) and one writable slice.
    fn finalize_one_segment_unit(
        &self,
        slab: SlabId,
        seg: &SlabSegment,
        fill: &mut dyn FnMut(&mut [&mut [u8]]) -> Option<UnitActions>,
    ) -> Result<Option<AllocId>> {
        let shard = self.slab_shard(slab)?;
        // The slice is made under the lock from the table's payload, not from a copy of the
        // slab's view (80 bytes, copied twice on the way out of the block).
        let (id, slice) = {
            let mut t = shard.lock()?;
            let (id, slab) = t.begin_one_segment_unit(slab, seg)?;
            // SAFETY: the segment is claimed for this call (inside one region of our live
            // slab, over no allocation's bytes and no other claim; a dense unit's claim is its
            // `Writing` state, which every other call's check sees as one) until
            // `slab_unit_live`, `slab_unit_written` or `pending`'s abort, all after `fill`
            // returns and the slice (moved into the array `fill` gets) is gone; the slab is not
            // unmapped while an allocation lies in it.
            (id, unsafe { slab.slice_for_write(seg.addr.0, seg.size) })
        };
        let pending = PendingUnit {
            shard,
            id,
            claimed: true,
        };
        // (Refused after `pending` exists: its drop frees the unit, taking the lock again.)
        let slice = slice?;
        match fill(&mut [slice]) {
            None => Ok(None),
            Some(unit) if runs_nothing(&unit) => {
                mem::flush_icache(seg.addr, seg.size);
                make_live(pending, unit)
            }
            Some(unit) => {
                let segments = std::slice::from_ref(seg);
                let planned = Plan::slab_segments(segments)?;
                self.finish_slab_unit(pending, segments, planned, unit)
            }
        }
    }

    /// The rest of [`OwnedMemory::finalize_slab_unit`] for a unit whose writer asked for
    /// actions, initializers or deinitializers: they are checked, the unit's claims end, and
    /// its actions run. (Out of line: a JIT's function has none.)
    #[inline(never)]
    fn finish_slab_unit(
        &self,
        mut pending: PendingUnit<'_>,
        segments: &[SlabSegment],
        planned: PlannedSegments,
        unit: UnitActions,
    ) -> Result<Option<AllocId>> {
        let (shard, id) = (pending.shard, pending.id);
        let mut plan = Plan {
            segments: planned,
            ..Plan::default()
        };
        plan.check_unit(&unit.actions, &unit.initializers, &unit.deinitializers)?;
        let eh_frames = std::mem::take(&mut plan.eh_frames);
        let live = unit.actions.is_empty();
        let finalizers = !unit.deinitializers.is_empty();
        let new = NewAlloc {
            initializers: unit.initializers,
            finalizers,
            live,
        };
        // What runs from the unit must see the bytes just written (a no-op on x86-64).
        for s in segments {
            mem::flush_icache(s.addr, s.size);
        }
        shard.lock()?.slab_unit_written(id, &mut plan, new)?;
        pending.claimed = false;
        if !live {
            let req = FinalizeRequest {
                segments: segments.iter().map(Segment::from).collect(),
                actions: unit.actions,
                in_slab: true,
                ..FinalizeRequest::default()
            };
            let dealloc = self.fill_and_run(&req, &eh_frames)?;
            shard.lock_anyway().finish_finalize(id, dealloc);
        }
        std::mem::forget(pending);
        if finalizers {
            if let Err(e) = actions::add_finalizers(id, unit.deinitializers) {
                // Nobody has its id yet: undo it as deallocation would.
                let _ = self.deallocate(AllocId(id));
                return Err(e);
            }
        }
        Ok(Some(AllocId(id)))
    }

    /// Put the content in place, check the unwind info, run the finalize actions. On failure,
    /// what ran is undone. Returns the dealloc actions.
    fn fill_and_run(&self, req: &FinalizeRequest, eh_frames: &[(u64, u64)]) -> Result<Vec<Action>> {
        if !req.in_slab {
            for s in &req.segments {
                if s.content.is_empty() && s.zero_fill == 0 {
                    continue;
                }
                // SAFETY: `begin_finalize` checked that the segment is page aligned, that its
                // pages lie in the request's reservation, which is exactly one of ours and was
                // free, and marked it used by this allocation: no other call can write,
                // release or finalize it now. `plan` checked the segments' pages do not
                // overlap. The reservation is fresh, or was reset after a failed finalize.
                unsafe { mem::commit(s.addr, &s.content, s.zero_fill, s.prot)? };
            }
        }
        flush_icache(req);
        for &(addr, size) in eh_frames {
            // SAFETY: `plan` checked the range lies inside one segment of this allocation,
            // which is mapped readable now (committed above, or a slab region, all readable)
            // and is this allocation's alone until it is deallocated.
            let bytes = unsafe { mem::read(addr, size) };
            crate::eh_frame::check(&bytes, addr).map_err(|why| Error::EhFrame {
                addr: ExecutorAddr(addr),
                why: why.into(),
            })?;
        }
        // SAFETY: `plan` checked the actions against this allocation's segments, and eh_frame
        // sections were checked above; the memory is mapped and marked this finalizing
        // allocation's (nothing can release it meanwhile).
        unsafe { run_actions(&req.actions) }
    }

    pub(crate) fn deallocate(&self, id: AllocId) -> Result<()> {
        let shard = self.alloc_shard(id.0)?;
        let dying = {
            let mut t = shard.lock()?;
            let dying = t.begin_dealloc(id.0)?;
            if dying.is_trivial() {
                // Nothing to run, nothing to unmap: gone in one visit to the table.
                if let Err(e) = actions::check_not_exiting() {
                    t.cancel_dealloc(id.0, dying);
                    return Err(e);
                }
                t.finish_dealloc(id.0);
                return Ok(());
            }
            dying
        };
        let deinit = if dying.finalizers {
            actions::take_finalizers(id.0)
        } else {
            actions::check_not_exiting().map(|()| None)
        };
        let deinit = match deinit {
            Ok(d) => d,
            Err(e) => {
                shard.lock_anyway().cancel_dealloc(id.0, dying);
                return Err(e);
            }
        };
        // Destructors and exit handlers first, while the code and data are still mapped; then
        // undo the registrations in reverse order; only then unmap. Every action runs even if
        // one fails: the unit goes either way.
        let mut first_error = None;
        for a in deinit.iter().flatten().chain(dying.dealloc.iter().rev()) {
            // SAFETY: checked at finalize against this allocation, which is dying: marked so in
            // the table, so nothing else deallocates, releases or writes it, and it is unmapped
            // only below.
            if let Err(e) = unsafe { actions::run(a) } {
                first_error.get_or_insert(e);
            }
        }
        shard.lock_anyway().finish_dealloc(id.0);
        if let Some((base, size)) = dying.reservation {
            // SAFETY: the allocation's own reservation (checked at finalize), taken out of the
            // table just now; its actions have run and nothing can name it.
            if let Err(e) = unsafe { mem::release(ExecutorAddr(base), size) } {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub(crate) fn run_initializers(&self, id: AllocId) -> Result<()> {
        let shard = self.alloc_shard(id.0)?;
        let Some((inits, finalizers)) = shard.lock()?.start_initializers(id.0)? else {
            return Ok(());
        };
        let _unpin = OnDrop(|| shard.lock_anyway().unpin(id.0));
        if finalizers {
            actions::mark_initialized(id.0)?;
        }
        for f in inits {
            // SAFETY: `plan` checked each initializer lies in an executable segment of this
            // allocation, which is live and pinned: not deallocated until `_unpin`.
            unsafe { actions::run(&Action::CallVoid(f))? };
        }
        Ok(())
    }

    /// Pin the live unit whose code holds `addr`, run `call` on it, unpin.
    fn call_code<R>(&self, addr: ExecutorAddr, call: impl FnOnce() -> R) -> Result<R> {
        let shard = self.shard_at(addr.0, 1)?;
        let id = shard.lock()?.pin_code(addr)?;
        let _unpin = OnDrop(|| shard.lock_anyway().unpin(id));
        Ok(call())
    }

    pub(crate) fn call_void(&self, f: ExecutorAddr) -> Result<()> {
        self.call_code(f, || {
            // SAFETY: `f` lies in an executable segment of a live unit of this executor, pinned
            // while it runs (checked by `pin_code`). That the code there is a `void f(void)`,
            // and what it does, is the caller's declaration: the trust JIT'd code needs.
            unsafe { call::void(f) }
        })
    }

    pub(crate) fn call(&self, f: ExecutorAddr, args: &[u64]) -> Result<u64> {
        let mut six = [0u64; 6];
        if args.len() > 6 {
            return Err(Error::InvalidRequest(format!(
                "a call takes at most 6 arguments (got {})",
                args.len()
            )));
        }
        six[..args.len()].copy_from_slice(args);
        self.call_code(f, || {
            // SAFETY: as in `call_void`, for a function of at most six integer arguments
            // returning an integer (the contract of `Executor::call`).
            unsafe { call::with_args(f, &six) }
        })
    }

    pub(crate) fn run_main(&self, entry: ExecutorAddr, args: &[String]) -> Result<i32> {
        self.call_code(entry, || {
            // SAFETY: as in `call_void`, for `main`'s C signature (the contract of `--entry`).
            unsafe { call::main(entry, args) }
        })
    }

    pub(crate) fn create_slab(
        &self,
        sizes: [u64; 3],
        placement: Placement,
        shared: bool,
    ) -> Result<(SlabInfo, Option<OwnedFd>)> {
        let id = NEXT_SLAB
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n + 1 < SLAB_LIMIT.min(shards::LIMIT)).then_some(n + 1)
            })
            .map(SlabId)
            .map_err(|_| Error::InvalidRequest("out of slab ids".into()))?;
        let slab = Slab::create(id, sizes, placement, shared)?;
        let fd = match slab.memfd() {
            Some(fd) if shared => Some(fd.try_clone_to_owned().map_err(|e| Error::Memory {
                addr: slab.info.regions[0].0,
                size: 0,
                why: format!("dup of the slab's memfd: {e}").into(),
            })?),
            None if shared => {
                return Err(Error::InvalidRequest("shared slab without a memfd".into()))
            }
            _ => None,
        };
        let info = slab.info;
        // A slab the tables refuse (it cannot overlap anything: the kernel just mapped it) is
        // dropped, and unmapped, right here. Under the home table's lock, so that the static
        // TLS blocks copied are all there are (`add_static_tls` takes it too).
        let mut home = self.home.lock()?;
        home.add_slab_span(info)?;
        let tag = u64::from(id.0) + 1;
        let mut table = Table::with_id_tag(tag);
        for (offset, size) in home.static_tls_blocks() {
            table.add_static_tls(offset, size);
        }
        let made = table
            .add_slab(info, slab)
            .map_err(drop)
            .and_then(|()| self.slabs.set(id.0, Shard::new(tag, table)).map_err(drop));
        if made.is_err() {
            home.remove_slab_span(id, info.regions[0].0 .0);
            return Err(Error::Busy(format!("slab {} overlaps memory in use", id.0)));
        }
        Ok((info, fd))
    }

    pub(crate) fn write_slab(&self, slab: SlabId, writes: &[SlabWrite<'_>]) -> Result<()> {
        let shard = self.slab_shard(slab)?;
        let mut next = 0;
        while next < writes.len() {
            // The leading writes that can be claimed together, under one visit to the table.
            let rest = &writes[next..];
            let mut claimed = 0;
            let view = {
                let mut t = shard.lock()?;
                for w in rest.iter().take(CLAIM_BATCH) {
                    let (addr, len) = write_range(w);
                    match t.claim(slab, addr, len) {
                        Ok(()) => claimed += 1,
                        Err(e) if claimed == 0 => return Err(e),
                        Err(_) => break,
                    }
                }
                t.slab_payload(slab)?.view()
            };
            let batch = &rest[..claimed];
            let _unclaim = OnDrop(|| {
                let mut t = shard.lock_anyway();
                for w in batch {
                    let (addr, len) = write_range(w);
                    t.unclaim(addr, len);
                }
            });
            for w in batch {
                // SAFETY: the range is claimed (inside one region of our live slab, over no
                // allocation's bytes and no other claim) until `_unclaim`; the slab is not
                // unmapped while claims lie in it.
                unsafe { view.write(w)? };
            }
            next += claimed;
        }
        Ok(())
    }

    pub(crate) fn with_slab_memory(
        &self,
        slab: SlabId,
        ranges: &[(ExecutorAddr, u64)],
        f: &mut dyn FnMut(&mut [&mut [u8]]),
    ) -> Result<()> {
        let shard = self.slab_shard(slab)?;
        let view = {
            let mut t = shard.lock()?;
            t.claim_all(slab, ranges)?;
            t.slab_payload(slab)?.view()
        };
        let _unclaim = OnDrop(|| {
            let mut t = shard.lock_anyway();
            for &(a, n) in ranges {
                t.unclaim(a.0, n);
            }
        });
        // A unit has a range per slab region at most: those slices need no vector.
        let mut few: [&mut [u8]; 3] = Default::default();
        let mut many: Vec<&mut [u8]> = Vec::new();
        let inline = ranges.len() <= few.len();
        for (i, &(a, n)) in ranges.iter().enumerate() {
            // SAFETY: every range is claimed until `_unclaim` runs, after `few` and `many`
            // (declared later) are dropped; claims never overlap each other, so the slices are
            // disjoint, and the slab is not unmapped while claims lie in it.
            let slice = unsafe { view.slice_mut(a.0, n)? };
            if inline {
                few[i] = slice;
            } else {
                many.push(slice);
            }
        }
        f(if inline {
            &mut few[..ranges.len()]
        } else {
            &mut many
        });
        Ok(())
    }

    pub(crate) fn patch(&self, slab: SlabId, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        let n = patch_len(addr, bytes)?;
        let t = self.slab_shard(slab)?.lock()?;
        let s = t.check_patch(slab, addr.0, n)?;
        // SAFETY: `check_patch` found the bytes inside one region of our live slab, claimed by
        // no call (so no writable slice over them exists) and while we hold the table's lock
        // none can be made, nor the slab released.
        unsafe { s.view().patch(addr, bytes) }
    }

    pub(crate) fn write_live(&self, slab: SlabId, writes: &[SlabWrite<'_>]) -> Result<()> {
        let shard = self.slab_shard(slab)?;
        let mut code_written = Vec::new();
        let mut next = 0;
        let mut written = Ok(());
        while next < writes.len() {
            match self.write_live_batch(shard, slab, &writes[next..], &mut code_written) {
                Ok(0) => break,
                Ok(n) => next += n,
                Err(e) => {
                    written = Err(e);
                    break;
                }
            }
        }
        // Also after an error: what was written must not run stale.
        let synced = code_synced(&code_written);
        written.and(synced)
    }

    /// Claim the leading writes of `writes` under one visit to the table (up to the first that
    /// cannot be claimed now: refused, or overlapping one claimed before it in this batch), write
    /// them, and unclaim them. Returns how many were written; the error of the first when not
    /// even it could be claimed.
    fn write_live_batch(
        &self,
        shard: &Shard,
        slab: SlabId,
        writes: &[SlabWrite<'_>],
        code_written: &mut Vec<(u64, u64)>,
    ) -> Result<usize> {
        let mut claimed = 0;
        let view = {
            let mut t = shard.lock()?;
            for w in writes.iter().take(CLAIM_BATCH) {
                let (addr, len) = write_range(w);
                match t.claim_live(slab, addr, len) {
                    Ok(()) => claimed += 1,
                    Err(e) if claimed == 0 => return Err(e),
                    Err(_) => break,
                }
            }
            t.slab_payload(slab)?.view()
        };
        let batch = &writes[..claimed];
        let _unclaim = OnDrop(|| {
            let mut t = shard.lock_anyway();
            for w in batch {
                let (addr, len) = write_range(w);
                t.unclaim(addr, len);
            }
        });
        for w in batch {
            // SAFETY: the range is claimed (inside one region of our live slab, over no other
            // claim, no registered range and no allocation that is not live) until `_unclaim`;
            // the slab is not unmapped while claims lie in it. Other threads may execute or
            // read the bytes: `write_live` stores them as aligned atomic words.
            unsafe { view.write_live(w)? };
            let (addr, len) = write_range(w);
            if len > 0 && in_code_region(&view, addr) {
                code_written.push((addr, len));
            }
        }
        Ok(claimed)
    }

    /// Code in `ranges` of `slab` changed behind the table (another process wrote the shared
    /// pages): valgrind forgets it and every core serializes.
    pub(crate) fn sync_code(&self, slab: SlabId, ranges: &[(ExecutorAddr, u64)]) -> Result<()> {
        let view = {
            let t = self.slab_shard(slab)?.lock()?;
            for &(a, n) in ranges {
                t.check_in_slab(slab, a.0, n)?;
            }
            t.slab_payload(slab)?.view()
        };
        for &(a, n) in ranges {
            if n > 0 && in_code_region(&view, a.0) {
                valgrind::discard_translations(a.0, n);
                mem::flush_icache(a, n);
            }
        }
        sync::sync_cores()
    }

    pub(crate) fn read_memory(&self, addr: ExecutorAddr, len: u64) -> Result<Vec<u8>> {
        if len > MAX_READ {
            return Err(Error::InvalidRequest(format!(
                "a read of {len:#x} bytes (at most {MAX_READ:#x} at once)"
            )));
        }
        range(addr.0, len)?;
        // The whole range first, so that a refused read reads nothing; then chunk by chunk,
        // each under the lock (which keeps the memory mapped) but none holding it for long. The
        // table is that of the slab holding the first byte (a read across two slabs is refused
        // by it), or the home table's.
        let shard = self.shard_at(addr.0, len)?;
        shard.lock()?.check_read(addr.0, len)?;
        const CHUNK: u64 = 1 << 20;
        let mut out = vec![0u8; len as usize];
        for (i, chunk) in out.chunks_mut(CHUNK as usize).enumerate() {
            let at = addr.0 + i as u64 * CHUNK;
            let t = shard.lock()?;
            t.check_read(at, chunk.len() as u64)?;
            // SAFETY: `check_read` found the range inside a region of one of our live slabs or a
            // segment of a live allocation — mapped readable, and kept mapped while we hold the
            // table's lock (slabs and allocations go only under it) — and claimed by no call, so
            // no writable slice covers it.
            unsafe { mem::read_into(at, chunk) };
            drop(t);
        }
        Ok(out)
    }

    pub(crate) fn move_allocation(
        &self,
        id: AllocId,
        moves: &[SegmentMove],
        new_actions: Vec<ActionPair>,
    ) -> Result<()> {
        actions::check_not_exiting()?;
        let shard = self.alloc_shard(id.0)?;
        let (plan, registered, views, undo) = {
            let mut t = shard.lock()?;
            let plan = t.plan_move(id.0, moves)?;
            let new = Plan::for_placed(PlannedSegments::from_slice(&plan.segments), &new_actions)?;
            t.check_static_tls(&new.static_tls)?;
            for &(addr, size) in &new.eh_frames {
                check_moved_eh_frame(&plan, addr, size)?;
            }
            let views = plan
                .moves
                .iter()
                .map(|m| t.slab_payload(m.0).map(|s| s.view()))
                .collect::<Result<Vec<_>>>()?;
            // Checked: from here on the move happens.
            let undo = t.begin_move(id.0, &plan);
            (plan, new.registered, views, undo)
        };
        for a in undo.iter().rev() {
            // SAFETY: dealloc halves checked at finalize (or by an earlier move) against this
            // allocation, which is moving: marked so in the table, so nothing deallocates,
            // calls or writes it, and its memory (in a slab that cannot be released while it
            // lives there) stays mapped. Each undoes exactly its registration.
            if let Err(e) = unsafe { actions::run(a) } {
                tracing::warn!("moving allocation {}: {a:?} failed: {e}", id.0);
            }
        }
        let copied = copy_moved(shard, id.0, &plan, &views);
        let translated = actions::translate_finalizers(id.0, |a| plan.translate_action(a));
        let moved_code: Vec<(u64, u64)> = plan
            .moves
            .iter()
            .zip(&views)
            .filter(|(m, v)| in_code_region(v, m.1))
            .flat_map(|(m, _)| [(m.1, m.3), (m.2, m.3)])
            .collect();
        let synced = code_synced(&moved_code);
        // SAFETY: `Plan::for_placed` checked the actions against the allocation's new segments
        // (and eh_frame sections were checked against the bytes now there); it is still
        // marked moving, so its memory stays mapped and nobody else registers it.
        match unsafe { run_actions(&new_actions) } {
            Ok(dealloc) => {
                shard.lock_anyway().finish_move(id.0, registered, dealloc);
                copied
                    .and(translated)
                    .and(synced)
                    .map_err(|e| Error::AfterMove {
                        id: id.0,
                        why: e.to_string().into(),
                    })
            }
            Err(e) => {
                shard
                    .lock_anyway()
                    .finish_move(id.0, Vec::new(), Vec::new());
                Err(Error::AfterMove {
                    id: id.0,
                    why: format!("registering it there failed, it lives unregistered: {e}").into(),
                })
            }
        }
    }

    /// Segments of several allocations moved, in order, each as `move_allocation(id, &[m],
    /// Vec::new())` moves it, with one serialization of the cores at the end. Returns how many
    /// moved, and why the next one did not.
    pub(crate) fn move_allocations(&self, moves: &[(AllocId, SegmentMove)]) -> (usize, Result<()>) {
        if let Err(e) = actions::check_not_exiting() {
            return (0, Err(e));
        }
        let mut moved_code = Vec::new();
        let mut done = 0;
        let mut result = Ok(());
        for (id, m) in moves {
            match self.move_one(*id, m) {
                Ok(code) => {
                    moved_code.extend(code);
                    done += 1;
                }
                Err((copied, e)) => {
                    done += usize::from(copied);
                    result = Err(e);
                    break;
                }
            }
        }
        let synced = code_synced(&moved_code);
        (done, result.and(synced))
    }

    /// One segment of a batch: registrations undone, bytes copied, the table updated; the code
    /// ranges touched (old and new) for the caller to serialize. On an error, whether the bytes
    /// moved.
    fn move_one(
        &self,
        id: AllocId,
        m: &SegmentMove,
    ) -> std::result::Result<Vec<(u64, u64)>, (bool, Error)> {
        let shard = self.alloc_shard(id.0).map_err(|e| (false, e))?;
        let (plan, views, undo) = {
            let mut t = shard.lock().map_err(|e| (false, e))?;
            let plan = t
                .plan_move(id.0, std::slice::from_ref(m))
                .map_err(|e| (false, e))?;
            let views = plan
                .moves
                .iter()
                .map(|m| t.slab_payload(m.0).map(|s| s.view()))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| (false, e))?;
            let undo = t.begin_move(id.0, &plan);
            (plan, views, undo)
        };
        for a in undo.iter().rev() {
            // SAFETY: as in `move_allocation`: dealloc halves checked at finalize against this
            // allocation, which is marked moving (nothing deallocates, calls or writes it, and
            // its slab stays mapped); each undoes exactly its registration.
            if let Err(e) = unsafe { actions::run(a) } {
                tracing::warn!("moving allocation {}: {a:?} failed: {e}", id.0);
            }
        }
        let copied = copy_moved(shard, id.0, &plan, &views);
        let translated = actions::translate_finalizers(id.0, |a| plan.translate_action(a));
        shard
            .lock_anyway()
            .finish_move(id.0, Vec::new(), Vec::new());
        let code = plan
            .moves
            .iter()
            .zip(&views)
            .filter(|(m, v)| in_code_region(v, m.1))
            .flat_map(|(m, _)| [(m.1, m.3), (m.2, m.3)])
            .collect();
        copied.and(translated).map_err(|e| {
            let e = Error::AfterMove {
                id: id.0,
                why: e.to_string().into(),
            };
            (true, e)
        })?;
        Ok(code)
    }

    pub(crate) fn release_slab(&self, slab: SlabId) -> Result<()> {
        // The home table first (the lock order), so that no slab span is recorded without its
        // slab.
        let mut home = self.home.lock()?;
        let s = self.slab_shard(slab)?.lock()?.take_slab(slab)?;
        home.remove_slab_span(slab, s.info.regions[0].0 .0);
        drop(home);
        drop(s); // unmapped: no allocation lives in it, nobody writes it (checked)
        Ok(())
    }

    pub(crate) fn add_static_tls(&self, offset: i64, block_size: u64) -> Result<()> {
        // Every table checks the blocks its units use: each gets them. Under the home table's
        // lock, so that a slab made meanwhile copies them too (`create_slab`).
        let mut home = self.home.lock()?;
        home.add_static_tls(offset, block_size);
        for (_, shard) in self.slabs.iter() {
            shard.lock_anyway().add_static_tls(offset, block_size);
        }
        Ok(())
    }
}

/// Whether a slab unit's writer asked for nothing to run, check or register (a JIT's typical
/// unit).
#[inline(always)]
fn runs_nothing(unit: &UnitActions) -> bool {
    unit.actions.is_empty() && unit.initializers.is_empty() && unit.deinitializers.is_empty()
}

/// A slab unit that [`runs_nothing`], written: live now (one short visit to its table). Its
/// empty action lists end here. (A function of its own: inlined into `finalize_slab_unit`,
/// the table's lock, the guard's drop and `slab_unit_live` stayed three calls there; here the
/// compiler inlines all three, 26 instructions a unit fewer.)
#[inline(never)]
fn make_live(pending: PendingUnit<'_>, unit: UnitActions) -> Result<Option<AllocId>> {
    let (shard, id) = (pending.shard, pending.id);
    shard.lock()?.slab_unit_live(id)?;
    std::mem::forget(pending);
    forget_if_unallocated(unit.actions);
    forget_if_unallocated(unit.initializers);
    forget_if_unallocated(unit.deinitializers);
    Ok(Some(AllocId(id)))
}

/// Drop `v`, without the call into its element type's drop glue when it never allocated (then
/// it holds nothing: forgetting it is dropping it). The no-action path of `finalize_slab_unit`
/// ends three empty vectors for every unit: about 16 instructions each as a drop.
#[inline(always)]
fn forget_if_unallocated<T>(v: Vec<T>) {
    if v.capacity() == 0 {
        std::mem::forget(v);
    }
}

/// Slab `slab` is not this executor's (out of line: a link names a slab it was given).
#[cold]
#[inline(never)]
fn unknown_slab(slab: SlabId) -> Error {
    Error::UnknownSlab(slab.0)
}

/// A panic left a table's lock poisoned (out of line: it does not happen).
#[cold]
#[inline(never)]
fn poisoned() -> Error {
    Error::InvalidRequest("the ownership table is poisoned".into())
}

/// A new slab unit that has not gone live ([`OwnedMemory::finalize_slab_unit`]): dropped on an
/// error, a give-up or a panic of its writer, it frees the unit's memory (and its claims while
/// `claimed`); forgotten once the unit is live.
struct PendingUnit<'a> {
    shard: &'a Shard,
    id: u64,
    claimed: bool,
}

impl Drop for PendingUnit<'_> {
    fn drop(&mut self) {
        self.shard
            .lock_anyway()
            .abort_slab_unit(self.id, self.claimed);
    }
}

/// Finalize failed before allocation `id` of `shard`'s table went live.
fn abort(shard: &Shard, id: u64, req: &FinalizeRequest) {
    if !req.in_slab {
        let (base, size) = req.reservation;
        // SAFETY: the reservation is this executor's and marked used by this allocation
        // (checked by `begin_finalize`), which never went live: its finalize actions were
        // undone and no id was handed out. Fresh pages make it as `reserve` returned it
        // (content gone, `commit`'s zero-fill assumption true again).
        let _ = unsafe { mem::reset(base, size) };
    }
    shard.lock_anyway().abort_finalize(id);
}

/// Copy the moving allocation's bytes (under the table's lock: no patch, read or other move
/// meanwhile) and record the segments at their new addresses.
fn copy_moved(shard: &Shard, id: u64, plan: &MovePlan, views: &[WriteView]) -> Result<()> {
    let mut t = shard.lock_anyway();
    let mut first_error = Ok(());
    for (&(_, from, to, len), view) in plan.moves.iter().zip(views) {
        // SAFETY: `plan_move` checked both ranges inside one region of the slab the view
        // belongs to, which lives (the allocation is in it); the destination is claimed for
        // this move, the source is the moving allocation's (written by no claim, and patches
        // wait for the lock we hold).
        if let Err(e) = unsafe { view.copy_within(from, to, len) } {
            first_error = first_error.and(Err(e));
        }
    }
    t.relocate(id, plan);
    first_error
}

/// Run the finalize halves of `pairs` in order; on a failure, undo (in reverse) the dealloc
/// halves of those that ran and return the error. Returns the dealloc halves.
///
/// # Safety
/// As [`actions::run`] for every action of `pairs`: checked against one allocation whose memory
/// stays mapped, and whose eh_frame sections were checked.
unsafe fn run_actions(pairs: &[ActionPair]) -> Result<Vec<Action>> {
    let mut dealloc = Vec::new();
    for pair in pairs {
        if let Some(a) = &pair.finalize {
            // SAFETY: this function's contract.
            if let Err(e) = unsafe { actions::run(a) } {
                for d in dealloc.iter().rev() {
                    // SAFETY: as above: checked dealloc halves of the same allocation.
                    let _ = unsafe { actions::run(d) };
                }
                return Err(e);
            }
        }
        if let Some(d) = &pair.dealloc {
            dealloc.push(d.clone());
        }
    }
    Ok(dealloc)
}

/// The `.eh_frame` a move registers at `[addr, addr + size)` (inside one of the allocation's new
/// segments), checked before anything moves: its bytes are those now at the matching place of
/// the old segment, and it is checked at its new address.
fn check_moved_eh_frame(plan: &MovePlan, addr: u64, size: u64) -> Result<()> {
    let source = plan
        .moves
        .iter()
        .find(|&&(_, _, to, len)| addr >= to && addr - to < len)
        .map_or(addr, |&(_, from, to, _)| from + (addr - to));
    let mut bytes = vec![0u8; size as usize];
    // SAFETY: `Plan::for_placed` found the range inside one new segment; its bytes are now in
    // the matching old segment of the live allocation (in a slab: mapped), and the caller holds
    // the table's lock while no claim covers the allocation (`plan_move`): nobody writes it.
    unsafe { mem::read_into(source, &mut bytes) };
    crate::eh_frame::check(&bytes, addr).map_err(|why| Error::EhFrame {
        addr: ExecutorAddr(addr),
        why: why.into(),
    })
}

/// Whether `addr` lies in the code region of the view's slab.
fn in_code_region(view: &WriteView, addr: u64) -> bool {
    let (start, size) = view.info.regions[0];
    addr >= start.0 && addr - start.0 < size
}

/// Code in `ranges` was rewritten: valgrind forgets its translations, the instruction cache is
/// made coherent, and every core serializes (nothing to do when no code changed).
fn code_synced(ranges: &[(u64, u64)]) -> Result<()> {
    if ranges.is_empty() {
        return Ok(());
    }
    for &(a, n) in ranges {
        valgrind::discard_translations(a, n);
        mem::flush_icache(ExecutorAddr(a), n);
    }
    sync::sync_cores()
}

/// Make the instruction cache see a request's segments (a no-op on x86-64; see `mem`).
fn flush_icache(req: &FinalizeRequest) {
    for s in &req.segments {
        mem::flush_icache(s.addr, s.size());
    }
}

impl Drop for OwnedMemory {
    /// Unmaps what no unit uses; leaks the rest. Units still live keep running (a thread may be
    /// in their code, exit handlers will call their finalizers), so their memory stays.
    fn drop(&mut self) {
        let home = self.home.lock_anyway().drain();
        for (base, size) in home.free_reservations {
            // SAFETY: reservations of ours that no allocation uses; the tables are going away,
            // so nothing can name them.
            let _ = unsafe { mem::release(ExecutorAddr(base), size) };
        }
        for (_, shard) in self.slabs.iter() {
            let drained = shard.lock_anyway().drain();
            drop(drained.empty_slabs);
            for s in drained.occupied_slabs {
                std::mem::forget(s);
            }
        }
    }
}
