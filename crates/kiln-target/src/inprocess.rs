//! The executor for code that runs in this process.
//!
//! Every call that writes, protects, releases or runs memory goes through the executor's
//! ownership table (`sys::owned`), and is refused with an error for memory or ids this
//! executor does not own: see docs/safety.md.

use crate::executor::*;
use crate::lazy::OwnedKeys;
use crate::sys::owned::OwnedMemory;
use crate::sys::{dl, mem, static_tls, tls};
use crate::{
    Error, ExecutorAddr, LazyErrorHandler, LazyHandler, LazyRuntime, Result, SlabId, SlabInfo,
    SlabWrite, StubKey,
};
use std::path::Path;
use std::sync::Mutex;

/// Whether a debugger (ptrace) is attached to this process.
fn traced() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .map(|v| v.trim() != "0")
        })
        .unwrap_or(false)
}

/// Runs JIT'd code in this process.
///
/// Each executor owns what it made: reservations, slabs, finalized allocations, libraries it
/// loaded. Its safe methods act only on those, and check every address and size they are
/// given against them (a foreign range, a range straddling two reservations, a stale id, a
/// size that wraps: an error, nothing touched). Calling code ([`Executor::run_main`],
/// [`Executor::call_void`]) is checked to start inside an executable segment of one of its
/// live units; what the code then does is the code's business.
///
/// Dropping the executor unmaps the memory no unit uses; units still live (not deallocated)
/// stay mapped, with their slabs, for the rest of the process: code may still run from them,
/// and their finalizers run at exit.
pub struct InProcessExecutor {
    info: TargetInfo,
    memory: OwnedMemory,
    libraries: Mutex<Vec<dl::Handle>>,
    traced: bool,
    runtime_symbols: Vec<(String, ExecutorAddr)>,
    lazy_keys: OwnedKeys,
}

impl Default for InProcessExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessExecutor {
    pub fn new() -> Self {
        let tls_get_addr = tls::kiln_tls_get_addr as *const () as u64;
        InProcessExecutor {
            info: TargetInfo {
                triple: "x86_64-unknown-linux-gnu".into(),
                page_size: mem::page_size(),
                pid: std::process::id(),
            },
            memory: OwnedMemory::new(),
            libraries: Mutex::new(Vec::new()),
            traced: traced(),
            runtime_symbols: vec![
                ("__tls_get_addr".into(), ExecutorAddr(tls_get_addr)),
                (
                    crate::LAZY_TRAMPOLINE_SYMBOL.into(),
                    LazyRuntime::global().trampoline(),
                ),
            ],
            lazy_keys: OwnedKeys::default(),
        }
    }

    /// Create a slab whose pages live in a memfd, and return a duplicate of that descriptor
    /// with it: another process (a controller) maps it to write units and patches straight
    /// into this process's code memory ([`crate::SharedSlab`]).
    pub fn create_shared_slab(
        &self,
        sizes: [u64; 3],
        placement: Placement,
    ) -> Result<(SlabInfo, std::os::fd::OwnedFd)> {
        let (info, fd) = self.memory.create_slab(sizes, placement, true)?;
        let fd = fd.ok_or_else(|| Error::InvalidRequest("shared slab without a memfd".into()))?;
        Ok((info, fd))
    }
}

impl InProcessExecutor {
    /// Code in `ranges` of slab `slab` (each inside one of its regions) was rewritten behind
    /// this executor's back — by a controller writing the slab's shared pages
    /// ([`crate::SharedSlab::write_live`]): make valgrind forget its translations of them and
    /// every thread serialize its instruction stream, as [`Executor::write_live`] does after its
    /// own writes.
    pub fn sync_code(&self, slab: SlabId, ranges: &[(ExecutorAddr, u64)]) -> Result<()> {
        self.memory.sync_code(slab, ranges)
    }
}

impl Executor for InProcessExecutor {
    fn info(&self) -> &TargetInfo {
        &self.info
    }

    fn reserve(&self, size: u64, placement: Placement) -> Result<ExecutorAddr> {
        self.memory.reserve(size, placement)
    }

    /// Exactly a reservation this executor made (the whole of it, as `reserve` returned it)
    /// and that no allocation uses; anything else is refused. A finalized allocation's
    /// reservation is released by [`Executor::deallocate`].
    fn release(&self, addr: ExecutorAddr, size: u64) -> Result<()> {
        self.memory.release(addr, size)
    }

    fn finalize(&self, req: FinalizeRequest) -> Result<AllocId> {
        self.memory.finalize(req)
    }

    fn deallocate(&self, id: AllocId) -> Result<()> {
        self.memory.deallocate(id)
    }

    fn run_initializers(&self, id: AllocId) -> Result<()> {
        self.memory.run_initializers(id)
    }

    /// Slabs are offered unless a debugger traces this process: a debugger inserts breakpoints
    /// by forced writes into the code's mapping, which the kernel allows only on private
    /// (copy-on-write) mappings, and a slab's code view is a shared mapping of its memfd. Traced,
    /// units get private mappings of their own and breakpoints work.
    fn supports_slabs(&self) -> bool {
        !self.traced
    }

    fn create_slab(&self, sizes: [u64; 3], placement: Placement) -> Result<SlabInfo> {
        self.memory
            .create_slab(sizes, placement, false)
            .map(|(info, _)| info)
    }

