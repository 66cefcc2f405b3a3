//! The machine code every linker under test gets: one small x86-64 function per unit, generated
//! here so that all three see the same bytes and the same two relocations.
//!
//! Function `f{i}` computes `abs(x) + f{i-1}(x) + 1` (32-bit, wrapping); `f0` calls the host
//! function twice (its "previous function" is the host function itself). So
//! `f{k}(x) = (k + 2) * |x| + k + 1`, which the benchmark checks after linking by calling a few
//! of the functions, the last one through the whole chain.
//!
//! ```text
//!  0: 55                   push %rbp
//!  1: 48 89 e5             mov  %rsp, %rbp
//!  4: 53                   push %rbx
//!  5: 41 54                push %r12            (the stack is 16-byte aligned at the calls)
//!  7: 89 fb                mov  %edi, %ebx
//!  9: e8 <rel32>           call HOST            (relocation at 10: PC-relative, addend -4)
//! 14: 41 89 c4             mov  %eax, %r12d
//! 17: 89 df                mov  %ebx, %edi
//! 19: e8 <rel32>           call PREVIOUS        (relocation at 20: PC-relative, addend -4)
//! 24: 42 8d 44 20 01       lea  1(%rax,%r12), %eax
//! 29: multi-byte NOPs up to the function's size
//!     41 5c 5b 5d c3       pop %r12; pop %rbx; pop %rbp; ret
//! ```

/// Offset of the rel32 of `call HOST`.
pub const HOST_CALL_DISP: u32 = 10;
/// Offset of the rel32 of `call PREVIOUS`.
pub const PREV_CALL_DISP: u32 = 20;
/// Both calls are `call rel32`: `S + A - P` with `A = -4` (the displacement is relative to the
/// end of the instruction).
pub const CALL_ADDEND: i64 = -4;

const BODY: [u8; 29] = [
    0x55, // push %rbp
    0x48, 0x89, 0xe5, // mov %rsp, %rbp
    0x53, // push %rbx
    0x41, 0x54, // push %r12
    0x89, 0xfb, // mov %edi, %ebx
    0xe8, 0, 0, 0, 0, // call HOST
    0x41, 0x89, 0xc4, // mov %eax, %r12d
    0x89, 0xdf, // mov %ebx, %edi
    0xe8, 0, 0, 0, 0, // call PREVIOUS
    0x42, 0x8d, 0x44, 0x20, 0x01, // lea 1(%rax,%r12), %eax
];
const EPILOGUE: [u8; 5] = [0x41, 0x5c, 0x5b, 0x5d, 0xc3];

/// The smallest and largest function sizes (bytes of machine code).
pub const MIN_SIZE: usize = 64;
pub const MAX_SIZE: usize = 256;

/// The recommended multi-byte NOP encodings (Intel SDM, "NOP"), by length 1 to 9.
const NOPS: [&[u8]; 9] = [
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/// One function to link: its name, the name of the function it calls, and its code with both
/// call displacements left zero.
pub struct FunctionInput {
    pub name: String,
    pub prev: String,
    pub code: Vec<u8>,
}

/// The name of the host function every function calls (libc's `abs`).
pub const HOST: &str = "abs";

pub fn name(i: usize) -> String {
    format!("f{i}")
}

/// Sizes spread evenly over 64..=256 bytes, the same sequence on every run (xorshift64*).
pub fn sizes(count: usize) -> Vec<usize> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
            MIN_SIZE + (r % (MAX_SIZE - MIN_SIZE + 1) as u64) as usize
        })
        .collect()
}

/// The code of one function of `size` bytes.
pub fn function_code(size: usize) -> Vec<u8> {
    assert!(size >= BODY.len() + EPILOGUE.len());
    let mut code = Vec::with_capacity(size);
    code.extend_from_slice(&BODY);
    let mut pad = size - BODY.len() - EPILOGUE.len();
    while pad > 0 {
        let n = pad.min(NOPS.len());
        code.extend_from_slice(NOPS[n - 1]);
        pad -= n;
    }
    code.extend_from_slice(&EPILOGUE);
    debug_assert_eq!(code.len(), size);
    code
}

