//! The valgrind client requests, hand-written in inline assembly, do reach valgrind: run under
//! `valgrind`, this test binary sees `running_on_valgrind() > 0`, and code rewritten in place
//! through a second, writable mapping (kiln's way of patching code without a writable and
//! executable page) runs in its new version only after `discard_translations` — valgrind does
//! not notice such writes by itself. Natively both requests are no-ops.
//!
//! The parent test re-runs this binary under valgrind with `KILN_VALGRIND_CHILD` set; the child
//! test does the work only then. A missing valgrind fails the test.

use kiln_target::debug_sinks::{discard_translations, running_on_valgrind};
use std::process::Command;

const CHILD: &str = "KILN_VALGRIND_CHILD";

/// `mov eax, imm32; ret`
fn code(v: u32) -> [u8; 6] {
    let b = v.to_le_bytes();
    [0xb8, b[0], b[1], b[2], b[3], 0xc3]
}

/// Memory with a writable and an executable view of the same pages (a memfd mapped twice).
struct DualMapping {
    write: *mut u8,
    exec: *const u8,
    len: usize,
}

impl DualMapping {
    fn new(len: usize) -> DualMapping {
        // SAFETY: plain system calls on a new memfd; results are checked.
        unsafe {
            let fd = libc::memfd_create(c"kiln-valgrind-test".as_ptr(), 0);
            assert!(fd >= 0, "memfd_create failed");
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            let w = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            let x = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert!(
                w != libc::MAP_FAILED && x != libc::MAP_FAILED,
                "mmap failed"
            );
            libc::close(fd);
            DualMapping {
                write: w.cast(),
                exec: x.cast::<u8>(),
                len,
            }
        }
    }

    fn store(&self, bytes: &[u8]) {
        assert!(bytes.len() <= self.len);
        // SAFETY: the writable view is `len` bytes long and nothing else references it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.write, bytes.len()) };
    }

    fn call(&self) -> u32 {
        // SAFETY: the executable view holds a complete `mov eax, imm32; ret` written by `store`.
        unsafe { std::mem::transmute::<*const u8, extern "C" fn() -> u32>(self.exec)() }
    }
}

#[test]
fn client_requests_are_no_ops_natively() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    assert_eq!(running_on_valgrind(), 0);
    let m = DualMapping::new(4096);
    m.store(&code(1));
    assert_eq!(m.call(), 1);
    m.store(&code(2));
    discard_translations(m.exec as u64, m.len as u64);
    assert_eq!(m.call(), 2);
}

/// Runs only under the parent test, inside valgrind.
#[test]
fn child_under_valgrind() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    println!("running_on_valgrind={}", running_on_valgrind());
    let m = DualMapping::new(4096);
    m.store(&code(1));
    let first = m.call();
    m.store(&code(2));
    // Without this, valgrind runs its translation of the old bytes (it sees no munmap or
    // mprotect of the executable view).
    discard_translations(m.exec as u64, m.len as u64);
    let second = m.call();
    println!("patched code: {first} -> {second}");
}

#[test]
fn valgrind_sees_client_requests() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("test executable");
    let out = Command::new("valgrind")
        .args(["--error-exitcode=9", "-q"])
        .arg(&exe)
        .args([
            "--exact",
            "child_under_valgrind",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run valgrind (is it installed?): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "valgrind {}: stdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("running_on_valgrind=1"),
        "the RUNNING_ON_VALGRIND request was not answered:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("patched code: 1 -> 2"),
        "valgrind ran stale code after DISCARD_TRANSLATIONS:\n{stdout}\n{stderr}"
    );
}
