//! The `Executor` trait: the only way the controller reaches the process that runs the code.

use crate::{ExecutorAddr, LazyErrorHandler, LazyHandler, MemProt, Result, StubKey};
use std::path::Path;

/// Facts about the executor that the linker needs.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug)]
pub struct TargetInfo {
    pub triple: String,
    pub page_size: u64,
    pub pid: u32,
}

/// Where a reservation must lie. Code that reaches host libraries with 32-bit displacements must
/// be placed within ±2 GiB of them; the controller computes the window, the executor (which knows
/// its own address-space map) finds a free range inside it.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Anywhere.
    Anywhere,
    /// The whole range `[addr, addr + size)` must lie inside `[lo, hi)`.
    Within { lo: u64, hi: u64 },
    /// Exactly at this address (fails if anything is mapped there).
    Fixed(u64),
}

/// One segment of a finalized allocation: `content` is copied to `addr`, followed by `zero_fill`
/// zero bytes, and the pages get protection `prot`. `addr` is page aligned.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug)]
pub struct Segment {
    pub addr: ExecutorAddr,
    pub prot: MemProt,
    #[cfg_attr(feature = "serde", serde(with = "serde_bytes"))]
    pub content: Vec<u8>,
    pub zero_fill: u64,
}

impl Segment {
    pub fn size(&self) -> u64 {
        self.content.len() as u64 + self.zero_fill
    }
}

/// Something the executor does when memory is finalized or deallocated. Actions are data, not
/// function pointers, so that they travel over a wire unchanged.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Register a `.eh_frame` section (CIEs and FDEs ending with a zero terminator).
    RegisterEhFrame {
        addr: ExecutorAddr,
        size: u64,
    },
    DeregisterEhFrame {
        addr: ExecutorAddr,
        size: u64,
    },
    /// Register a thread-local storage template for the dynamic TLS models.
    RegisterTls {
        module: u64,
        image: ExecutorAddr,
        image_size: u64,
        block_size: u64,
        align: u64,
        /// Set when the unit's TLS lives in static TLS (see
        /// [`Executor::allocate_static_tls`]): its offset from the thread pointer.
        static_offset: Option<i64>,
    },
    DeregisterTls {
        module: u64,
    },
    /// Call `void f(void)`.
    CallVoid(ExecutorAddr),
    /// Run the exit handlers registered with `__cxa_atexit(..., dso)` (glibc's `__cxa_finalize`).
    CxaFinalize {
        dso: ExecutorAddr,
    },
    /// Call the STT_GNU_IFUNC resolver `void *resolver(void)` and store its result, 8 bytes, at
    /// `slot` (which must lie in a writable segment of the same request).
    ResolveIfunc {
        resolver: ExecutorAddr,
        slot: ExecutorAddr,
    },
    /// Register in-memory ELF objects with the GDB JIT interface, under `key` (unique among the
    /// executor's live registrations; the controller uses the unit's base address). The
    /// executor keeps its own copies until [`Action::DeregisterGdbObjects`].
    RegisterGdbObjects {
        key: u64,
        objects: Vec<Bytes>,
    },
    DeregisterGdbObjects {
        key: u64,
    },
    /// Append `START SIZE NAME` lines to `/tmp/perf-PID.map` (PID of the executor).
    WritePerfMap {
        entries: Vec<PerfMapEntry>,
    },
    /// Append jitdump records to `DIR/jit-PID.dump` (created with its header on first use). The
    /// executor fills in each record's timestamp, and the PID, thread and code index of
    /// `JIT_CODE_LOAD`/`JIT_CODE_MOVE` records.
    WriteJitdump {
        dir: String,
        records: Bytes,
    },
    /// If the executor runs under valgrind, make it forget its translations of the code in
    /// `[addr, addr + size)` (a no-op otherwise).
    DiscardTranslations {
        addr: ExecutorAddr,
        size: u64,
    },
}

/// Bytes carried by an action (a debug object, jitdump records); `Debug` shows the length only.
#[derive(Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Bytes(#[cfg_attr(feature = "serde", serde(with = "serde_bytes"))] pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// One function (or stub) for perf's map file.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerfMapEntry {
    pub addr: ExecutorAddr,
    pub size: u64,
    pub name: String,
}

