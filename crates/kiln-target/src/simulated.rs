//! An executor that runs nothing and maps nothing: addresses come from a counter starting at a
//! chosen base, finalize keeps the segments for inspection, symbol lookups answer from a table.
//! Used by tests of hostile input (the whole pipeline runs, nothing is executed) and by check
//! tests that link at a fixed, fake address.
//!
//! It keeps the same ownership table as the in-process executor and refuses what that one
//! refuses (a release that is not exactly a free reservation of its own, a finalize outside
//! one, actions outside their unit, stale ids, calls to what is not a live unit's code), so
//! that the two agree; it has no slabs.

use crate::executor::*;
use crate::plan::Plan;
use crate::table::{NewAlloc, Table};
use crate::{Error, ExecutorAddr, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

pub struct SimulatedExecutor {
    info: TargetInfo,
    next: Mutex<u64>,
    table: Mutex<Table<()>>,
    next_alloc: AtomicU64,
    symbols: HashMap<Vec<u8>, ExecutorAddr>,
    finalized: Mutex<Vec<FinalizeRequest>>,
    /// Answer every lookup (with an address near `base`), so that links of arbitrary inputs
    /// get past symbol resolution.
    resolve_all: bool,
    runtime: Vec<(String, ExecutorAddr)>,
}

impl SimulatedExecutor {
    /// Reservations start at `base`; `symbols` answers lookups (anything else is not found).
    pub fn new(base: u64, symbols: HashMap<Vec<u8>, ExecutorAddr>) -> Self {
        SimulatedExecutor {
            info: TargetInfo {
                triple: "x86_64-unknown-linux-gnu".into(),
                page_size: 4096,
                pid: 0,
            },
            next: Mutex::new(base),
            table: Mutex::new(Table::default()),
            next_alloc: AtomicU64::new(1),
            symbols,
            finalized: Mutex::new(Vec::new()),
            resolve_all: false,
            runtime: vec![(
                "__tls_get_addr".into(),
                ExecutorAddr(base.saturating_sub(0x1000)),
            )],
        }
    }

    /// Every lookup succeeds, with an address 1 MiB below `base`.
    pub fn resolving_everything(base: u64) -> Self {
        SimulatedExecutor {
            resolve_all: true,
            ..Self::new(base, HashMap::new())
        }
    }

    /// The requests finalized so far.
    pub fn finalized(&self) -> Vec<FinalizeRequest> {
        self.finalized.lock().map(|f| f.clone()).unwrap_or_default()
    }

    fn table(&self) -> Result<MutexGuard<'_, Table<()>>> {
        self.table
            .lock()
            .map_err(|_| Error::InvalidRequest("the ownership table is poisoned".into()))
    }

    /// Check each `.eh_frame` of the request against its content (nothing is mapped: the bytes
    /// are the request's, zeros past a segment's content).
    fn check_eh_frames(req: &FinalizeRequest, plan: &Plan) -> Result<()> {
        for &(addr, size) in &plan.eh_frames {
            let seg = req
                .segments
                .iter()
                .find(|s| s.addr.0 <= addr && addr - s.addr.0 < s.size())
                .ok_or_else(|| Error::InvalidRequest("eh_frame outside the request".into()))?;
            let off = (addr - seg.addr.0) as usize;
            let mut bytes = vec![0u8; size as usize];
            if let Some(have) = seg.content.get(off..) {
                let n = have.len().min(bytes.len());
                bytes[..n].copy_from_slice(&have[..n]);
            }
            crate::eh_frame::check(&bytes, addr).map_err(|why| Error::EhFrame {
                addr: ExecutorAddr(addr),
                why: why.into(),
            })?;
        }
        Ok(())
    }

    /// Ownership checks of a call to `addr`; then the refusal to run anything.
    fn refuse_to_run(&self, addr: ExecutorAddr) -> Result<()> {
        let mut t = self.table()?;
        let id = t.pin_code(addr)?;
        t.unpin(id);
        Err(Error::InvalidRequest(
            "the simulated executor runs nothing".into(),
        ))
    }
}

impl Executor for SimulatedExecutor {
    fn info(&self) -> &TargetInfo {
        &self.info
    }

    fn reserve(&self, size: u64, placement: Placement) -> Result<ExecutorAddr> {
        if size == 0 || size > (1 << 36) || !size.is_multiple_of(self.info.page_size) {
            return Err(Error::Reserve {
                size,
                where_: String::new().into(),
                why: "simulated executor: size out of range or not a page multiple".into(),
            });
        }
        let mut next = self
            .next
            .lock()
            .map_err(|_| Error::InvalidRequest("poisoned".into()))?;
        let addr = match placement {
            Placement::Fixed(a) => a,
            _ => *next,
        };
        let mut t = self.table()?;
        if addr % self.info.page_size != 0 || !t.is_free(addr, size) {
            return Err(Error::Reserve {
                size,
                where_: format!(" at {addr:#x}").into(),
                why: "simulated executor: the range is not free or not page aligned".into(),
            });
        }
        t.add_reservation(addr, size)?;
        *next = addr.saturating_add(size).saturating_add(0x1000);
        Ok(ExecutorAddr(addr))
    }

