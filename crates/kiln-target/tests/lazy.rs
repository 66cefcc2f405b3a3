//! Lazy functions in process: stubs built by hand from `LAZY_STUB` in a slab, called through
//! typed function pointers and from JIT'd code. The handler runs once per key whatever the
//! threads do, every argument register and the stack reach the resolved function intact, a
//! failed handler goes to the error handler, and without one the process aborts with a message.
//!
//! The error handler is process-wide: only `failures_go_to_the_error_handler` sets one (and
//! only its keys fail); the abort test runs in a child process.

use kiln_target::*;
use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

/// Code laid out in a fresh slab and finalized as one unit: `build` gets the address of the
/// slab's code region and returns (offset, bytes) pieces. Returns the region's address.
fn finalize_code(ex: &InProcessExecutor, build: impl FnOnce(u64) -> Vec<(u64, Vec<u8>)>) -> u64 {
    let s = ex
        .create_slab([0x1000, 0x1000, 0x1000], Placement::Anywhere)
        .expect("a slab");
    let base = s.regions[0].0 .0;
    let pieces = build(base);
    let end = pieces
        .iter()
        .map(|(o, b)| o + b.len() as u64)
        .max()
        .unwrap();
    let mut image = vec![0xcc; end as usize];
    for (o, b) in &pieces {
        image[*o as usize..*o as usize + b.len()].copy_from_slice(b);
    }
    ex.write_slab(s.id, &[SlabWrite::Bytes(ExecutorAddr(base), &image)])
        .unwrap();
    ex.finalize(FinalizeRequest {
        segments: vec![Segment {
            addr: ExecutorAddr(base),
            prot: MemProt::ReadExec,
            content: Vec::new(),
            zero_fill: end,
        }],
        in_slab: true,
        ..Default::default()
    })
    .expect("finalizing the stubs");
    base
}

/// One stub for `key`, jumping to the trampoline: its address.
fn stub(ex: &InProcessExecutor, key: StubKey) -> u64 {
    let code = LAZY_STUB.instantiate(key, ex.lazy_trampoline().unwrap());
    finalize_code(ex, |_| vec![(0, code)])
}

fn addr_of(f: *const ()) -> ExecutorAddr {
    ExecutorAddr(f as u64)
}

extern "C" fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Write garbage into every argument register (and r10), as a compiler's code may.
fn clobber_argument_registers() {
    // SAFETY: writes only registers declared as clobbered outputs; touches no memory.
    unsafe {
        std::arch::asm!(
            "mov rdi, -1", "mov rsi, -1", "mov rdx, -1", "mov rcx, -1",
            "mov r8, -1", "mov r9, -1", "mov rax, -1", "mov r10, -1",
            "pcmpeqd xmm0, xmm0", "pcmpeqd xmm1, xmm1", "pcmpeqd xmm2, xmm2",
            "pcmpeqd xmm3, xmm3", "pcmpeqd xmm4, xmm4", "pcmpeqd xmm5, xmm5",
            "pcmpeqd xmm6, xmm6", "pcmpeqd xmm7, xmm7",
            out("rdi") _, out("rsi") _, out("rdx") _, out("rcx") _,
            out("r8") _, out("r9") _, out("rax") _, out("r10") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
        );
    }
}

/// A varargs call with a double: glibc's prologue stores xmm registers with `movaps`, which
/// faults unless the stack is 16-byte aligned, as the trampoline must leave it for Rust.
fn check_stack_alignment() {
    let mut buf = [0u8; 32];
    // SAFETY: `buf` is 32 writable bytes, the format takes exactly one double.
    let n = unsafe { libc::snprintf(buf.as_mut_ptr().cast(), buf.len(), c"%.1f".as_ptr(), 2.5f64) };
    assert_eq!(&buf[..n as usize], b"2.5");
}

