//! Running alloc actions, and the process-wide record of finalizers that must run at exit.

use super::{call, eh, gdb, jitdump, perf, tls, valgrind};
use crate::executor::Action;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, OnceLock};

/// Run one action.
///
/// # Safety
/// `a` must have passed [`crate::plan::Plan`]'s checks as part of an allocation of an
/// executor's table, and that allocation's memory must stay mapped until this returns (it is
/// finalizing, live or dying, never released meanwhile). Then every address the action names
/// lies in that memory: code to call is in its executable segments, the IFUNC slot is 8
/// writable bytes of it, eh_frame and TLS images are in it (eh_frame also checked by
/// [`crate::eh_frame::check`]), and a deregistration undoes exactly the registration its
/// finalize half made. What the called code itself does is beyond any check (see
/// docs/safety.md).
pub(crate) unsafe fn run(a: &Action) -> Result<()> {
    match *a {
        // SAFETY: by this function's contract the section lies in the mapped allocation and
        // passed the eh_frame check; its deregistration is this action's dealloc half, which
        // runs before the memory is unmapped.
        Action::RegisterEhFrame { addr, size } => unsafe { eh::register(addr, size) },
        Action::DeregisterEhFrame { addr, size } => {
            // SAFETY: by this function's contract this undoes exactly the registration of its
            // finalize half, and the memory is still mapped.
            unsafe { eh::deregister(addr, size) };
            Ok(())
        }
        Action::RegisterTls {
            module,
            image,
            image_size,
            block_size,
            align,
            static_offset,
        } => {
            // SAFETY: by this function's contract the image lies in the mapped allocation, and
            // this action's dealloc half deregisters the module before the memory is unmapped.
            unsafe {
                tls::register(
                    module,
                    image.0,
                    image_size,
                    block_size,
                    align,
                    static_offset,
                )
            }
            .map_err(Error::Tls)
        }
        Action::DeregisterTls { module } => {
            tls::deregister(module);
            Ok(())
        }
        Action::CallVoid(f) => {
            // SAFETY: by this function's contract `f` is in an executable segment of a mapped
            // allocation; the controller declares it `void f(void)` (an initializer, finalizer
            // or registration function).
            unsafe { call::void(f) };
            Ok(())
        }
        Action::ResolveIfunc { resolver, slot } => {
            // SAFETY: by this function's contract `resolver` is in an executable segment and
            // `slot` is 8 bytes of a writable segment of the same mapped allocation.
            unsafe { call::resolve_ifunc(resolver, slot) };
            Ok(())
        }
        Action::CxaFinalize { dso } => {
            // SAFETY: by this function's contract `dso` lies inside a mapped allocation of the
            // caller's, the unit whose handlers are to run.
            unsafe { call::cxa_finalize(dso) };
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

/// What must run when the process exits, per live allocation of any executor in the process
/// that has deinitializers (most JIT'd functions have none, and never come here).
#[derive(Default)]
struct Finalizers {
    /// Allocation id → (initializers ran, deinitializers).
    allocs: BTreeMap<u64, (bool, Vec<Action>)>,
}

/// Set (under the registry's lock) once the exit hook started: allocations are no longer
/// unmapped, their finalizers may be running on the exiting thread.
static EXITING: AtomicBool = AtomicBool::new(false);

fn exiting_error() -> Error {
    Error::Busy("the process is exiting: units are no longer deallocated".into())
}

/// Refused once the process is exiting (for allocations without finalizers).
pub(crate) fn check_not_exiting() -> Result<()> {
    if EXITING.load(Ordering::SeqCst) {
        return Err(exiting_error());
    }
    Ok(())
}

fn finalizers() -> Result<std::sync::MutexGuard<'static, Finalizers>> {
    static F: OnceLock<Mutex<Finalizers>> = OnceLock::new();
    F.get_or_init(Default::default)
        .lock()
        .map_err(|_| Error::InvalidRequest("finalizer registry poisoned".into()))
}

/// Record a freshly finalized allocation's deinitializers (checked like its actions; not
/// empty).
pub(crate) fn add_finalizers(id: u64, deinitializers: Vec<Action>) -> Result<()> {
    finalizers()?.allocs.insert(id, (false, deinitializers));
    Ok(())
}

/// The allocation's bytes moved: its deinitializers waiting in the registry name them at their
/// new addresses (`translate` maps one action).
pub(crate) fn translate_finalizers(id: u64, translate: impl Fn(&Action) -> Action) -> Result<()> {
    if let Some((_, d)) = finalizers()?.allocs.get_mut(&id) {
        for a in d.iter_mut() {
            *a = translate(a);
        }
    }
    Ok(())
}

/// The allocation's initializers are about to run: from now on its deinitializers count.
pub(crate) fn mark_initialized(id: u64) -> Result<()> {
    if let Some(a) = finalizers()?.allocs.get_mut(&id) {
        a.0 = true;
    }
    Ok(())
}

/// Take the allocation's deinitializers to run them before it is unmapped (`None` when its
/// initializers never ran). Refused once the process is exiting: the exit hook may be running
/// them, and the memory must stay.
pub(crate) fn take_finalizers(id: u64) -> Result<Option<Vec<Action>>> {
    let mut f = finalizers()?;
    check_not_exiting()?;
    Ok(match f.allocs.remove(&id) {
        Some((true, d)) => Some(d),
        _ => None,
    })
}

/// Register the exit hook (once per process), before any JIT'd code runs: so the exit handlers
/// JIT'd code registers with `__cxa_atexit` run before it, as they do for a native program.
pub(crate) fn install_exit_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registering a plain extern "C" function without arguments; it may run on any
        // thread that calls exit().
        unsafe { libc::atexit(exit_hook) };
    });
}

/// Runs when the process exits (`exit()` from JIT'd code, or the host returning from `main`):
/// like glibc's `_dl_fini` for shared objects, it runs the finalizers of every live allocation,
/// newest first. Memory is not released: the process is going away and other exit handlers may
/// still reference it.
extern "C" fn exit_hook() {
    let pending: Vec<Vec<Action>> = {
        let Ok(mut f) = finalizers() else { return };
        EXITING.store(true, Ordering::SeqCst);
        std::mem::take(&mut f.allocs)
            .into_values()
            .rev()
            .filter(|(initialized, _)| *initialized)
            .map(|(_, d)| d)
            .collect()
    };
    // No lock is held while JIT'd code runs: it may call exit() or link more code.
    for actions in pending {
        for a in actions {
            // SAFETY: these are deinitializers of allocations that were live when `exiting`
            // was set; deallocation takes an allocation's entry before unmapping it and is
            // refused from then on, so their memory stays mapped; they were checked at
            // finalize.
            let _ = unsafe { run(&a) };
        }
    }
    // After the last JIT'd code has run: end the jitdump files with JIT_CODE_CLOSE.
    jitdump::close_all();
}