/// The inputs of a run: `count` functions, `f0` calling the host function twice.
pub fn inputs(count: usize) -> Vec<FunctionInput> {
    sizes(count)
        .into_iter()
        .enumerate()
        .map(|(i, size)| FunctionInput {
            name: name(i),
            prev: if i == 0 { HOST.into() } else { name(i - 1) },
            code: function_code(size),
        })
        .collect()
}

/// What `f{k}(x)` returns.
pub fn expected(k: usize, x: i32) -> i32 {
    let k = k as i32;
    x.wrapping_abs()
        .wrapping_mul(k.wrapping_add(2))
        .wrapping_add(k)
        .wrapping_add(1)
}

/// The address of libc's `abs`, as the dynamic linker resolved it (not a PLT slot of this
/// executable): the host function the JIT'd code calls.
pub fn host_address() -> usize {
    let name = c"abs";
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other precondition.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    assert!(!p.is_null(), "dlsym(abs) failed");
    p as usize
}

/// Call `f{k}` for a few `k` and compare with [`expected`]. Runs on a thread whose stack holds
/// the whole call chain (about 40 bytes per function). Returns a one-line summary.
pub fn verify(count: usize, address: &dyn Fn(usize) -> Option<usize>) -> Result<String, String> {
    if count == 0 {
        return Err("no function was linked".into());
    }
    let mut ks = vec![0, 1, 2, count / 2, count - 1];
    ks.retain(|&k| k < count);
    ks.dedup();
    let mut calls = Vec::new();
    for &k in &ks {
        let a = address(k).ok_or_else(|| format!("no address for {}", name(k)))?;
        calls.push((k, a));
    }
    let x = -7;
    let stack = 16 * 1024 * 1024 + count * 64;
    let run = move || -> Result<String, String> {
        let mut last = String::new();
        for &(k, a) in &calls {
            // SAFETY: `a` is the address of a finalized, still-mapped function generated by
            // `function_code`, which follows the C ABI with signature int(int), and whose
            // relocations the linker under test applied; every function it calls down the
            // chain is linked and mapped too.
            let f: extern "C" fn(i32) -> i32 = unsafe { std::mem::transmute::<usize, _>(a) };
            let got = f(x);
            let want = expected(k, x);
            if got != want {
                return Err(format!("{}({x}) = {got}, expected {want}", name(k)));
            }
            last = format!("{}({x}) = {got}", name(k));
        }
        Ok(last)
    };
    let run = std::sync::Arc::new(run);
    let on_thread = run.clone();
    match std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || on_thread())
    {
        Ok(t) => t
            .join()
            .map_err(|_| "the checking thread panicked".to_string())?,
        // A linker that used up every mapping the kernel allows (vm.max_map_count) leaves
        // none for a thread's stack: a short chain fits on this thread's.
        Err(_) if count * 64 < 2 << 20 => run(),
        Err(e) => Err(format!("cannot start the checking thread: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_the_range_and_repeat() {
        let s = sizes(10_000);
        assert_eq!(s, sizes(10_000));
        assert_eq!(s.iter().min(), Some(&MIN_SIZE));
        assert_eq!(s.iter().max(), Some(&MAX_SIZE));
        let mean = s.iter().sum::<usize>() as f64 / s.len() as f64;
        assert!((150.0..170.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn code_has_its_size_and_call_sites() {
        for size in [MIN_SIZE, 65, 100, 200, MAX_SIZE] {
            let c = function_code(size);
            assert_eq!(c.len(), size);
            assert_eq!(c[HOST_CALL_DISP as usize - 1], 0xe8);
            assert_eq!(c[PREV_CALL_DISP as usize - 1], 0xe8);
            assert_eq!(&c[size - 5..], &EPILOGUE);
        }
    }

    #[test]
    fn expected_chain() {
        assert_eq!(expected(0, -7), 15);
        assert_eq!(expected(1, -7), 7 + 15 + 1);
        assert_eq!(expected(99_999, -7), 800_007);
    }
}