/// A finalize action and the dealloc action that undoes it.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionPair {
    pub finalize: Option<Action>,
    pub dealloc: Option<Action>,
}

/// Everything the executor needs to make a linked unit live.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, Default)]
pub struct FinalizeRequest {
    /// The reservation this allocation lives in; released when the allocation is deallocated.
    pub reservation: (ExecutorAddr, u64),
    pub segments: Vec<Segment>,
    /// Run in order after the segments are in place; dealloc halves run in reverse on release.
    pub actions: Vec<ActionPair>,
    /// Run by [`Executor::run_initializers`], in order.
    pub initializers: Vec<ExecutorAddr>,
    /// Run in order when the allocation is deallocated or the process exits, but only if the
    /// initializers ran.
    pub deinitializers: Vec<Action>,
    /// The segments live in a slab and were already written through its writable alias
    /// ([`Executor::write_slab`]): finalize copies nothing and changes no protection, and
    /// deallocation leaves the memory to the slab (`reservation` is unused).
    pub in_slab: bool,
}

/// One segment of a new unit in a slab ([`Executor::finalize_slab_unit`]): `size` bytes at
/// `addr` (where the code runs), in the slab region of protection `prot`.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SlabSegment {
    pub addr: ExecutorAddr,
    pub size: u64,
    pub prot: MemProt,
}

/// A slab segment as a finalize request lists it: its bytes are already in the slab (written
/// through the alias), so it carries none.
impl From<&SlabSegment> for Segment {
    fn from(s: &SlabSegment) -> Segment {
        Segment {
            addr: s.addr,
            prot: s.prot,
            content: Vec::new(),
            zero_fill: s.size,
        }
    }
}

/// What finalizing a unit in a slab needs besides its segments, known once its bytes are
/// written ([`Executor::finalize_slab_unit`]): the fields of [`FinalizeRequest`] of the same
/// names.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, Default)]
pub struct UnitActions {
    pub actions: Vec<ActionPair>,
    pub initializers: Vec<ExecutorAddr>,
    pub deinitializers: Vec<Action>,
}

/// Identifies a slab in one executor.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SlabId(pub u32);

/// A slab: one reservation holding a code region (`r-x`), a read-only region (`r--`) and a data
/// region (`rw-`), in that order, each mapped once with its final protection where the code runs;
/// the code and read-only regions are mapped a second time, writable, at another address: the
/// alias through which the linker and patchers write. Protections never change, and no page is
/// writable and executable at the same address. Many small units share its pages.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SlabInfo {
    pub id: SlabId,
    /// (start, size) of the code, read-only and data regions, where the code runs.
    pub regions: [(ExecutorAddr, u64); 3],
}

/// One write into a slab, addressed where the code runs.
#[derive(Clone, Debug)]
pub enum SlabWrite<'a> {
    Bytes(ExecutorAddr, &'a [u8]),
    /// `len` copies of `byte` (zeroing data, poisoning freed code with `int3`).
    Fill(ExecutorAddr, u64, u8),
}

/// One segment of a slab allocation moved by [`Executor::move_allocation`]: the segment that is
/// exactly `[from, from + len)` goes to `[to, to + len)`, in the same region of the same slab.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SegmentMove {
    pub from: ExecutorAddr,
    pub to: ExecutorAddr,
    pub len: u64,
}

/// The most bytes one [`Executor::read_memory`] returns (a bigger read is refused, rather than
/// an allocation that could abort the process).
pub const MAX_READ: u64 = 64 << 20;

/// Identifies a finalized allocation in one executor.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocId(pub u64);

/// Identifies a library loaded into the executor.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LibraryId(pub u32);

/// The process that runs the code: this one, or another behind a channel.
///
/// Every method is safe to call with any arguments: the executors check addresses, sizes and
/// ids against what they own and return an error for anything else (see docs/safety.md).
/// Running code ([`Executor::run_main`], [`Executor::call_void`]) is checked to enter a live
/// unit's code; what that code does is trusted.
pub trait Executor: Send + Sync {
    fn info(&self) -> &TargetInfo;

