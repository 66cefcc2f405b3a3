//! The executor for code that runs in this process.

use crate::executor::*;
use crate::sys::{call, dl, eh, gdb, jitdump, mem, perf, tls, valgrind};
use crate::{Error, ExecutorAddr, Result, SlabId, SlabInfo, SlabWrite};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};

struct Alloc {
    /// Memory to release on deallocation; `None` for allocations in a slab.
    reservation: Option<(ExecutorAddr, u64)>,
    segments: Vec<(ExecutorAddr, u64)>,
    dealloc: Vec<Action>,
    initializers: Vec<ExecutorAddr>,
    deinitializers: Vec<Action>,
    initialized: bool,
}

/// Live allocations of this process, shared by every `InProcessExecutor`: the exit hook must see
/// them all.
fn allocs() -> &'static Mutex<BTreeMap<u64, Alloc>> {
    static A: OnceLock<Mutex<BTreeMap<u64, Alloc>>> = OnceLock::new();
    A.get_or_init(Default::default)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Runs when the process exits (`exit()` from JIT'd code, or the host returning from `main`):
/// like glibc's `_dl_fini` for shared objects, it runs the finalizers of every live allocation,
/// newest first. It is registered before any JIT'd code runs, so the exit handlers JIT'd code
/// registered with `__cxa_atexit` run before it, as they do for a native program. Memory is not
/// released: the process is going away and other exit handlers may still reference it.
extern "C" fn exit_hook() {
    let pending: Vec<Vec<Action>> = {
        let Ok(mut a) = allocs().lock() else { return };
        a.values_mut()
            .rev()
            .filter(|al| al.initialized)
            .map(|al| {
                al.initialized = false;
                std::mem::take(&mut al.deinitializers)
            })
            .collect()
    };
    // No lock is held while JIT'd code runs: it may call exit() or link more code.
    for actions in pending {
        for a in actions {
            let _ = run_action(&a);
        }
    }
    // After the last JIT'd code has run: end the jitdump files with JIT_CODE_CLOSE.
    jitdump::close_all();
}

fn run_action(a: &Action) -> Result<()> {
    match *a {
        Action::RegisterEhFrame { addr, size } => eh::register(addr, size),
        Action::DeregisterEhFrame { addr, size } => {
            eh::deregister(addr, size);
            Ok(())
        }
        Action::RegisterTls {
            module,
            image,
            image_size,
            block_size,
            align,
            static_offset,
        } => tls::register(
            module,
            image.0,
            image_size,
            block_size,
            align,
            static_offset,
        )
        .map_err(Error::Tls),
        Action::DeregisterTls { module } => {
            tls::deregister(module);
            Ok(())
        }
        Action::CallVoid(f) => {
            // SAFETY: the controller names finalized code of a live allocation with C signature
            // void(void) (an initializer, finalizer or registration function).
            unsafe { call::void(f) };
            Ok(())
        }
        Action::ResolveIfunc { resolver, slot } => {
            // SAFETY: `finalize` checked that `slot` is 8 bytes inside a writable segment of the
            // allocation being finalized, and `resolver` is finalized code of that allocation
            // with the IFUNC resolver signature `void *(void)`.
            unsafe { call::resolve_ifunc(resolver, slot) };
            Ok(())
        }
        Action::CxaFinalize { dso } => {
            call::cxa_finalize(dso);
            Ok(())
        }
        Action::RegisterGdbObjects { key, ref objects } => {
            let objs: Vec<&[u8]> = objects.iter().map(|o| o.0.as_slice()).collect();
            gdb::register(key, &objs)
        }
        Action::DeregisterGdbObjects { key } => gdb::deregister(key),
        Action::WritePerfMap { ref entries } => perf::write(entries),
        Action::WriteJitdump {
            ref dir,
            ref records,
        } => jitdump::write(dir, &records.0),
        Action::DiscardTranslations { addr, size } => {
            valgrind::discard_translations(addr.0, size);
            Ok(())
        }
    }
}

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
pub struct InProcessExecutor {
    info: TargetInfo,
    libraries: Mutex<Vec<dl::Handle>>,
    slabs: Mutex<Vec<Option<crate::sys::slab::Slab>>>,
    traced: bool,
    runtime_symbols: Vec<(String, ExecutorAddr)>,
}

impl Default for InProcessExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessExecutor {
    pub fn new() -> Self {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            // SAFETY: registering a plain extern "C" function with no arguments.
            unsafe { libc::atexit(exit_hook) };
        });
        let tls_get_addr = tls::kiln_tls_get_addr as *const () as u64;
        InProcessExecutor {
            info: TargetInfo {
                triple: "x86_64-unknown-linux-gnu".into(),
                page_size: mem::page_size(),
                pid: std::process::id(),
            },
            libraries: Mutex::new(Vec::new()),
            slabs: Mutex::new(Vec::new()),
            traced: traced(),
            runtime_symbols: vec![("__tls_get_addr".into(), ExecutorAddr(tls_get_addr))],
        }
    }

    /// A typed function pointer to finalized code in this process.
    ///
    /// # Safety
    /// `addr` must be the address of a finalized, still-live function in this process whose C
    /// ABI signature is exactly `F` (an `extern "C" fn(..) -> ..` pointer type), and the unit
    /// that holds it must outlive every call through the pointer.
    pub unsafe fn function<F: Copy>(addr: ExecutorAddr) -> F {
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<usize>());
        // SAFETY: F is pointer-sized (asserted); validity is the caller's promise.
        unsafe { std::mem::transmute_copy::<usize, F>(&(addr.0 as usize)) }
    }

    /// Create a slab whose pages live in a memfd, and return a duplicate of that descriptor
    /// with it: another process (a controller) maps it to write units and patches straight
    /// into this process's code memory ([`crate::SharedSlab`]).
    pub fn create_shared_slab(
        &self,
        sizes: [u64; 3],
        placement: Placement,
    ) -> Result<(SlabInfo, std::os::fd::OwnedFd)> {
        let mut slabs = self
            .slabs
            .lock()
            .map_err(|_| Error::InvalidRequest("slab table poisoned".into()))?;
        let id = SlabId(slabs.len() as u32);
        let slab = crate::sys::slab::Slab::create(id, sizes, placement, true)?;
        let fd = slab
            .memfd()
            .ok_or_else(|| Error::InvalidRequest("shared slab without a memfd".into()))?
            .try_clone_to_owned()
            .map_err(|e| Error::Memory {
                addr: slab.info.regions[0].0,
                size: 0,
                why: format!("dup of the slab's memfd: {e}"),
            })?;
        let info = slab.info;
        slabs.push(Some(slab));
        Ok((info, fd))
    }

    /// Run `f` on slab `slab`, holding the slab table's lock (so the slab cannot be released
    /// meanwhile).
    fn with_slab<R>(
        &self,
        slab: SlabId,
        f: impl FnOnce(&crate::sys::slab::Slab) -> Result<R>,
    ) -> Result<R> {
        let slabs = self
            .slabs
            .lock()
            .map_err(|_| Error::InvalidRequest("slab table poisoned".into()))?;
        match slabs.get(slab.0 as usize) {
            Some(Some(s)) => f(s),
            _ => Err(Error::InvalidRequest(format!("no slab {}", slab.0))),
        }
    }

    /// Every segment of a slab allocation lies in one region of one of our slabs.
    fn segments_in_slabs(&self, req: &FinalizeRequest) -> Result<()> {
        let slabs = self
            .slabs
            .lock()
            .map_err(|_| Error::InvalidRequest("slab table poisoned".into()))?;
        for s in &req.segments {
            let end = s.addr.0.checked_add(s.size());
            let inside = slabs.iter().flatten().any(|sl| {
                sl.info
                    .regions
                    .iter()
                    .any(|(a, n)| a.0 <= s.addr.0 && end.is_some_and(|e| e <= a.0 + n))
            });
            if !inside {
                return Err(Error::InvalidRequest(format!(
                    "segment {}..+{:#x} is not inside a slab region",
                    s.addr,
                    s.size()
                )));
            }
        }
        Ok(())
    }

    fn segments_inside(req: &FinalizeRequest) -> Result<()> {
        let (base, size) = req.reservation;
        let end = base.0.checked_add(size).ok_or_else(|| {
            Error::InvalidRequest("reservation wraps around the address space".into())
        })?;
        for s in &req.segments {
            let send = s.addr.0.checked_add(s.size());
            if s.addr.0 < base.0 || send.is_none_or(|e| e > end) {
                return Err(Error::InvalidRequest(format!(
                    "segment {}..+{:#x} lies outside its reservation {}..+{:#x}",
                    s.addr,
                    s.size(),
                    base,
                    size
                )));
            }
        }
        Ok(())
    }
}

