//! An executor that runs nothing and maps nothing: addresses come from a counter starting at a
//! chosen base, finalize keeps the segments for inspection, symbol lookups answer from a table.
//! Used by tests of hostile input (the whole pipeline runs, nothing is executed) and by check
//! tests that link at a fixed, fake address.

use crate::executor::*;
use crate::{Error, ExecutorAddr, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub struct SimulatedExecutor {
    info: TargetInfo,
    next: Mutex<u64>,
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
}

impl Executor for SimulatedExecutor {
    fn info(&self) -> &TargetInfo {
        &self.info
    }

    fn reserve(&self, size: u64, placement: Placement) -> Result<ExecutorAddr> {
        if size == 0 || size > (1 << 36) {
            return Err(Error::Reserve {
                size,
                where_: String::new(),
                why: "simulated executor: size out of range".into(),
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
        *next = addr.saturating_add(size).saturating_add(0x1000);
        Ok(ExecutorAddr(addr))
    }

    fn release(&self, _addr: ExecutorAddr, _size: u64) -> Result<()> {
        Ok(())
    }

    fn finalize(&self, request: FinalizeRequest) -> Result<AllocId> {
        let mut f = self
            .finalized
            .lock()
            .map_err(|_| Error::InvalidRequest("poisoned".into()))?;
        f.push(request);
        Ok(AllocId(f.len() as u64))
    }

    fn deallocate(&self, _id: AllocId) -> Result<()> {
        Ok(())
    }

    fn run_initializers(&self, _id: AllocId) -> Result<()> {
        Ok(())
    }

    fn load_library(&self, path: &Path) -> Result<LibraryId> {
        Err(Error::LoadLibrary {
            path: path.display().to_string(),
            why: "the simulated executor loads no libraries".into(),
        })
    }

    fn lookup(
        &self,
        names: &[&[u8]],
        _libraries: &[LibraryId],
        _process: bool,
    ) -> Result<Vec<Option<ExecutorAddr>>> {
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
        if image.len() as u64 > block_size || block_size > (1 << 24) || !align.is_power_of_two() {
            return Err(Error::Tls(
                "simulated executor: bad static TLS request".into(),
            ));
        }
        // A plausible offset below a thread pointer.
        Ok(-(((block_size + 0x100).div_ceil(align.max(1)) * align.max(1)) as i64))
    }

    fn run_main(&self, _entry: ExecutorAddr, _args: &[String]) -> Result<i32> {
        Err(Error::InvalidRequest(
            "the simulated executor runs nothing".into(),
        ))
    }

    fn call_void(&self, _f: ExecutorAddr) -> Result<()> {
        Err(Error::InvalidRequest(
            "the simulated executor runs nothing".into(),
        ))
    }
}