    /// Reserve address space (no access) of `size` bytes, page aligned.
    fn reserve(&self, size: u64, placement: Placement) -> Result<ExecutorAddr>;

    /// Release a reservation that was never finalized: exactly `(addr, size)` as
    /// [`Executor::reserve`] returned it, used by no allocation (a finalized allocation's
    /// reservation goes with [`Executor::deallocate`]). Anything else is refused.
    fn release(&self, addr: ExecutorAddr, size: u64) -> Result<()>;

    /// Copy segments in, set protections, flush the instruction cache, run finalize actions.
    /// The segments must lie in the request's reservation (or, `in_slab`, in regions of one of
    /// the executor's slabs, over no live unit: the in-process executor, which keeps a table
    /// per slab, refuses a request across two), and every action must name addresses of this
    /// allocation only; otherwise nothing is done and an error returned.
    fn finalize(&self, request: FinalizeRequest) -> Result<AllocId>;

    /// Run deinitializers (if initialized), dealloc actions in reverse, release the memory.
    fn deallocate(&self, id: AllocId) -> Result<()>;

    /// Run the initializers of a finalized allocation (once).
    fn run_initializers(&self, id: AllocId) -> Result<()>;

    /// Load a shared library (dlopen) so that its symbols can be looked up.
    fn load_library(&self, path: &Path) -> Result<LibraryId>;

    /// Look up symbols: first in `libraries` in order, then (if `process`) in the executor
    /// process's global scope. `None` for a symbol found nowhere.
    fn lookup(
        &self,
        names: &[&[u8]],
        libraries: &[LibraryId],
        process: bool,
    ) -> Result<Vec<Option<ExecutorAddr>>>;

    /// Symbols the runtime itself provides to JIT'd code (e.g. `__tls_get_addr` for the dynamic
    /// TLS models of kiln-linked units). They win over libraries and the process.
    fn runtime_symbols(&self) -> &[(String, ExecutorAddr)];

    /// Reserve a block in every thread's static TLS area (for local-exec and initial-exec code),
    /// initialised from `image` then zeros up to `block_size`, in threads that exist now and in
    /// threads created later. Returns its offset from the thread pointer.
    fn allocate_static_tls(&self, image: &[u8], block_size: u64, align: u64) -> Result<i64>;

    /// Whether this executor offers slabs ([`Executor::create_slab`] and friends).
    fn supports_slabs(&self) -> bool {
        false
    }

    /// Create a slab with regions of these sizes (page multiples), the whole slab placed by
    /// `placement`.
    fn create_slab(&self, _sizes: [u64; 3], _placement: Placement) -> Result<SlabInfo> {
        Err(crate::Error::InvalidRequest(
            "this executor has no slabs".into(),
        ))
    }