    fn write_slab(&self, slab: SlabId, writes: &[SlabWrite<'_>]) -> Result<()> {
        self.memory.write_slab(slab, writes)
    }

    /// Concurrent calls for disjoint ranges run in parallel (no lock is held while `f` runs);
    /// a range that overlaps another call's, or a live unit, is refused.
    fn with_slab_memory(
        &self,
        slab: SlabId,
        ranges: &[(ExecutorAddr, u64)],
        f: &mut dyn FnMut(&mut [&mut [u8]]),
    ) -> Result<()> {
        self.memory.with_slab_memory(slab, ranges, f)
    }

    /// One visit to the ownership table checks and takes the unit's segments before `fill`
    /// (which runs with no lock held), a short one makes it live after.
    fn finalize_slab_unit(
        &self,
        slab: SlabId,
        segments: &[SlabSegment],
        fill: &mut dyn FnMut(&mut [&mut [u8]]) -> Option<UnitActions>,
    ) -> Result<Option<AllocId>> {
        self.memory.finalize_slab_unit(slab, segments, fill)
    }

    fn patch(&self, slab: SlabId, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        self.memory.patch(slab, addr, bytes)
    }

    fn write_live(&self, slab: SlabId, writes: &[SlabWrite<'_>]) -> Result<()> {
        self.memory.write_live(slab, writes)
    }

    fn read_memory(&self, addr: ExecutorAddr, len: u64) -> Result<Vec<u8>> {
        self.memory.read_memory(addr, len)
    }

    fn move_allocation(
        &self,
        id: AllocId,
        moves: &[SegmentMove],
        actions: Vec<ActionPair>,
    ) -> Result<()> {
        self.memory.move_allocation(id, moves, actions)
    }

    fn move_allocations(&self, moves: &[(AllocId, SegmentMove)]) -> (usize, Result<()>) {
        self.memory.move_allocations(moves)
    }

    fn release_slab(&self, slab: SlabId) -> Result<()> {
        self.memory.release_slab(slab)
    }

    fn load_library(&self, path: &Path) -> Result<LibraryId> {
        let h = dl::open(&path.to_string_lossy())?;
        let mut libs = self
            .libraries
            .lock()
            .map_err(|_| Error::InvalidRequest("library table poisoned".into()))?;
        let id = u32::try_from(libs.len())
            .map_err(|_| Error::InvalidRequest("too many libraries".into()))?;
        libs.push(h);
        Ok(LibraryId(id))
    }

    fn lookup(
        &self,
        names: &[&[u8]],
        libraries: &[LibraryId],
        process: bool,
    ) -> Result<Vec<Option<ExecutorAddr>>> {
        let handles: Vec<dl::Handle> = {
            let libs = self
                .libraries
                .lock()
                .map_err(|_| Error::InvalidRequest("library table poisoned".into()))?;
            libraries
                .iter()
                .map(|l| {
                    libs.get(l.0 as usize)
                        .copied()
                        .ok_or(Error::UnknownLibrary(l.0))
                })
                .collect::<Result<_>>()?
        };
        let mut out = Vec::with_capacity(names.len());
        'names: for n in names {
            for h in &handles {
                if let Some(a) = dl::sym(Some(*h), n)? {
                    out.push(Some(a));
                    continue 'names;
                }
            }
            out.push(if process { dl::sym(None, n)? } else { None });
        }
        Ok(out)
    }

    fn runtime_symbols(&self) -> &[(String, ExecutorAddr)] {
        &self.runtime_symbols
    }

    fn allocate_static_tls(&self, image: &[u8], block_size: u64, align: u64) -> Result<i64> {
        let offset = static_tls::allocate(image, block_size, align)?;
        self.memory.add_static_tls(offset, block_size)?;
        Ok(offset)
    }

    /// `entry` must lie in an executable segment of a live unit of this executor (else
    /// [`Error::NotCode`]); the unit cannot be deallocated while `main` runs. That the code
    /// there is a C `main`, and what it does, is trusted: calling JIT'd code cannot be checked.
    fn run_main(&self, entry: ExecutorAddr, args: &[String]) -> Result<i32> {
        self.memory.run_main(entry, args)
    }

    /// As [`Executor::run_main`], for `void f(void)`.
    fn call_void(&self, f: ExecutorAddr) -> Result<()> {
        self.memory.call_void(f)
    }

    /// As [`Executor::run_main`], for `u64 f(u64, ...)` with up to six arguments.
    fn call(&self, f: ExecutorAddr, args: &[u64]) -> Result<u64> {
        self.memory.call(f, args)
    }

    fn lazy_trampoline(&self) -> Result<ExecutorAddr> {
        Ok(LazyRuntime::global().trampoline())
    }

    /// In the process's registry ([`LazyRuntime::global`]); the handler runs in the thread of
    /// the first call.
    fn declare_lazy(&self, handler: LazyHandler) -> Result<StubKey> {
        Ok(self.lazy_keys.declare(handler))
    }

    fn forget_lazy(&self, key: StubKey) -> Result<()> {
        self.lazy_keys.forget(key)
    }

    /// The process-wide error handler ([`LazyRuntime::set_error_handler`]): one for every
    /// executor of this process.
    fn set_lazy_error_handler(&self, handler: Option<LazyErrorHandler>) -> Result<()> {
        LazyRuntime::global().set_error_handler(handler);
        Ok(())
    }
}
