//! The baseline: one anonymous mapping per function, the code copied in, both calls patched by
//! hand, then `mprotect` to read+execute. Names resolve through a hash map, as the simplest JIT
//! would do it.

use crate::code::{self, FunctionInput, CALL_ADDEND, HOST_CALL_DISP, PREV_CALL_DISP};
use crate::harness::Jit;
use std::collections::HashMap;

pub struct NaiveJit {
    page: usize,
    symbols: HashMap<String, usize>,
    functions: Vec<usize>,
}

/// `movabs $TARGET, %r11; jmp *%r11`: reaches any address (r11 is a scratch register at a call).
const TRAMPOLINE: [u8; 13] = [0x49, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0, 0x41, 0xff, 0xe3];
const TRAMPOLINE_SLOT: usize = 16;

impl NaiveJit {
    pub fn new() -> Self {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let mut symbols = HashMap::new();
        symbols.insert(code::HOST.to_string(), code::host_address());
        NaiveJit {
            page,
            symbols,
            functions: Vec::new(),
        }
    }
}

/// Write `call TARGET`'s displacement at `disp` in `mem` (mapped at `base`), through a
/// trampoline placed at `tramp` in `mem` when the target is out of rel32 range.
fn patch_call(mem: &mut [u8], base: usize, disp: u32, target: usize, tramp: usize) {
    let disp = disp as usize;
    let rel = |to: usize| (to as i64) + CALL_ADDEND - (base + disp) as i64;
    let value = match i32::try_from(rel(target)) {
        Ok(v) => v,
        Err(_) => {
            let mut t = TRAMPOLINE;
            t[2..10].copy_from_slice(&(target as u64).to_le_bytes());
            mem[tramp..tramp + t.len()].copy_from_slice(&t);
            rel(base + tramp) as i32
        }
    };
    mem[disp..disp + 4].copy_from_slice(&value.to_le_bytes());
}

impl Jit for NaiveJit {
    fn link_one(&mut self, f: &mut FunctionInput) -> Result<(), String> {
        let lookup = |name: &str| {
            self.symbols
                .get(name)
                .copied()
                .ok_or_else(|| format!("undefined symbol {name}"))
        };
        let host = lookup(code::HOST)?;
        let prev = lookup(&f.prev)?;
        let tramp0 = f.code.len().next_multiple_of(TRAMPOLINE_SLOT);
        let len = (tramp0 + 2 * TRAMPOLINE_SLOT).next_multiple_of(self.page);
        // SAFETY: a fresh private anonymous mapping; it overlaps nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let base = p as usize;
        // SAFETY: [p, p + len) was just mapped read-write and nothing else refers to it.
        let mem = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
        mem[..f.code.len()].copy_from_slice(&f.code);
        patch_call(mem, base, HOST_CALL_DISP, host, tramp0);
        patch_call(mem, base, PREV_CALL_DISP, prev, tramp0 + TRAMPOLINE_SLOT);
        // SAFETY: our own mapping; `mem` is not used after this. x86-64 needs no icache flush.
        if unsafe { libc::mprotect(p, len, libc::PROT_READ | libc::PROT_EXEC) } != 0 {
            return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
        }
        self.symbols.insert(f.name.clone(), base);
        self.functions.push(base);
        Ok(())
    }

    fn address(&self, k: usize) -> Option<usize> {
        self.functions.get(k).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_call_is_patched_in_place() {
        let mut mem = vec![0u8; 64];
        let base = 0x7000_0000_0000usize;
        patch_call(&mut mem, base, 10, base + 0x1000, 32);
        let rel = i32::from_le_bytes(mem[10..14].try_into().unwrap());
        assert_eq!(base as i64 + 14 + rel as i64, (base + 0x1000) as i64);
        assert!(mem[32..48].iter().all(|&b| b == 0));
    }

    #[test]
    fn far_call_goes_through_a_trampoline() {
        let mut mem = vec![0u8; 64];
        let base = 0x7000_0000_0000usize;
        let far = 0x5555_0000_0000usize;
        patch_call(&mut mem, base, 10, far, 32);
        let rel = i32::from_le_bytes(mem[10..14].try_into().unwrap());
        assert_eq!(base as i64 + 14 + rel as i64, (base + 32) as i64);
        assert_eq!(&mem[32..34], &[0x49, 0xbb]);
        assert_eq!(
            u64::from_le_bytes(mem[34..42].try_into().unwrap()),
            far as u64
        );
        assert_eq!(&mem[42..45], &[0x41, 0xff, 0xe3]);
    }
}
