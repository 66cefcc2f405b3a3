//! libkiln.so carries a soname with the C API's major version: programs linked against it load
//! `libkiln.so.0`, which the install script provides (and `libkiln.so` for `-lkiln`).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkiln.so.0");
}
