//! The in-process executor's memory: its ownership table, and every operation that writes,
//! protects, releases or runs memory, each after the table said the memory is this
//! executor's and in the right state. This is the one place where the executor's safe calls
//! reach `unsafe` code; the checks are in `crate::plan` (what a request may name) and
//! `crate::table` (what this executor owns). See docs/safety.md.

use super::slab::{patch_len, write_range, OnDrop, Slab};
use super::{actions, call, mem};
use crate::executor::{Action, FinalizeRequest};
use crate::plan::Plan;
use crate::table::{NewAlloc, Table};
use crate::{AllocId, Error, ExecutorAddr, Placement, Result, SlabId, SlabInfo, SlabWrite};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Allocation ids, unique in the process (the exit registry is process-wide).
static NEXT_ALLOC: AtomicU64 = AtomicU64::new(1);

pub(crate) struct OwnedMemory {
    table: Mutex<Table<Slab>>,
    page: u64,
}

impl OwnedMemory {
    pub(crate) fn new() -> Self {
        actions::install_exit_hook();
        OwnedMemory {
            table: Mutex::new(Table::default()),
            page: mem::page_size(),
        }
    }

    fn table(&self) -> Result<MutexGuard<'_, Table<Slab>>> {
        self.table
            .lock()
            .map_err(|_| Error::InvalidRequest("the ownership table is poisoned".into()))
    }

    /// For undoing a claim or a pin on the way out (also while unwinding): the table's methods
    /// do not panic, so a poisoned lock still guards a consistent table.
    fn table_anyway(&self) -> MutexGuard<'_, Table<Slab>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn reserve(&self, size: u64, placement: Placement) -> Result<ExecutorAddr> {
        let addr = mem::reserve(size, placement)?;
        let recorded = self
            .table()
            .and_then(|mut t| t.add_reservation(addr.0, size));
        if let Err(e) = recorded {
            // SAFETY: the mapping `reserve` just made; nobody else knows of it.
            let _ = unsafe { mem::release(addr, size) };
            return Err(e);
        }
        Ok(addr)
    }

    pub(crate) fn release(&self, addr: ExecutorAddr, size: u64) -> Result<()> {
        self.table()?.take_reservation(addr.0, size)?;
        // SAFETY: `take_reservation` checked that this is exactly a reservation this executor
        // made, used by no allocation, and took it out of the table: nothing can name it now.
        unsafe { mem::release(addr, size) }
    }

    pub(crate) fn finalize(&self, req: FinalizeRequest) -> Result<AllocId> {
        let mut plan = Plan::of(&req, self.page)?;
        let eh_frames = std::mem::take(&mut plan.eh_frames);
        let id = NEXT_ALLOC.fetch_add(1, Ordering::Relaxed);
        let finalizers = !req.deinitializers.is_empty();
        // Nothing to copy and nothing to run (a JIT's typical unit): live in one visit to the
        // table.
        let live = req.in_slab && req.actions.is_empty();
        let new = NewAlloc {
            initializers: req.initializers.clone(),
            finalizers,
            live,
        };
        self.table()?.begin_finalize(id, &req, plan, new)?;
        if live {
            flush_icache(&req);
        } else {
            match self.fill_and_run(&req, &eh_frames) {
                Ok(dealloc) => self.table_anyway().finish_finalize(id, dealloc),
                Err(e) => {
                    self.abort(id, &req);
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

    /// Finalize failed before the allocation went live.
    fn abort(&self, id: u64, req: &FinalizeRequest) {
        if !req.in_slab {
            let (base, size) = req.reservation;
            // SAFETY: the reservation is this executor's and marked used by this allocation
            // (checked by `begin_finalize`), which never went live: its finalize actions were
            // undone and no id was handed out. Fresh pages make it as `reserve` returned it
            // (content gone, `commit`'s zero-fill assumption true again).
            let _ = unsafe { mem::reset(base, size) };
        }
        self.table_anyway().abort_finalize(id);
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
                why,
            })?;
        }
        let mut dealloc = Vec::new();
        for pair in &req.actions {
            if let Some(a) = &pair.finalize {
                // SAFETY: `plan` checked the action against this allocation's segments, and
                // eh_frame sections were checked above; the memory is mapped and marked this
                // finalizing allocation's (nothing can release it meanwhile).
                if let Err(e) = unsafe { actions::run(a) } {
                    for d in dealloc.iter().rev() {
                        // SAFETY: as above: checked dealloc halves of this allocation, whose
                        // memory stays mapped.
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

    pub(crate) fn deallocate(&self, id: AllocId) -> Result<()> {
        let dying = {
            let mut t = self.table()?;
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
                self.table_anyway().cancel_dealloc(id.0, dying);
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
        self.table_anyway().finish_dealloc(id.0);
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
        let Some((inits, finalizers)) = self.table()?.start_initializers(id.0)? else {
            return Ok(());
        };
        let _unpin = OnDrop(|| self.table_anyway().unpin(id.0));
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
        let id = self.table()?.pin_code(addr)?;
        let _unpin = OnDrop(|| self.table_anyway().unpin(id));
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
        let id = self.table()?.next_slab_id()?;
        let slab = Slab::create(id, sizes, placement, shared)?;
        let fd = match slab.memfd() {
            Some(fd) if shared => Some(fd.try_clone_to_owned().map_err(|e| Error::Memory {
                addr: slab.info.regions[0].0,
                size: 0,
                why: format!("dup of the slab's memfd: {e}"),
            })?),
            None if shared => {
                return Err(Error::InvalidRequest("shared slab without a memfd".into()))
            }
            _ => None,
        };
        let info = slab.info;
        // A slab the table refuses (it cannot overlap anything: the kernel just mapped it) is
        // dropped, and unmapped, right here.
        self.table()?
            .add_slab(info, slab)
            .map_err(|_| Error::Busy(format!("slab {} overlaps memory in use", id.0)))?;
        Ok((info, fd))
    }

    pub(crate) fn write_slab(&self, slab: SlabId, writes: &[SlabWrite<'_>]) -> Result<()> {
        for w in writes {
            let (addr, len) = write_range(w);
            let view = {
                let mut t = self.table()?;
                t.claim(slab, addr, len)?;
                t.slab_payload(slab)?.view()
            };
            let _unclaim = OnDrop(|| self.table_anyway().unclaim(addr, len));
            // SAFETY: the range is claimed (inside one region of our live slab, over no
            // allocation's bytes and no other claim) until `_unclaim`; the slab is not unmapped
            // while claims lie in it.
            unsafe { view.write(w)? };
        }
        Ok(())
    }

    pub(crate) fn with_slab_memory(
        &self,
        slab: SlabId,
        ranges: &[(ExecutorAddr, u64)],
        f: &mut dyn FnMut(&mut [&mut [u8]]),
    ) -> Result<()> {
        let view = {
            let mut t = self.table()?;
            t.claim_all(slab, ranges)?;
            t.slab_payload(slab)?.view()
        };
        let _unclaim = OnDrop(|| {
            let mut t = self.table_anyway();
            for &(a, n) in ranges {
                t.unclaim(a.0, n);
            }
        });
        let mut slices = Vec::with_capacity(ranges.len());
        for &(a, n) in ranges {
            // SAFETY: every range is claimed until `_unclaim` runs, after `slices` (declared
            // later) is dropped; claims never overlap each other, so the slices are disjoint,
            // and the slab is not unmapped while claims lie in it.
            slices.push(unsafe { view.slice_mut(a.0, n)? });
        }
        f(&mut slices);
        Ok(())
    }

    pub(crate) fn patch(&self, slab: SlabId, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        let n = patch_len(addr, bytes)?;
        let t = self.table()?;
        let s = t.check_patch(slab, addr.0, n)?;
        // SAFETY: `check_patch` found the bytes inside one region of our live slab, claimed by
        // no call (so no writable slice over them exists) and while we hold the table's lock
        // none can be made, nor the slab released.
        unsafe { s.view().patch(addr, bytes) }
    }

    pub(crate) fn release_slab(&self, slab: SlabId) -> Result<()> {
        let s = self.table()?.take_slab(slab)?;
        drop(s); // unmapped: no allocation lives in it, nobody writes it (checked)
        Ok(())
    }

    pub(crate) fn add_static_tls(&self, offset: i64, block_size: u64) -> Result<()> {
        self.table()?.add_static_tls(offset, block_size);
        Ok(())
    }
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
        let drained = self.table_anyway().drain();
        for (base, size) in drained.free_reservations {
            // SAFETY: reservations of ours that no allocation uses; the table is going away,
            // so nothing can name them.
            let _ = unsafe { mem::release(ExecutorAddr(base), size) };
        }
        drop(drained.empty_slabs);
        for s in drained.occupied_slabs {
            std::mem::forget(s);
        }
    }
}