#[test]
fn the_handler_runs_once_and_later_calls_get_its_result() {
    let ex = InProcessExecutor::new();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let key = ex
        .declare_lazy({
            let runs = runs.clone();
            Arc::new(move |req: LazyRequest| {
                runs.lock().unwrap().push(req);
                clobber_argument_registers();
                check_stack_alignment();
                Ok(addr_of(add as *const ()))
            })
        })
        .unwrap();
    assert_eq!(
        LazyRuntime::global().state(key),
        Some(LazyState::Unresolved)
    );
    // JIT'd caller at 0: `sub $8, %rsp; call stub; add $8, %rsp; ret` (arguments untouched);
    // the stub at 64. The call's return address is caller + 9.
    let base = finalize_code(&ex, |_| {
        let mut caller = vec![0x48, 0x83, 0xec, 0x08, 0xe8];
        caller.extend_from_slice(&(64i32 - 9).to_le_bytes());
        caller.extend_from_slice(&[0x48, 0x83, 0xc4, 0x08, 0xc3]);
        vec![
            (0, caller),
            (
                64,
                LAZY_STUB.instantiate(key, LazyRuntime::global().trampoline()),
            ),
        ]
    });
    // SAFETY: the caller passes its two integer arguments on to the stub, which resolves to
    // `add`, an `extern "C" fn(i64, i64) -> i64`; the unit stays live for the test.
    let caller: extern "C" fn(i64, i64) -> i64 =
        unsafe { InProcessExecutor::function(ExecutorAddr(base)) };
    // SAFETY: as above, called directly.
    let direct: extern "C" fn(i64, i64) -> i64 =
        unsafe { InProcessExecutor::function(ExecutorAddr(base + 64)) };
    assert_eq!(caller(40, 2), 42);
    assert_eq!(caller(-5, 3), -2);
    assert_eq!(direct(1, 2), 3);
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 1, "the handler ran once: {runs:?}");
    assert_eq!(runs[0].key, key);
    assert_eq!(
        runs[0].return_addr,
        ExecutorAddr(base + 9),
        "the call site's return address"
    );
    assert_eq!(
        LazyRuntime::global().state(key),
        Some(LazyState::Resolved(addr_of(add as *const ())))
    );
}

