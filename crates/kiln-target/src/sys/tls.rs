//! Thread-local storage for kiln-linked units, general-dynamic and local-dynamic models.
//!
//! Mechanism: JIT'd code computes the address of a TLS variable by calling `__tls_get_addr`
//! with a pointer to a `{module, offset}` pair in its GOT. Kiln resolves `__tls_get_addr` in
//! JIT'd code to [`kiln_tls_get_addr`] below. Module values of kiln units carry
//! [`TLS_MODULE_TAG`] in their top bits; for those, each thread gets its own block, allocated on
//! first use and initialised from the unit's template (`.tdata` image, then `.tbss` zeros). Any
//! other module value is passed on to the system's `__tls_get_addr`.
//!
//! So threads that existed before a unit was linked, the thread that linked it, and threads
//! created afterwards all see their own initialised copies. Limits: the block size per unit is
//! bounded by memory only; blocks of a removed unit are freed at once on the thread that removes
//! it, and on other threads when they next touch a unit that reuses the key, or when they exit.
//! Local-exec and initial-exec models need a static TLS area and are refused by the linker.

use std::alloc::Layout;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};

/// Top 16 bits of a kiln TLS module value ("KL").
pub const TLS_MODULE_TAG: u64 = 0x4b4c_0000_0000_0000;
const TAG_MASK: u64 = 0xffff_0000_0000_0000;

