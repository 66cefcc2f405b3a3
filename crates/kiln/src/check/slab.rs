//! An executor for `--noexec --slab-address`: the unit is laid out at exactly the given (fake)
//! address, nothing is mapped and nothing runs, so that check tests see the same addresses on
//! every run, as with llvm-jitlink's `-noexec -slab-address`.
//!
//! Symbols the inputs do not define are resolved as in a normal link: `--define`/`-abs` first
//! (by the controller), then the runtime's own symbols (here `__tls_get_addr`, placed one page
//! below the slab so that calls to it are direct), then — unless process symbols are off —
//! libraries and the symbols of this very process, looked up with `dlsym` without mapping
//! anything (as llvm-jitlink resolves against its own process). Host addresses differ from
//! run to run; tests that check them should define them with `-abs` instead.

use kiln_target::{
    AllocId, Executor, ExecutorAddr, FinalizeRequest, InProcessExecutor, LibraryId, Placement,
    Result, SimulatedExecutor, TargetInfo,
};
use std::collections::HashMap;
use std::path::Path;

pub struct SlabExecutor {
    info: TargetInfo,
    sim: SimulatedExecutor,
    host: Option<InProcessExecutor>,
}

impl SlabExecutor {
    /// A slab at `base` with pages of `page_size` bytes (a power of two, at least 4096 — the
    /// layout aligns segments to it). `host_symbols`: whether libraries and this process's
    /// symbols may be looked up.
    pub fn new(base: u64, page_size: u64, host_symbols: bool) -> std::result::Result<Self, String> {
        if !page_size.is_power_of_two() || page_size < 4096 {
            return Err(format!(
                "slab page size {page_size:#x}: must be a power of two, at least 4096"
            ));
        }
        if !base.is_multiple_of(page_size) {
            return Err(format!(
                "slab address {base:#x} is not aligned to the page size {page_size:#x}"
            ));
        }
        let sim = SimulatedExecutor::new(base, HashMap::new());
        Ok(SlabExecutor {
            info: TargetInfo {
                page_size,
                ..sim.info().clone()
            },
            sim,
            host: host_symbols.then(InProcessExecutor::new),
        })
    }
}

impl Executor for SlabExecutor {
    fn info(&self) -> &TargetInfo {
        &self.info
    }

    fn reserve(&self, size: u64, placement: Placement) -> Result<ExecutorAddr> {
        self.sim.reserve(size, placement)
    }

    fn release(&self, addr: ExecutorAddr, size: u64) -> Result<()> {
        self.sim.release(addr, size)
    }

    fn finalize(&self, request: FinalizeRequest) -> Result<AllocId> {
        self.sim.finalize(request)
    }

    fn deallocate(&self, id: AllocId) -> Result<()> {
        self.sim.deallocate(id)
    }

    fn run_initializers(&self, id: AllocId) -> Result<()> {
        self.sim.run_initializers(id)
    }

    fn load_library(&self, path: &Path) -> Result<LibraryId> {
        match &self.host {
            Some(h) => h.load_library(path),
            None => self.sim.load_library(path),
        }
    }

    fn lookup(
        &self,
        names: &[&[u8]],
        libraries: &[LibraryId],
        process: bool,
    ) -> Result<Vec<Option<ExecutorAddr>>> {
        match &self.host {
            Some(h) => h.lookup(names, libraries, process),
            None => self.sim.lookup(names, libraries, process),
        }
    }

    fn runtime_symbols(&self) -> &[(String, ExecutorAddr)] {
        self.sim.runtime_symbols()
    }

    fn allocate_static_tls(&self, image: &[u8], block_size: u64, align: u64) -> Result<i64> {
        // Nothing is mapped: a fake, deterministic offset, as for every other address here.
        self.sim.allocate_static_tls(image, block_size, align)
    }

    fn run_main(&self, entry: ExecutorAddr, args: &[String]) -> Result<i32> {
        self.sim.run_main(entry, args)
    }

    fn call_void(&self, f: ExecutorAddr) -> Result<()> {
        self.sim.call_void(f)
    }
}