#[test]
fn eight_threads_calling_at_once_wait_for_one_resolution() {
    const THREADS: usize = 8;
    let ex = InProcessExecutor::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let key = ex
        .declare_lazy({
            let runs = runs.clone();
            Arc::new(move |_| {
                runs.fetch_add(1, Ordering::SeqCst);
                // Long enough that the other threads arrive while this one resolves (not a
                // timing assertion: the test holds however the threads interleave).
                std::thread::sleep(std::time::Duration::from_millis(50));
                clobber_argument_registers();
                Ok(addr_of(add as *const ()))
            })
        })
        .unwrap();
    let s = stub(&ex, key);
    // SAFETY: the stub resolves to `add`; the unit stays live for the test.
    let f: extern "C" fn(i64, i64) -> i64 = unsafe { InProcessExecutor::function(ExecutorAddr(s)) };
    let start = Arc::new(Barrier::new(THREADS));
    let results: Vec<i64> = (0..THREADS as i64)
        .map(|t| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                f(t * 1000, t)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    for (t, r) in results.iter().enumerate() {
        assert_eq!(*r, t as i64 * 1001, "thread {t}");
    }
    assert_eq!(f(2, 3), 5);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// What `many` saw, for the test to compare.
static SEEN: Mutex<Vec<f64>> = Mutex::new(Vec::new());

/// Six integer arguments in registers, eight doubles in xmm0–xmm7, and two of each on the stack.
#[allow(clippy::too_many_arguments)]
extern "C" fn many(
    a: i64,
    b: i64,
    c: i64,
    d: i64,
    e: i64,
    f: i64,
    x0: f64,
    x1: f64,
    x2: f64,
    x3: f64,
    x4: f64,
    x5: f64,
    x6: f64,
    x7: f64,
    g: i64,
    h: i64,
    y0: f64,
    y1: f64,
) -> i64 {
    let ints = [a, b, c, d, e, f, g, h];
    let mut v: Vec<f64> = ints.iter().map(|i| *i as f64).collect();
    v.extend_from_slice(&[x0, x1, x2, x3, x4, x5, x6, x7, y0, y1]);
    *SEEN.lock().unwrap() = v;
    ints.iter().fold(0i64, |s, i| s.wrapping_add(*i))
}

type Many = extern "C" fn(
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    i64,
    i64,
    f64,
    f64,
) -> i64;

#[test]
fn every_argument_register_and_the_stack_survive_resolution() {
    let ex = InProcessExecutor::new();
    let h: LazyHandler = Arc::new(|_| {
        clobber_argument_registers();
        check_stack_alignment();
        Ok(addr_of(many as *const ()))
    });
    let s = stub(&ex, ex.declare_lazy(h).unwrap());
    // SAFETY: the stub resolves to `many`, whose signature is `Many`.
    let f: Many = unsafe { InProcessExecutor::function(ExecutorAddr(s)) };
    let r = f(
        1,
        -2,
        3,
        i64::MAX,
        5,
        i64::MIN + 6,
        0.5,
        -1.25,
        2.0e100,
        3.0,
        f64::MIN_POSITIVE,
        5.5,
        -6.75,
        7.0,
        1 << 40,
        -(1 << 41),
        8.125,
        -9.0e-9,
    );
    let ints = [1, -2, 3, i64::MAX, 5, i64::MIN + 6, 1 << 40, -(1 << 41)];
    assert_eq!(r, ints.iter().fold(0i64, |s, i| s.wrapping_add(*i)));
    let mut want: Vec<f64> = ints.iter().map(|i| *i as f64).collect();
    want.extend_from_slice(&[
        0.5,
        -1.25,
        2.0e100,
        3.0,
        f64::MIN_POSITIVE,
        5.5,
        -6.75,
        7.0,
        8.125,
        -9.0e-9,
    ]);
    assert_eq!(*SEEN.lock().unwrap(), want);
}

type Snprintf = unsafe extern "C" fn(*mut c_char, usize, *const c_char, ...) -> c_int;

/// A varargs call: rax (al) says how many vector registers carry arguments. If the trampoline
/// lost it, glibc would not read the doubles from xmm0–xmm7.
#[test]
fn a_varargs_call_keeps_its_vector_count() {
    let ex = InProcessExecutor::new();
    let h: LazyHandler = Arc::new(|_| {
        clobber_argument_registers();
        Ok(addr_of(libc::snprintf as *const ()))
    });
    let s = stub(&ex, ex.declare_lazy(h).unwrap());
    // SAFETY: the stub resolves to snprintf, whose signature is `Snprintf`.
    let f: Snprintf = unsafe { InProcessExecutor::function(ExecutorAddr(s)) };
    let mut buf = [0u8; 128];
    // SAFETY: `buf` is 128 writable bytes; the format's conversions match the arguments.
    let n = unsafe {
        f(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%d %ld %.2f %.2f %.2f %s".as_ptr(),
            7 as c_int,
            -8i64,
            1.5f64,
            -2.25f64,
            1e3f64,
            c"end".as_ptr(),
        )
    };
    assert_eq!(
        std::str::from_utf8(&buf[..n as usize]).unwrap(),
        "7 -8 1.50 -2.25 1000.00 end"
    );
}

extern "C" fn fallback(a: i64, b: i64) -> i64 {
    -(a * 1000 + b)
}

#[test]
fn failures_go_to_the_error_handler() {
    let ex = InProcessExecutor::new();
    let errors = Arc::new(Mutex::new(Vec::<(StubKey, String)>::new()));
    ex.set_lazy_error_handler(Some({
        let errors = errors.clone();
        Arc::new(move |key, why: &str| {
            errors.lock().unwrap().push((key, why.to_string()));
            Some(addr_of(fallback as *const ()))
        })
    }))
    .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = |result: fn() -> Result<ExecutorAddr, String>| -> LazyHandler {
        let runs = runs.clone();
        Arc::new(move |_| {
            runs.fetch_add(1, Ordering::SeqCst);
            result()
        })
    };
    let failing = [
        (
            "an error",
            counted(|| Err("no such method".into())),
            "no such method",
        ),
        (
            "a panic",
            counted(|| panic!("compiler bug")),
            "compiler bug",
        ),
        (
            "a null address",
            counted(|| Ok(ExecutorAddr::NULL)),
            "null address",
        ),
    ];
    for (what, handler, expect) in failing {
        let key = ex.declare_lazy(handler).unwrap();
        let s = stub(&ex, key);
        // SAFETY: the stub goes to `fallback`, an `extern "C" fn(i64, i64) -> i64`.
        let f: extern "C" fn(i64, i64) -> i64 =
            unsafe { InProcessExecutor::function(ExecutorAddr(s)) };
        let runs_before = runs.load(Ordering::SeqCst);
        assert_eq!(f(4, 2), -4002, "{what}: the call continued at the fallback");
        assert_eq!(f(5, 1), -5001, "{what}: a later call too");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            runs_before + 1,
            "{what}: handler ran once"
        );
        let e = errors.lock().unwrap().clone();
        assert_eq!(e.len(), 1, "{what}: the error handler ran once: {e:?}");
        assert_eq!(e[0].0, key);
        assert!(e[0].1.contains(expect), "{what}: {}", e[0].1);
        match LazyRuntime::global().state(key) {
            Some(LazyState::Failed {
                message,
                continue_at,
            }) => {
                assert!(message.contains(expect), "{what}: {message}");
                assert_eq!(continue_at, addr_of(fallback as *const ()));
            }
            other => panic!("{what}: {other:?}"),
        }
        errors.lock().unwrap().clear();
    }

    // A handler that calls its own stub: on this thread that cannot wait for itself.
    let own_stub = Arc::new(Mutex::new(0u64));
    let key = ex
        .declare_lazy({
            let own_stub = own_stub.clone();
            Arc::new(move |_| {
                // SAFETY: the stub's inner call goes to `fallback` (the error handler's
                // choice); it has the same signature.
                let f: extern "C" fn(i64, i64) -> i64 =
                    unsafe { InProcessExecutor::function(ExecutorAddr(*own_stub.lock().unwrap())) };
                assert_eq!(f(1, 1), -1001);
                Ok(addr_of(add as *const ()))
            })
        })
        .unwrap();
    let s = stub(&ex, key);
    *own_stub.lock().unwrap() = s;
    // SAFETY: the stub resolves to `add`.
    let f: extern "C" fn(i64, i64) -> i64 = unsafe { InProcessExecutor::function(ExecutorAddr(s)) };
    assert_eq!(f(20, 22), 42, "the outer call got the handler's result");
    let e = errors.lock().unwrap().clone();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].1.contains("its handler called it"), "{}", e[0].1);
    errors.lock().unwrap().clear();

    // A stub whose key was never declared (or was forgotten).
    let key = ex
        .declare_lazy(counted(|| Ok(addr_of(add as *const ()))))
        .unwrap();
    ex.forget_lazy(key).unwrap();
    let s = stub(&ex, key);
    // SAFETY: the stub goes to `fallback`.
    let f: extern "C" fn(i64, i64) -> i64 = unsafe { InProcessExecutor::function(ExecutorAddr(s)) };
    assert_eq!(f(3, 3), -3003);
    let e = errors.lock().unwrap().clone();
    assert!(e[0].1.contains("no lazy function has key"), "{}", e[0].1);
    ex.set_lazy_error_handler(None).unwrap();
}