    /// Write into a slab (through its writable alias for code and read-only data). Every write
    /// must lie inside one region of the slab, over no live unit (whose bytes change only
    /// through [`Executor::patch`]) and no range another call is writing.
    fn write_slab(&self, _slab: SlabId, _writes: &[SlabWrite<'_>]) -> Result<()> {
        Err(crate::Error::InvalidRequest(
            "this executor has no slabs".into(),
        ))
    }

    /// Working memory for ranges of a slab: `f` gets one writable slice per range (addressed
    /// where the code runs; each range inside one region), and what it leaves there is the
    /// content. In process the slices are the slab's writable alias itself, so nothing is
    /// copied; the default implementation writes the slices with [`Executor::write_slab`].
    /// The ranges are checked as for `write_slab` and must not overlap each other; calls for
    /// disjoint ranges may run at the same time from several threads.
    fn with_slab_memory(
        &self,
        slab: SlabId,
        ranges: &[(ExecutorAddr, u64)],
        f: &mut dyn FnMut(&mut [&mut [u8]]),
    ) -> Result<()> {
        slab_memory_by_copy(self, slab, ranges, f)
    }

    /// Write a new unit into slab `slab` and finalize it: what
    /// [`Executor::with_slab_memory`] for the segments' ranges followed by
    /// [`Executor::finalize`] of an `in_slab` request does, except that the segments are the
    /// unit's from the first check on (no other call can take or read them in between).
    ///
    /// The segments are checked as `finalize` checks a slab request's (each inside one region
    /// of this slab, with that region's protection, over no allocation and no range another call
    /// is writing; pairwise disjoint): in process before `fill` runs; an executor that fills
    /// scratch buffers may check when they arrive (then `fill` may run for a unit that is
    /// refused). `fill` gets one writable slice per segment, in order
    /// (an empty one for an empty segment), leaves the unit's bytes there (zero fill included:
    /// the range may hold a removed unit's bytes) and returns the unit's actions, checked as
    /// `finalize` checks them — or `None` to give up, which frees the segments and returns
    /// `Ok(None)`. `fill` runs without any lock of the executor held (it may call the executor),
    /// at most once. On any error nothing stays behind.
    ///
    /// In process, a unit without actions (a JIT's typical function: nothing to register or
    /// run at finalize) is checked and recorded in one visit to the ownership table before
    /// `fill`, and made live by a short second one after it (no search). The default, for
    /// executors that cannot do better, is `with_slab_memory` then `finalize`.
    fn finalize_slab_unit(
        &self,
        slab: SlabId,
        segments: &[SlabSegment],
        fill: &mut dyn FnMut(&mut [&mut [u8]]) -> Option<UnitActions>,
    ) -> Result<Option<AllocId>> {
        slab_unit_by_two_calls(self, slab, segments, fill)
    }

    /// Change finalized memory in place while code may run: 4 or 8 bytes, naturally aligned,
    /// stored atomically through the alias (so another thread executing or reading them sees
    /// the old or the new value, never a mix), then the instruction cache is made coherent.
    fn patch(&self, _slab: SlabId, _addr: ExecutorAddr, _bytes: &[u8]) -> Result<()> {
        Err(crate::Error::InvalidRequest(
            "this executor has no slabs".into(),
        ))
    }

    /// Write into a slab while code may run from it: the JIT layer's write window (call sites
    /// and inline caches wider than one atomic store, relocations re-applied after code moved,
    /// heap references updated after a moving GC). Checked as [`Executor::write_slab`], except
    /// that the bytes of live allocations may be written too; refused over a range another call
    /// is writing, over unwind info or a TLS image the runtime reads (registered ranges), and
    /// over allocations being finalized, moved or deallocated. Writes go through the slab's
    /// writable alias (never a writable and executable mapping), each naturally aligned 2-, 4- or
    /// 8-byte unit inside a write with one atomic store: a thread executing or reading such a
    /// unit sees its old or its new value, never a mix (wider changes are the caller's to order,
    /// e.g. write a body first and the word that makes it reachable last). When a write touched the code region,
    /// every thread of the executor is made to serialize its instruction stream before this
    /// returns (`membarrier` SYNC_CORE; see docs/memory.md), so none can run the old bytes
    /// afterwards. Writes are applied in order; on an error the earlier ones stay.
    fn write_live(&self, _slab: SlabId, _writes: &[SlabWrite<'_>]) -> Result<()> {
        Err(crate::Error::InvalidRequest(
            "this executor has no slabs".into(),
        ))
    }

    /// A copy of `len` bytes (at most [`MAX_READ`]) of memory this executor owns: inside one
    /// segment of a live allocation, or inside one region of one of its slabs (free space
    /// included). Nothing else (the stack, the heap, libraries, freed units' own reservations,
    /// another executor's memory) is read. Refused over a range another call is writing. The
    /// copy is made with aligned atomic loads (each naturally aligned unit read whole) and needs
    /// no write or execute permission: a GC reads object references out of machine code this
    /// way, a JIT reads back a call site.
    fn read_memory(&self, _addr: ExecutorAddr, _len: u64) -> Result<Vec<u8>> {
        Err(crate::Error::InvalidRequest(
            "this executor cannot read its memory back".into(),
        ))
    }

    /// Move segments of a live slab allocation to new places in the same regions (compaction).
    /// Each move names exactly one of its segments and a destination inside the same region of
    /// the same slab that no other allocation uses, no other segment of this one, no other move
    /// and no call writing; the destination may overlap the segment's own old range (bytes are
    /// copied as by `memmove`). Refused while a call into its code runs (`run_main`, `call`).
    ///
    /// Then, in order: the allocation's registrations are undone (its dealloc actions that
    /// deregister unwind info, gdb objects and TLS, or discard valgrind translations; its
    /// destructors, `CxaFinalize` and other `CallVoid` actions are kept, not run: the unit is not
    /// dying); the bytes are copied through the write view; the ownership table records the
    /// segments at their new addresses and the old ranges free; kept actions, initializers not
    /// yet run and deinitializers that named moved bytes are moved with them; every thread is
    /// made to serialize its instruction stream (as [`Executor::write_live`]); `actions` —
    /// checked against the allocation's new segments as [`Executor::finalize`] checks a new
    /// unit's — run their finalize halves, and their dealloc halves are kept for deallocation.
    ///
    /// `moves` may be empty: the allocation's registrations are then replaced by `actions` in
    /// place (e.g. after its unwind info was fixed up with `write_live`, which registered ranges
    /// refuse).
    ///
    /// If anything is refused before the copy, nothing changed. If a registration fails after
    /// it, the registrations of `actions` that ran are undone and
    /// [`crate::Error::AfterMove`] is returned: the allocation is live at its new addresses,
    /// without registrations (a later `move_allocation(id, &[], actions)` can add them). Code
    /// still running in the old ranges, and pointers other code keeps into them, are the
    /// caller's business.
    fn move_allocation(
        &self,
        _id: AllocId,
        _moves: &[SegmentMove],
        _actions: Vec<ActionPair>,
    ) -> Result<()> {
        Err(crate::Error::InvalidRequest(
            "this executor cannot move allocations".into(),
        ))
    }

    /// Several segment moves, in order, each as `move_allocation(id, &[move], Vec::new())`
    /// makes it (registrations undone, to be given back by a later `move_allocation(id, &[],
    /// actions)`), with every core serialized once at the end rather than once per move: a
    /// compaction's moves. Returns how many were made and, if not all, why the next one was not
    /// ([`crate::Error::AfterMove`]: it was, without its registrations). The default makes
    /// them one by one.
    fn move_allocations(&self, moves: &[(AllocId, SegmentMove)]) -> (usize, Result<()>) {
        for (i, (id, m)) in moves.iter().enumerate() {
            if let Err(e) = self.move_allocation(*id, std::slice::from_ref(m), Vec::new()) {
                let done = i + usize::from(matches!(e, crate::Error::AfterMove { .. }));
                return (done, Err(e));
            }
        }
        (moves.len(), Ok(()))
    }

    /// Unmap a slab; refused while an allocation lives in it.
    fn release_slab(&self, _slab: SlabId) -> Result<()> {
        Err(crate::Error::InvalidRequest(
            "this executor has no slabs".into(),
        ))
    }

    /// Call `int entry(int argc, char **argv, char **envp)` and return its result. `entry`
    /// must lie in an executable segment of a live unit of this executor (else
    /// [`crate::Error::NotCode`]), which is not deallocated while the call runs. That the code
    /// there is a `main`, and what it does, cannot be checked: it is trusted.
    fn run_main(&self, entry: ExecutorAddr, args: &[String]) -> Result<i32>;

    /// Call `void f(void)`, checked as [`Executor::run_main`].
    fn call_void(&self, f: ExecutorAddr) -> Result<()>;

    /// Call `f` with up to six integer or pointer arguments (System V: rdi, rsi, rdx, rcx, r8,
    /// r9) and return what it leaves in rax. `f` must lie in an executable segment of a live
    /// unit of this executor, as for [`Executor::run_main`]; that its signature matches, and
    /// what it does with the arguments (pointers are the executor's, not the controller's), is
    /// the caller's declaration.
    fn call(&self, _f: ExecutorAddr, _args: &[u64]) -> Result<u64> {
        Err(crate::Error::InvalidRequest(
            "this executor cannot call functions with arguments".into(),
        ))
    }

    /// The address of the lazy-resolution trampoline in the executor: where a new lazy stub
    /// ([`crate::LAZY_STUB`]) jumps. The default finds it among [`Executor::runtime_symbols`]
    /// (as [`crate::LAZY_TRAMPOLINE_SYMBOL`]).
    fn lazy_trampoline(&self) -> Result<ExecutorAddr> {
        self.runtime_symbols()
            .iter()
            .find(|(n, _)| n == crate::LAZY_TRAMPOLINE_SYMBOL)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                crate::Error::InvalidRequest("this executor has no lazy functions".into())
            })
    }

