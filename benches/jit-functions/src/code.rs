//! The machine code every linker under test gets: one small x86-64 function per unit, generated
//! here so that all three see the same bytes and the same two relocations.
//!
//! Function `f{i}` computes `abs(x) + f{i-c}(x) + 1` (32-bit, wrapping), where `c` is the number
//! of chains: 1 for a linker that links every function in order on one thread, one chain per
//! thread when several threads share a linker (thread `t` links `f{t}`, `f{t+c}`, `f{t+2c}`, ...,
//! so each function calls a function its own thread linked before it, never one the other thread
//! may not have linked yet). The first function of each chain calls the host function twice (its
//! "previous function" is the host function itself). So `f{k}(x) = (j + 2) * |x| + j + 1` with
//! `j = k / c` (its place in its chain), which the benchmark checks after linking by calling a few
//! functions of each chain, the last one of each through the whole chain.
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

/// The inputs of a run: `count` functions in `chains` interleaved chains (`f{i}` calls
/// `f{i - chains}`), the first function of each chain calling the host function twice.
pub fn inputs(count: usize, chains: usize) -> Vec<FunctionInput> {
    sizes(count)
        .into_iter()
        .enumerate()
        .map(|(i, size)| FunctionInput {
            name: name(i),
            prev: if i < chains {
                HOST.into()
            } else {
                name(i - chains)
            },
            code: function_code(size),
        })
        .collect()
}

/// What `f{k}(x)` returns when the functions form `chains` chains.
pub fn expected(k: usize, chains: usize, x: i32) -> i32 {
    let j = (k / chains) as i32;
    x.wrapping_abs()
        .wrapping_mul(j.wrapping_add(2))
        .wrapping_add(j)
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

/// Call a few functions of each chain and compare with [`expected`]: the first three, the middle
/// one and the last one, which runs its whole chain. `linked[c]` is how many functions of chain
/// `c` were linked (`f{c}`, `f{c + chains}`, ...; `chains = linked.len()`). Runs on a thread whose
/// stack holds the longest call chain (about 40 bytes per function). Returns a one-line summary:
/// the call of each chain's last function.
pub fn verify(
    linked: &[usize],
    address: &dyn Fn(usize) -> Option<usize>,
) -> Result<String, String> {
    let chains = linked.len();
    if linked.iter().all(|&n| n == 0) {
        return Err("no function was linked".into());
    }
    let mut calls = Vec::new();
    for (c, &n) in linked.iter().enumerate() {
        let mut js = vec![0, 1, 2, n / 2, n.saturating_sub(1)];
        js.retain(|&j| j < n);
        js.dedup();
        for j in js {
            let k = c + j * chains;
            let a = address(k).ok_or_else(|| format!("no address for {}", name(k)))?;
            calls.push((k, a, j + 1 == n));
        }
    }
    let longest = linked.iter().copied().max().unwrap_or(0);
    let x = -7;
    let stack = 16 * 1024 * 1024 + longest * 64;
    let run = move || -> Result<String, String> {
        let mut lasts = Vec::new();
        for &(k, a, last) in &calls {
            // SAFETY: `a` is the address of a finalized, still-mapped function generated by
            // `function_code`, which follows the C ABI with signature int(int), and whose
            // relocations the linker under test applied; every function it calls down the
            // chain is linked and mapped too.
            let f: extern "C" fn(i32) -> i32 = unsafe { std::mem::transmute::<usize, _>(a) };
            let got = f(x);
            let want = expected(k, chains, x);
            if got != want {
                return Err(format!("{}({x}) = {got}, expected {want}", name(k)));
            }
            if last {
                lasts.push(format!("{}({x}) = {got}", name(k)));
            }
        }
        Ok(lasts.join(", "))
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
        Err(_) if longest * 64 < 2 << 20 => run(),
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
        assert_eq!(expected(0, 1, -7), 15);
        assert_eq!(expected(1, 1, -7), 7 + 15 + 1);
        assert_eq!(expected(99_999, 1, -7), 800_007);
        // Two chains: f0 and f1 start them, f2 calls f0, f3 calls f1.
        assert_eq!(expected(1, 2, -7), 15);
        assert_eq!(expected(2, 2, -7), 7 + 15 + 1);
        assert_eq!(expected(99_999, 2, -7), expected(49_999, 1, -7));
    }

    #[test]
    fn each_chain_calls_only_its_own_functions() {
        let one = inputs(5, 1);
        assert_eq!(one[0].prev, HOST);
        assert_eq!(one[4].prev, "f3");
        let two = inputs(5, 2);
        assert_eq!((two[0].prev.as_str(), two[1].prev.as_str()), (HOST, HOST));
        assert_eq!((two[2].prev.as_str(), two[3].prev.as_str()), ("f0", "f1"));
        assert_eq!(two[4].prev, "f2");
    }
}