#[test]
fn keys_belong_to_their_executor() {
    let ex = InProcessExecutor::new();
    let other = InProcessExecutor::new();
    let h: LazyHandler = Arc::new(|_| Ok(ExecutorAddr(1)));
    let key = ex.declare_lazy(h).unwrap();
    assert!(other.forget_lazy(key).is_err(), "another executor's key");
    assert!(ex.forget_lazy(StubKey(u64::MAX)).is_err(), "an unknown key");
    ex.forget_lazy(key).unwrap();
    assert!(ex.forget_lazy(key).is_err(), "forgotten twice");
    assert_eq!(LazyRuntime::global().state(key), None);
    let t = ex.lazy_trampoline().unwrap();
    assert_eq!(t, LazyRuntime::global().trampoline());
    assert!(ex
        .runtime_symbols()
        .iter()
        .any(|(n, a)| n == LAZY_TRAMPOLINE_SYMBOL && *a == t));
}

const ABORT_CHILD: &str = "KILN_LAZY_ABORT_CHILD";

/// Run by `without_an_error_handler_the_process_aborts`, in a child process.
#[test]
#[ignore = "run in a child process by without_an_error_handler_the_process_aborts"]
fn abort_child() {
    assert!(std::env::var_os(ABORT_CHILD).is_some(), "only as a child");
    let ex = InProcessExecutor::new();
    let key = ex
        .declare_lazy(Arc::new(|_| Err("the compiler gave up".into())))
        .unwrap();
    let s = stub(&ex, key);
    // SAFETY: the call never returns: no error handler is set, so the process aborts.
    let f: extern "C" fn() = unsafe { InProcessExecutor::function(ExecutorAddr(s)) };
    f();
    unreachable!("the call returned");
}

