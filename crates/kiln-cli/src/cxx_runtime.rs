//! The C++ runtime that `g++ prog.o` links without being asked, added by `kiln run` when the
//! inputs reference it (`--no-cxx-runtime` turns it off).
//!
//! What the driver adds (`g++ -v`, GCC 12 on Debian): `-lstdc++ -lm -lgcc_s -lgcc -lc -lgcc_s
//! -lgcc`. libc is kiln's own process; `libgcc_s.so` is a GNU ld script for `libgcc_s.so.1`
//! and `-lgcc` (libgcc.a), which kiln follows. So kiln adds `-lstdc++ -lm -lgcc_s`, through
//! the session's library loading as `-l` does (shared libraries are loaded by the executor,
//! out of process too). With `--static` there is no libgcc_s archive: libgcc.a instead (as
//! `g++ -static`), and the unwinder stays the process's, where kiln registers the unit's
//! frames.
//!
//! Detection reads the symbol tables of the inputs that kiln links from their bytes —
//! relocatable objects, and every member of static archives (a member that the link will not
//! load may ask for the runtime in vain; it costs a library load, nothing else): a strong
//! reference to a C++ runtime symbol that no input defines. Shared libraries bring their own
//! dependencies, and weak references may stay undefined. A C object references none of these
//! names (the `__cxa_` functions glibc itself provides, such as `__cxa_atexit`, do not count).

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::read::archive::ArchiveFile;
use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSymbol};

/// The libraries `-l` would name, in the driver's order.
pub fn libraries(static_only: bool) -> [&'static str; 3] {
    if static_only {
        ["stdc++", "m", "gcc"]
    } else {
        ["stdc++", "m", "gcc_s"]
    }
}

/// Why the C++ runtime is needed: a symbol and the input that references it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub symbol: String,
    pub input: String,
}

/// The first C++ runtime symbol that `inputs` reference and do not define, if any. Files that
/// are neither relocatable objects nor archives, and files that cannot be read or parsed, are
/// skipped: linking them reports what is wrong with them better than a guess here could.
pub fn first_reference(inputs: &[PathBuf]) -> Option<Reference> {
    let mut scan = Scan::default();
    for path in inputs {
        scan.file(path);
    }
    scan.references
        .into_iter()
        .find(|r| !scan.defined.contains(&r.symbol))
}

/// Runtime symbols referenced (with who references them) and defined, over all inputs.
#[derive(Default)]
struct Scan {
    references: Vec<Reference>,
    defined: HashSet<String>,
}

impl Scan {
    fn file(&mut self, path: &Path) {
        // Look at the first bytes before reading the rest: shared libraries are large and
        // never read by the link either.
        let Ok(mut f) = std::fs::File::open(path) else {
            return;
        };
        let mut head = Vec::new();
        if Read::by_ref(&mut f)
            .take(64)
            .read_to_end(&mut head)
            .is_err()
        {
            return;
        }
        let archive = head.starts_with(b"!<arch>\n");
        if !archive && !is_relocatable_elf(&head) {
            return;
        }
        let mut data = head;
        if f.read_to_end(&mut data).is_err() {
            return;
        }
        let name = path.display().to_string();
        if !archive {
            self.object(&data, &name);
            return;
        }
        let Ok(ar) = ArchiveFile::parse(&*data) else {
            return;
        };
        for member in ar.members().flatten() {
            if let Ok(bytes) = member.data(&*data) {
                let member_name = String::from_utf8_lossy(member.name());
                self.object(bytes, &format!("{name}({member_name})"));
            }
        }
    }

    fn object(&mut self, data: &[u8], name: &str) {
        if !is_relocatable_elf(data) {
            return;
        }
        let Ok(elf) = ElfFile64::<Endianness>::parse(data) else {
            return;
        };
        for sym in elf.symbols() {
            let Ok(symbol) = sym.name() else { continue };
            if !is_runtime_symbol(symbol) {
                continue;
            }
            if sym.is_undefined() {
                if !sym.is_weak() && !self.references.iter().any(|r| r.symbol == symbol) {
                    self.references.push(Reference {
                        symbol: symbol.to_string(),
                        input: name.to_string(),
                    });
                }
            } else if sym.is_global() {
                self.defined.insert(symbol.to_string());
            }
        }
    }
}

/// An ELF64 little-endian relocatable object (`ET_REL`).
fn is_relocatable_elf(head: &[u8]) -> bool {
    head.len() >= 18 && head.starts_with(b"\x7fELF\x02\x01") && head[16..18] == [1, 0]
}

/// The `__cxa_` functions that glibc defines (C code may call them).
const LIBC_CXA: [&str; 4] = [
    "__cxa_atexit",
    "__cxa_at_quick_exit",
    "__cxa_finalize",
    "__cxa_thread_atexit_impl",
];