impl Executor for InProcessExecutor {
    fn info(&self) -> &TargetInfo {
        &self.info
    }

    fn reserve(&self, size: u64, placement: Placement) -> Result<ExecutorAddr> {
        mem::reserve(size, placement)
    }

    fn release(&self, addr: ExecutorAddr, size: u64) -> Result<()> {
        mem::release(addr, size)
    }

    fn finalize(&self, req: FinalizeRequest) -> Result<AllocId> {
        if req.in_slab {
            self.segments_in_slabs(&req)?;
        } else {
            Self::segments_inside(&req)?;
        }
        for pair in &req.actions {
            if let Some(Action::ResolveIfunc { slot, .. }) = &pair.finalize {
                let writable = req.segments.iter().any(|s| {
                    s.prot == crate::MemProt::ReadWrite
                        && s.addr.0 <= slot.0
                        && slot
                            .0
                            .checked_add(8)
                            .is_some_and(|e| e <= s.addr.0 + s.size())
                });
                if !writable {
                    return Err(Error::InvalidRequest(format!(
                        "IFUNC slot {slot} is not in a writable segment of this allocation"
                    )));
                }
            }
        }
        for s in &req.segments {
            if !req.in_slab {
                mem::commit(s.addr, &s.content, s.zero_fill, s.prot)?;
            }
            mem::flush_icache(s.addr, s.size());
        }
        let mut dealloc = Vec::new();
        for pair in &req.actions {
            if let Some(a) = &pair.finalize {
                if let Err(e) = run_action(a) {
                    for d in dealloc.iter().rev() {
                        let _ = run_action(d);
                    }
                    return Err(e);
                }
            }
            if let Some(d) = &pair.dealloc {
                dealloc.push(d.clone());
            }
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let alloc = Alloc {
            reservation: (!req.in_slab).then_some(req.reservation),
            segments: req.segments.iter().map(|s| (s.addr, s.size())).collect(),
            dealloc,
            initializers: req.initializers,
            deinitializers: req.deinitializers,
            initialized: false,
        };
        allocs()
            .lock()
            .map_err(|_| Error::InvalidRequest("allocation table poisoned".into()))?
            .insert(id, alloc);
        Ok(AllocId(id))
    }

    fn run_initializers(&self, id: AllocId) -> Result<()> {
        let inits = {
            let mut a = allocs()
                .lock()
                .map_err(|_| Error::InvalidRequest("allocation table poisoned".into()))?;
            let al = a.get_mut(&id.0).ok_or(Error::UnknownAllocation(id.0))?;
            if al.initialized {
                return Ok(());
            }
            al.initialized = true;
            al.initializers.clone()
        };
        for f in inits {
            run_action(&Action::CallVoid(f))?;
        }
        Ok(())
    }

    fn deallocate(&self, id: AllocId) -> Result<()> {
        let al = allocs()
            .lock()
            .map_err(|_| Error::InvalidRequest("allocation table poisoned".into()))?
            .remove(&id.0)
            .ok_or(Error::UnknownAllocation(id.0))?;
        // Destructors and exit handlers first, while the code and data are still mapped; then
        // undo the registrations in reverse order; only then unmap.
        if al.initialized {
            for a in &al.deinitializers {
                run_action(a)?;
            }
        }
        for a in al.dealloc.iter().rev() {
            run_action(a)?;
        }
        let _ = &al.segments;
        match al.reservation {
            Some((addr, size)) => mem::release(addr, size),
            None => Ok(()), // the slab's owner reuses the memory
        }
    }

    /// Slabs are offered unless a debugger traces this process: a debugger inserts breakpoints
    /// by forced writes into the code's mapping, which the kernel allows only on private
    /// (copy-on-write) mappings, and a slab's code view is a shared mapping of its memfd. Traced,
    /// units get private mappings of their own and breakpoints work.
    fn supports_slabs(&self) -> bool {
        !self.traced
    }

    fn create_slab(&self, sizes: [u64; 3], placement: Placement) -> Result<SlabInfo> {
        let mut slabs = self
            .slabs
            .lock()
            .map_err(|_| Error::InvalidRequest("slab table poisoned".into()))?;
        let id = SlabId(slabs.len() as u32);
        let slab = crate::sys::slab::Slab::create(id, sizes, placement, false)?;
        let info = slab.info;
        slabs.push(Some(slab));
        Ok(info)
    }

    fn write_slab(&self, slab: SlabId, writes: &[SlabWrite<'_>]) -> Result<()> {
        self.with_slab(slab, |s| s.write(writes))
    }

    fn with_slab_memory(
        &self,
        slab: SlabId,
        ranges: &[(ExecutorAddr, u64)],
        f: &mut dyn FnMut(&mut [&mut [u8]]),
    ) -> Result<()> {
        self.with_slab(slab, |s| s.with_memory(ranges, f))
    }

    fn patch(&self, slab: SlabId, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        self.with_slab(slab, |s| s.patch(addr, bytes))
    }

    fn release_slab(&self, slab: SlabId) -> Result<()> {
        let mut slabs = self
            .slabs
            .lock()
            .map_err(|_| Error::InvalidRequest("slab table poisoned".into()))?;
        match slabs.get_mut(slab.0 as usize) {
            Some(s @ Some(_)) => {
                *s = None;
                Ok(())
            }
            _ => Err(Error::InvalidRequest(format!("no slab {}", slab.0))),
        }
    }

    fn load_library(&self, path: &Path) -> Result<LibraryId> {
        let h = dl::open(&path.to_string_lossy())?;
        let mut libs = self
            .libraries
            .lock()
            .map_err(|_| Error::InvalidRequest("library table poisoned".into()))?;
        libs.push(h);
        Ok(LibraryId(libs.len() as u32 - 1))
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
        crate::sys::static_tls::allocate(image, block_size, align)
    }

    fn run_main(&self, entry: ExecutorAddr, args: &[String]) -> Result<i32> {
        // SAFETY: the controller passes the address of a finalized entry point of a live
        // allocation; `main`'s C signature is the documented contract of `--entry`.
        Ok(unsafe { call::main(entry, args) })
    }

    fn call_void(&self, f: ExecutorAddr) -> Result<()> {
        run_action(&Action::CallVoid(f))
    }
}