    fn release(&self, addr: ExecutorAddr, size: u64) -> Result<()> {
        self.table()?.take_reservation(addr.0, size)
    }

    fn finalize(&self, request: FinalizeRequest) -> Result<AllocId> {
        let plan = Plan::of(&request, self.info.page_size)?;
        Self::check_eh_frames(&request, &plan)?;
        let id = self.next_alloc.fetch_add(1, Ordering::Relaxed);
        let dealloc = request
            .actions
            .iter()
            .filter_map(|p| p.dealloc.clone())
            .collect();
        let new = NewAlloc {
            initializers: request.initializers.clone(),
            finalizers: false,
            live: false,
        };
        let mut t = self.table()?;
        t.begin_finalize(id, &request, plan, new)?;
        t.finish_finalize(id, dealloc);
        drop(t);
        self.finalized
            .lock()
            .map_err(|_| Error::InvalidRequest("poisoned".into()))?
            .push(request);
        Ok(AllocId(id))
    }

    fn deallocate(&self, id: AllocId) -> Result<()> {
        let mut t = self.table()?;
        t.begin_dealloc(id.0)?;
        t.finish_dealloc(id.0);
        Ok(())
    }

    fn run_initializers(&self, id: AllocId) -> Result<()> {
        let mut t = self.table()?;
        if t.start_initializers(id.0)?.is_some() {
            t.unpin(id.0);
        }
        Ok(())
    }

    fn load_library(&self, path: &Path) -> Result<LibraryId> {
        Err(Error::LoadLibrary {
            path: path.display().to_string().into(),
            why: "the simulated executor loads no libraries".into(),
        })
    }

    fn lookup(
        &self,
        names: &[&[u8]],
        libraries: &[LibraryId],
        _process: bool,
    ) -> Result<Vec<Option<ExecutorAddr>>> {
        // It loads none, so every library id is unknown.
        if let Some(l) = libraries.first() {
            return Err(Error::UnknownLibrary(l.0));
        }
        let fallback = ExecutorAddr(self.runtime[0].1 .0.saturating_sub(0x10_0000));
        Ok(names
            .iter()
            .map(|n| {
                self.symbols
                    .get(*n)
                    .copied()
                    .or(self.resolve_all.then_some(fallback))
            })
            .collect())
    }

    fn runtime_symbols(&self) -> &[(String, ExecutorAddr)] {
        &self.runtime
    }

    fn allocate_static_tls(&self, image: &[u8], block_size: u64, align: u64) -> Result<i64> {
        if image.len() as u64 > block_size
            || block_size > (1 << 24)
            || !align.is_power_of_two()
            || align > 4096
        {
            return Err(Error::Tls(
                "simulated executor: bad static TLS request".into(),
            ));
        }
        // A plausible offset below a thread pointer.
        let offset = -(((block_size + 0x100).div_ceil(align) * align) as i64);
        self.table()?.add_static_tls(offset, block_size);
        Ok(offset)
    }

    /// The bytes a live unit was finalized with (its content, then zeros): what the memory
    /// would hold, since nothing runs to change it. Checked as in process; there are no slabs.
    fn read_memory(&self, addr: ExecutorAddr, len: u64) -> Result<Vec<u8>> {
        if len > MAX_READ {
            return Err(Error::InvalidRequest(format!(
                "a read of {len:#x} bytes (at most {MAX_READ:#x} at once)"
            )));
        }
        self.table()?.check_read(addr.0, len)?;
        let finalized = self
            .finalized
            .lock()
            .map_err(|_| Error::InvalidRequest("poisoned".into()))?;
        // The newest finalized segment holding the range is the live unit's: an older one there
        // was deallocated before it could be finalized.
        let seg = finalized
            .iter()
            .rev()
            .flat_map(|r| &r.segments)
            .find(|s| {
                addr.0
                    .checked_sub(s.addr.0)
                    .and_then(|off| off.checked_add(len))
                    .is_some_and(|end| end <= s.size())
            })
            .ok_or_else(|| Error::InvalidRequest("no finalized segment holds the range".into()))?;
        let off = (addr.0 - seg.addr.0) as usize;
        let mut out = vec![0u8; len as usize];
        if let Some(have) = seg.content.get(off..) {
            let n = have.len().min(out.len());
            out[..n].copy_from_slice(&have[..n]);
        }
        Ok(out)
    }

    /// Checked as in process (a live unit, ...), then refused: its units have reservations of
    /// their own, and only units in slabs move.
    fn move_allocation(
        &self,
        id: AllocId,
        moves: &[SegmentMove],
        _actions: Vec<ActionPair>,
    ) -> Result<()> {
        self.table()?.plan_move(id.0, moves)?;
        Err(Error::InvalidRequest(
            "the simulated executor has no slabs: nothing moves".into(),
        ))
    }

    fn run_main(&self, entry: ExecutorAddr, _args: &[String]) -> Result<i32> {
        self.refuse_to_run(entry).map(|()| 0)
    }

    fn call_void(&self, f: ExecutorAddr) -> Result<()> {
        self.refuse_to_run(f)
    }
}