/// Whether `name` is defined by the C++ runtime (libstdc++ with libsupc++): the Itanium C++
/// ABI's `__cxa_*` functions, the personality routine, `__dynamic_cast`, operator new and
/// delete, anything in namespace std, and the type information and vtables of std's classes,
/// of the ABI's own classes (`__cxxabiv1::__class_type_info`…) and of the built-in types.
pub fn is_runtime_symbol(name: &str) -> bool {
    if name.starts_with("__cxa_") {
        return !LIBC_CXA.contains(&name);
    }
    if name.starts_with("__gxx_personality_") || name == "__dynamic_cast" {
        return true;
    }
    let Some(mangled) = name.strip_prefix("_Z") else {
        return false;
    };
    // operator new, new[], delete, delete[] (`_Znwm`, `_ZdlPvm`, `_ZnwmRKSt9nothrow_t`, …).
    if ["nw", "na", "dl", "da"]
        .iter()
        .any(|op| mangled.starts_with(op))
    {
        return true;
    }
    // typeinfo, typeinfo name, vtable: `_ZTI`, `_ZTS`, `_ZTV` and what they are of.
    if let Some(of) = ["TI", "TS", "TV"]
        .iter()
        .find_map(|p| mangled.strip_prefix(p))
    {
        return in_std(of) || of.starts_with("N10__cxxabiv1") || is_builtin_type(of);
    }
    in_std(mangled)
}

/// A mangled name (after `_Z`) in namespace std: `St…` or one of the std abbreviations (`Sa`
/// allocator, `Sb` basic_string, `Ss` string, `Si` istream, `So` ostream, `Sd` iostream),
/// directly or as the first component of a nested name (`N`, then const/volatile/restrict).
fn in_std(mangled: &str) -> bool {
    let name = match mangled.strip_prefix('N') {
        Some(nested) => nested.trim_start_matches(['r', 'V', 'K']),
        None => mangled,
    };
    let b = name.as_bytes();
    b.len() >= 2 && b[0] == b'S' && b"tabsiod".contains(&b[1])
}

/// A built-in type, possibly pointed to and qualified: `i`, `PKc`, `Dn` (the typeinfo of a
/// thrown `int` or `const char *` is libsupc++'s).
fn is_builtin_type(mangled: &str) -> bool {
    let t = mangled.trim_start_matches(['P', 'K', 'V', 'r']);
    match t.as_bytes() {
        [c] => b"vwbcahstijlmxynofdegz".contains(c),
        [b'D', c] => b"defhinsu".contains(c),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_symbols() {
        for s in [
            "__cxa_allocate_exception",
            "__cxa_throw",
            "__cxa_guard_acquire",
            "__cxa_pure_virtual",
            "__gxx_personality_v0",
            "__dynamic_cast",
            "_Znwm",
            "_Znam",
            "_ZdlPv",
            "_ZdlPvm",
            "_ZdaPv",
            "_ZnwmRKSt9nothrow_t",
            "_ZSt9terminatev",
            "_ZSt4cout",
            "_ZNSt13runtime_errorC1EPKc",
            "_ZNKSt9exception4whatEv",
            "_ZNSolsEi",
            "_ZNSs4_Rep20_S_empty_rep_storageE",
            "_ZStlsISt11char_traitsIcEERSt13basic_ostreamIcT_ES5_PKc",
            "_ZTISt13runtime_error",
            "_ZTSSt9exception",
            "_ZTVSt9bad_alloc",
            "_ZTINSt8ios_base7failureB5cxx11E",
            "_ZTVN10__cxxabiv117__class_type_infoE",
            "_ZTVN10__cxxabiv120__si_class_type_infoE",
            "_ZTIi",
            "_ZTIPKc",
            "_ZTIDn",
        ] {
            assert!(is_runtime_symbol(s), "{s}");
        }
    }

    #[test]
    fn other_symbols() {
        for s in [
            // glibc's own __cxa_ functions, which C and Rust code use.
            "__cxa_atexit",
            "__cxa_finalize",
            "__cxa_thread_atexit_impl",
            "__cxa_at_quick_exit",
            // C, and the user's own C++ and Rust names.
            "main",
            "printf",
            "_Unwind_Resume",
            "_Z3fooi",
            "_ZN3foo3barEv",
            "_ZTI3Foo",
            "_ZTVN3foo3BarE",
            "_ZTIP3Foo",
            "_ZN3std2io5stdio6_print17h0123456789abcdefE",
            "_ZN4core3fmt5write17h0123456789abcdefE",
            "_RNvCs1234_7___rustc12___rust_alloc",
            "_Z",
            "_ZTI",
            "_ZN",
        ] {
            assert!(!is_runtime_symbol(s), "{s}");
        }
    }

    #[test]
    fn static_links_libgcc_not_libgcc_s() {
        assert_eq!(libraries(false), ["stdc++", "m", "gcc_s"]);
        assert_eq!(libraries(true), ["stdc++", "m", "gcc"]);
    }
}
