//! Exports the GDB JIT interface symbols (defined in kiln-target) in the `kiln-executor` binary's dynamic
//! symbol table. gdb finds them in the static symbol table too, but that one is gone from a
//! stripped binary; the dynamic one stays, and JIT'd code that looks the pair up (another JIT
//! runtime sharing the list) finds it there.
fn main() {
    for sym in ["__jit_debug_register_code", "__jit_debug_descriptor"] {
        println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol={sym}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