    /// Declare a lazy function resolved by `handler`, which runs exactly once, on the first
    /// call of a stub holding the returned key (see [`crate::LazyRuntime::declare`] for what
    /// a handler may do). In process the handler runs in the calling thread; out of process the
    /// executor asks the controller, where the handler runs, and waits for its answer.
    fn declare_lazy(&self, _handler: LazyHandler) -> Result<StubKey> {
        Err(crate::Error::InvalidRequest(
            "this executor has no lazy functions".into(),
        ))
    }

    /// Forget a key this executor declared (its stub must no longer be called); any other
    /// key is refused.
    fn forget_lazy(&self, _key: StubKey) -> Result<()> {
        Err(crate::Error::InvalidRequest(
            "this executor has no lazy functions".into(),
        ))
    }

    /// Set (or remove) the handler that decides where a call continues when a lazy function's
    /// handler fails (see [`crate::LazyRuntime::set_error_handler`]); without one, the
    /// executor process aborts. In process this is the process-wide error handler.
    fn set_lazy_error_handler(&self, _handler: Option<LazyErrorHandler>) -> Result<()> {
        Err(crate::Error::InvalidRequest(
            "this executor has no lazy functions".into(),
        ))
    }
}

/// [`Executor::with_slab_memory`] for executors that cannot hand out their memory: `f` fills
/// scratch buffers, which then go to [`Executor::write_slab`].
pub fn slab_memory_by_copy<E: Executor + ?Sized>(
    ex: &E,
    slab: SlabId,
    ranges: &[(ExecutorAddr, u64)],
    f: &mut dyn FnMut(&mut [&mut [u8]]),
) -> Result<()> {
    // Scratch for at most 4 GiB in all: a slab's regions are far smaller, and a bigger request
    // is an error rather than an allocation that aborts the process.
    const MAX_SCRATCH: u64 = 1 << 32;
    let total = ranges.iter().try_fold(0u64, |t, (_, n)| t.checked_add(*n));
    if total.is_none_or(|t| t > MAX_SCRATCH) {
        return Err(crate::Error::InvalidRequest(format!(
            "working memory for {} ranges exceeds {MAX_SCRATCH:#x} bytes",
            ranges.len()
        )));
    }
    let mut bufs: Vec<Vec<u8>> = ranges.iter().map(|(_, n)| vec![0; *n as usize]).collect();
    let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    f(&mut slices);
    let writes: Vec<SlabWrite<'_>> = ranges
        .iter()
        .zip(&bufs)
        .map(|((a, _), b)| SlabWrite::Bytes(*a, b))
        .collect();
    ex.write_slab(slab, &writes)
}

/// [`Executor::finalize_slab_unit`] as [`Executor::with_slab_memory`] then
/// [`Executor::finalize`].
pub fn slab_unit_by_two_calls<E: Executor + ?Sized>(
    ex: &E,
    slab: SlabId,
    segments: &[SlabSegment],
    fill: &mut dyn FnMut(&mut [&mut [u8]]) -> Option<UnitActions>,
) -> Result<Option<AllocId>> {
    let ranges: Vec<(ExecutorAddr, u64)> = segments.iter().map(|s| (s.addr, s.size)).collect();
    let mut unit = None;
    let mut once = Some(fill);
    ex.with_slab_memory(slab, &ranges, &mut |bufs| {
        if let Some(fill) = once.take() {
            unit = fill(bufs);
        }
    })?;
    let Some(unit) = unit else {
        return Ok(None);
    };
    let request = FinalizeRequest {
        reservation: (ExecutorAddr(0), 0),
        segments: segments.iter().map(Segment::from).collect(),
        actions: unit.actions,
        initializers: unit.initializers,
        deinitializers: unit.deinitializers,
        in_slab: true,
    };
    ex.finalize(request).map(Some)
}