#[test]
fn without_an_error_handler_the_process_aborts() {
    use std::os::unix::process::ExitStatusExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "abort_child", "--ignored", "--nocapture"])
        .env(ABORT_CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(stderr.contains("the compiler gave up"), "{stderr}");
    assert!(stderr.contains("no error handler is set"), "{stderr}");
    assert!(stderr.contains("no way to return an error"), "{stderr}");
}

/// rax (a varargs call's vector count, which glibc only tests for zero) and r10 (the static
/// chain), checked exactly: the resolved functions return what they found in them. Also with a
/// caller that enters the stub with the stack off the ABI's alignment by 8: the handler still
/// runs on an aligned stack.
#[test]
fn rax_and_r10_reach_the_function() {
    let ex = InProcessExecutor::new();
    // At 0: `ret` (returns rax as it came); at 16: `mov %r10, %rax; ret`.
    let targets = finalize_code(&ex, |_| {
        vec![(0, vec![0xc3]), (16, vec![0x4c, 0x89, 0xd0, 0xc3])]
    });
    for misaligned in [false, true] {
        for (target, reg) in [(targets, "rax"), (targets + 16, "r10")] {
            let h: LazyHandler = Arc::new(move |_| {
                clobber_argument_registers();
                check_stack_alignment();
                Ok(ExecutorAddr(target))
            });
            let s = stub(&ex, ex.declare_lazy(h).unwrap());
            for round in 0..2u64 {
                let want = 0x5a5a_0000_0000_0017 + round;
                let got: u64;
                // SAFETY: the stub resolves to one of the two functions above, which read rax
                // or r10 and return; the call follows the C ABI (its clobbers declared, the
                // stack aligned for a call on entry to an asm block, and moved by 8 and back
                // around the call in the misaligned case).
                unsafe {
                    if misaligned {
                        std::arch::asm!(
                            "sub rsp, 8",
                            "call {f}",
                            "add rsp, 8",
                            f = in(reg) s,
                            inout("rax") want => got,
                            in("r10") want,
                            clobber_abi("C"),
                        );
                    } else {
                        std::arch::asm!(
                            "call {f}",
                            f = in(reg) s,
                            inout("rax") want => got,
                            in("r10") want,
                            clobber_abi("C"),
                        );
                    }
                }
                assert_eq!(got, want, "{reg}, call {round}, misaligned {misaligned}");
            }
        }
    }
}