#[derive(Clone, Copy)]
struct Template {
    /// The unit's block lives in static TLS at this offset from the thread pointer.
    static_offset: Option<i64>,
    image: u64,
    image_size: u64,
    block_size: u64,
    align: u64,
    generation: u64,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

fn templates() -> &'static RwLock<HashMap<u64, Template>> {
    static T: OnceLock<RwLock<HashMap<u64, Template>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

struct Block {
    ptr: *mut u8,
    layout: Layout,
    generation: u64,
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated with exactly `layout` in `new_block` and is dropped once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// This thread's blocks. A plain pointer in a destructor-free thread-local, so that it stays
/// usable while the thread exits: JIT'd code's own TLS destructors (pthread keys,
/// `__cxa_thread_atexit`) may touch its TLS after Rust's thread-local destructors have run.
/// The map is freed by [`free_blocks`], a pthread-key destructor that re-arms itself until the
/// last destructor round glibc makes.
type Blocks = HashMap<u64, Block>;
thread_local! {
    static BLOCKS: Cell<*mut Blocks> = const { Cell::new(std::ptr::null_mut()) };
}

const DESTRUCTOR_ROUNDS: usize = 4; // PTHREAD_DESTRUCTOR_ITERATIONS in glibc

fn cleanup_key() -> Option<libc::pthread_key_t> {
    static KEY: OnceLock<Option<libc::pthread_key_t>> = OnceLock::new();
    *KEY.get_or_init(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out-pointer and `free_blocks` has the destructor signature.
        let r = unsafe { libc::pthread_key_create(&mut key, Some(free_blocks)) };
        (r == 0).then_some(key)
    })
}

extern "C" fn free_blocks(arg: *mut libc::c_void) {
    let round = arg as usize;
    if round < DESTRUCTOR_ROUNDS {
        if let Some(key) = cleanup_key() {
            // SAFETY: re-arming our own key with a small integer (never dereferenced) so that
            // glibc calls us again in its next destructor round.
            unsafe {
                libc::pthread_setspecific(
                    key,
                    std::ptr::without_provenance::<libc::c_void>(round + 1),
                )
            };
            return;
        }
    }
    let _ = BLOCKS.try_with(|b| {
        let p = b.replace(std::ptr::null_mut());
        if !p.is_null() {
            // SAFETY: `p` came from Box::into_raw in `with_blocks` and is taken out exactly once.
            drop(unsafe { Box::from_raw(p) });
        }
    });
}

/// Run `f` on this thread's map, creating it (and arming its cleanup) on first use.
fn with_blocks<R>(f: impl FnOnce(&mut Blocks) -> R) -> Option<R> {
    BLOCKS
        .try_with(|b| {
            let mut p = b.get();
            if p.is_null() {
                p = Box::into_raw(Box::default());
                b.set(p);
                if let Some(key) = cleanup_key() {
                    // SAFETY: our key; the value is a round counter, never dereferenced.
                    unsafe {
                        libc::pthread_setspecific(
                            key,
                            std::ptr::without_provenance::<libc::c_void>(1),
                        )
                    };
                }
            }
            // SAFETY: `p` is this thread's live map; no other reference to it exists while `f`
            // runs (kiln_tls_get_addr is not reentrant: it calls no JIT'd code).
            f(unsafe { &mut *p })
        })
        .ok()
}

/// Whether `module` is a kiln TLS module value (rather than one of the system's).
pub(crate) fn is_kiln_module(module: u64) -> bool {
    module & TAG_MASK == TLS_MODULE_TAG
}

/// Register a unit's TLS template. Refused if `module` is registered already: another live
/// unit's threads would otherwise get blocks of this unit's size and image.
///
/// # Safety
/// `[image, image + image_size)` is readable and stays mapped until [`deregister`] is called
/// for `module` (threads copy it into their new blocks meanwhile).
pub(crate) unsafe fn register(
    module: u64,
    image: u64,
    image_size: u64,
    block_size: u64,
    align: u64,
    static_offset: Option<i64>,
) -> Result<(), String> {
    if !is_kiln_module(module) {
        return Err(format!("module value {module:#x} is not a kiln TLS module"));
    }
    if image_size > block_size || block_size > (1 << 32) || !align.is_power_of_two() || align > 4096
    {
        return Err(format!(
            "bad TLS template: image {image_size:#x} bytes, block {block_size:#x} bytes, align {align}"
        ));
    }
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let t = Template {
        static_offset,
        image,
        image_size,
        block_size,
        align,
        generation,
    };
    let mut templates = templates()
        .write()
        .map_err(|_| "TLS registry poisoned".to_string())?;
    if templates.contains_key(&module) {
        return Err(format!("TLS module {module:#x} is registered already"));
    }
    templates.insert(module, t);
    Ok(())
}

pub(crate) fn deregister(module: u64) {
    if let Ok(mut t) = templates().write() {
        t.remove(&module);
    }
    with_blocks(|b| b.remove(&module));
}

/// A zeroed block with the template's image. The caller holds the templates' read lock.
fn new_block(t: &Template) -> Option<Block> {
    let layout =
        Layout::from_size_align(t.block_size.max(1) as usize, t.align.max(1) as usize).ok()?;
    // SAFETY: layout has non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: finalize checked that the image lies inside a segment of the unit that registered
    // it (all segments are readable), and the template is deregistered before that memory is
    // released; the caller holds the templates' read lock, so deregistration waits for this
    // copy. `register` checked image_size <= block_size, the room at `ptr`; the unit's memory
    // and this fresh heap block do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(t.image as *const u8, ptr, t.image_size as usize) };
    Some(Block {
        ptr,
        layout,
        generation: t.generation,
    })
}

#[repr(C)]
pub struct TlsIndex {
    module: u64,
    offset: u64,
}

type SysTlsGetAddr = unsafe extern "C" fn(*const TlsIndex) -> *mut u8;

fn system_tls_get_addr() -> Option<SysTlsGetAddr> {
    static F: OnceLock<Option<usize>> = OnceLock::new();
    let p = *F.get_or_init(|| {
        super::dl::sym(None, b"__tls_get_addr")
            .ok()
            .flatten()
            .map(|a| a.0 as usize)
    });
    // SAFETY: the address is glibc's (ld.so's) `__tls_get_addr`, whose C signature is this.
    p.map(|p| unsafe { std::mem::transmute::<usize, SysTlsGetAddr>(p) })
}

/// The calling thread's block of a module the system's dynamic loader manages.
///
/// # Safety
/// `module` is a TLS module id ld.so assigned to a loaded object (from `dlinfo`): glibc's
/// `__tls_get_addr` trusts it.
pub(crate) unsafe fn system_block(module: u64) -> Option<*mut u8> {
    let f = system_tls_get_addr()?;
    let ti = TlsIndex { module, offset: 0 };
    // SAFETY: `ti` is a {module, offset} pair for a module ld.so knows (this function's
    // contract), at offset 0 of its block.
    let p = unsafe { f(&ti) };
    (!p.is_null()).then_some(p)
}

fn kiln_block(module: u64) -> *mut u8 {
    // The read lock is held while a new block copies the image: deregistration (before the
    // unit's memory is unmapped) waits for the copy to finish.
    let Ok(templates) = templates().read() else {
        return std::ptr::null_mut();
    };
    let Some(&t) = templates.get(&module) else {
        return std::ptr::null_mut();
    };
    if let Some(off) = t.static_offset {
        return (super::static_tls::thread_pointer() as i64).wrapping_add(off) as *mut u8;
    }
    with_blocks(|b| {
        if let Some(blk) = b.get(&module) {
            if blk.generation == t.generation {
                return blk.ptr;
            }
        }
        match new_block(&t) {
            Some(blk) => {
                let p = blk.ptr;
                b.insert(module, blk);
                p
            }
            None => std::ptr::null_mut(),
        }
    })
    .unwrap_or(std::ptr::null_mut())
}

/// `__tls_get_addr` for JIT'd code.
///
/// # Safety
/// `ti` must point to a readable `{module, offset}` pair, as compiled code passes.
pub unsafe extern "C" fn kiln_tls_get_addr(ti: *const TlsIndex) -> *mut u8 {
    // SAFETY: guaranteed by the caller (compiled code passes its GOT pair).
    let (module, offset) = unsafe { ((*ti).module, (*ti).offset) };
    if is_kiln_module(module) {
        let base = kiln_block(module);
        if base.is_null() {
            // The unit was removed or allocation failed: there is no sane value to return, and
            // returning garbage would corrupt memory silently.
            eprintln!("kiln: TLS access to unknown or removed module {module:#x}");
            std::process::abort();
        }
        return base.wrapping_add(offset as usize);
    }
    match system_tls_get_addr() {
        // SAFETY: forwarding the caller's argument to the real implementation.
        Some(f) => unsafe { f(ti) },
        None => std::ptr::null_mut(),
    }
}
