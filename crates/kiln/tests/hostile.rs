//! Hostile input: real objects and archives, truncated and mutated in their headers, section
//! headers, symbol tables, relocations, string tables and `.eh_frame`, must give an error or a
//! link — never a panic. The whole pipeline runs against a simulated executor (nothing is mapped
//! or executed), so a mutation that still links is harmless.
//!
//! Deterministic: a fixed-seed xorshift generator; a failure names the input and the mutation.

use kiln::internal::{link, LinkInput, NoSession};
use kiln_target::SimulatedExecutor;
use rustc_hash::FxHashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const C_SOURCE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <setjmp.h>
__thread int tls_counter = 5;
static __thread int tls_zero;
int table[8] = {1, 2, 3, 4, 5, 6, 7, 8};
int *ptrs[2] = {&table[1], &table[3]};
extern int weak_fn(void) __attribute__((weak));
static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
__attribute__((constructor)) static void init(void) { tls_zero = 1; }
int main(int argc, char **argv) {
    qsort(table, 8, sizeof(int), cmp);
    switch (argc) { case 1: puts("one"); break; case 2: puts("two"); break; case 3: puts("three"); break;
                    case 4: puts("four"); break; case 5: puts("five"); break; default: puts("many"); }
    fprintf(stderr, "%d %d %p\n", tls_counter + tls_zero, *ptrs[1], (void *)weak_fn);
    return 0;
}
"#;

const CXX_SOURCE: &str = r#"
#include <string>
#include <stdexcept>
#include <vector>
struct B { virtual ~B() {} virtual int f() const { return 1; } };
struct D : B { int f() const override { return 2; } };
template <class T> T twice(T v) { return v + v; }
int run(int n) {
    std::vector<std::string> v;
    try { if (n > 3) throw std::runtime_error("x"); v.push_back(std::to_string(twice(n))); }
    catch (const std::exception &e) { return -1; }
    B *b = new D; int r = b->f(); delete b;
    return r + (int)v.size();
}
"#;

const ZLIB_DRIVER: &str = r#"
#include <zlib.h>
#include <stdio.h>
int main(void) { printf("%s %lu\n", zlibVersion(), crc32(0, (const unsigned char *)"abc", 3)); return 0; }
"#;

fn compile(
    dir: &std::path::Path,
    name: &str,
    src: &str,
    compiler: &str,
    flags: &[&str],
) -> Vec<u8> {
    let ext = if compiler == "g++" { "cc" } else { "c" };
    let s = dir.join(format!("{name}.{ext}"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&s, src).unwrap();
    let st = Command::new(compiler)
        .args(["-c", "-o"])
        .arg(&o)
        .arg(&s)
        .args(flags)
        .status()
        .unwrap_or_else(|e| panic!("{compiler} is required for this test: {e}"));
    assert!(st.success(), "{compiler} failed on {name}");
    std::fs::read(&o).unwrap()
}

/// A link against a simulated executor (nothing is mapped or run), every debug sink on: their
/// builders read symbol tables and DWARF too.
fn link_simulated(
    ex: &SimulatedExecutor,
    objects: &[(&str, &[u8])],
    archives: &[(&str, &[u8])],
) -> kiln::Result<kiln::internal::LinkedUnit<'static>> {
    link(
        ex,
        LinkInput {
            objects: objects.iter().map(|(n, d)| (n.to_string(), *d)).collect(),
            graphs: &[],
            functions: &[],
            archives: archives.iter().map(|(n, d)| (n.to_string(), *d)).collect(),
            libraries: &[],
            defines: &FxHashMap::default(),
            session: &NoSession,
            process_symbols: false,
            roots: &[],
            allow: None,
            fixed_address: None,
            want_map: false,
            collect_stats: false,
            debug: &kiln::DebugOptions::all(),
            memory: None,
            relink: false,
        },
    )
}

/// Link with everything resolvable, never running anything: `Ok(linked?)`, or the panic text.
fn try_link(objects: &[(&str, &[u8])], archives: &[(&str, &[u8])]) -> Result<bool, String> {
    let ex = SimulatedExecutor::resolving_everything(0x7000_0000_0000);
    let r = catch_unwind(AssertUnwindSafe(|| link_simulated(&ex, objects, archives)));
    match r {
        Ok(r) => Ok(r.is_ok()),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()),
    }
}

/// An `n`-byte little-endian field at `o` (0 past the end).
fn read_le(obj: &[u8], o: usize, n: usize) -> u64 {
    obj.get(o..o + n).map_or(0, |b| {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(b);
        u64::from_le_bytes(v)
    })
}

/// Byte ranges worth mutating in an ELF object: header, section headers, and the contents of
/// symbol tables, string tables, relocation sections, groups and `.eh_frame`.
fn interesting_ranges(obj: &[u8]) -> Vec<(String, usize, usize)> {
    let mut out = vec![("ELF header".to_string(), 0, 64.min(obj.len()))];
    let rd = |o: usize, n: usize| read_le(obj, o, n);
    let shoff = rd(0x28, 8) as usize;
    let shnum = rd(0x3c, 2) as usize;
    out.push((
        "section headers".into(),
        shoff,
        (shoff + shnum * 64).min(obj.len()),
    ));
    for i in 0..shnum {
        let h = shoff + i * 64;
        let ty = rd(h + 4, 4) as u32;
        let off = rd(h + 0x18, 8) as usize;
        let size = rd(h + 0x20, 8) as usize;
        let what = match ty {
            2 => "symbol table",
            3 => "string table",
            4 => "relocations",
            17 => "group",
            1 | 0x7000_0001 => "section data",
            _ => continue,
        };
        if off < obj.len() && size > 0 {
            out.push((
                format!("{what} (section {i})"),
                off,
                (off + size).min(obj.len()),
            ));
        }
    }
    out
}

fn mutate(rng: &mut Rng, obj: &[u8], ranges: &[(String, usize, usize)]) -> (Vec<u8>, String) {
    let mut m = obj.to_vec();
    let (what, lo, hi) = &ranges[rng.below(ranges.len())];
    if hi <= lo {
        return (m, "no-op".into());
    }
    let at = lo + rng.below(hi - lo);
    let desc = match rng.below(8) {
        0 => {
            m[at] ^= 1 << rng.below(8);
            format!("flip a bit at {at:#x} in {what}")
        }
        1 => {
            m[at] = rng.next() as u8;
            format!("random byte at {at:#x} in {what}")
        }
        2 => {
            let v: [u8; 4] = [
                [0, 0, 0, 0],
                [0xff; 4],
                [0xff, 0xff, 0xff, 0x7f],
                [0x40, 0, 0, 0],
            ][rng.below(4)];
            let end = (at + 4).min(m.len());
            m[at..end].copy_from_slice(&v[..end - at]);
            format!("word {v:02x?} at {at:#x} in {what}")
        }
        3 => {
            // Swap a section type.
            let shoff = u64::from_le_bytes(obj[0x28..0x30].try_into().unwrap()) as usize;
            let shnum = u16::from_le_bytes(obj[0x3c..0x3e].try_into().unwrap()) as usize;
            let i = rng.below(shnum);
            let types = [1u32, 2, 3, 4, 8, 9, 14, 17, 0x7000_0001];
            let t = types[rng.below(types.len())];
            let h = shoff + i * 64 + 4;
            if h + 4 <= m.len() {
                m[h..h + 4].copy_from_slice(&t.to_le_bytes());
            }
            format!("section {i} type set to {t:#x}")
        }
        6 | 7 => structured(rng, &mut m, obj),
        4 => {
            for _ in 0..8 {
                let a = lo + rng.below(hi - lo);
                m[a] = rng.next() as u8;
            }
            format!("8 random bytes in {what}")
        }
        _ => {
            m[at] = m[at].wrapping_add(1);
            format!("increment byte at {at:#x} in {what}")
        }
    };
    (m, desc)
}

const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7fff_ffff,
    0xffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 7,
    1 << 40,
    1 << 62,
    0x1000,
];

/// Field-aware damage: a section header field, a relocation entry field or a symbol field set to
/// an interesting value (out-of-range offsets and indices, huge sizes and alignments).
fn structured(rng: &mut Rng, m: &mut [u8], obj: &[u8]) -> String {
    let rd = |o: usize, n: usize| read_le(obj, o, n);
    let mut put = |at: usize, n: usize, v: u64| {
        if at + n <= m.len() {
            m[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
        }
    };
    let shoff = rd(0x28, 8) as usize;
    let shnum = rd(0x3c, 2) as usize;
    let v = INTERESTING[rng.below(INTERESTING.len())];
    let headers: Vec<(u32, usize, usize)> = (0..shnum)
        .map(|i| {
            let h = shoff + i * 64;
            (
                rd(h + 4, 4) as u32,
                rd(h + 0x18, 8) as usize,
                rd(h + 0x20, 8) as usize,
            )
        })
        .collect();
    let pick = |rng: &mut Rng, ty: u32| -> Option<(usize, usize)> {
        let c: Vec<_> = headers.iter().filter(|h| h.0 == ty && h.2 >= 24).collect();
        (!c.is_empty()).then(|| {
            let h = c[rng.below(c.len())];
            (h.1, h.2)
        })
    };
    const SH_FIELDS: [(&str, usize, usize); 7] = [
        ("sh_offset", 0x18, 8),
        ("sh_size", 0x20, 8),
        ("sh_addralign", 0x30, 8),
        ("sh_link", 0x28, 4),
        ("sh_info", 0x2c, 4),
        ("sh_entsize", 0x38, 8),
        ("sh_flags", 0x08, 8),
    ];
    const ST_FIELDS: [(&str, usize, usize); 5] = [
        ("st_name", 0, 4),
        ("st_info", 4, 1),
        ("st_shndx", 6, 2),
        ("st_value", 8, 8),
        ("st_size", 16, 8),
    ];
    match rng.below(3) {
        0 if shnum > 0 => {
            let i = rng.below(shnum);
            let (field, off, n) = SH_FIELDS[rng.below(SH_FIELDS.len())];
            put(shoff + i * 64 + off, n, v);
            format!("section {i} {field} = {v:#x}")
        }
        1 => match pick(rng, 4) {
            Some((off, size)) => {
                let e = off + 24 * rng.below(size / 24);
                let (field, fo, n, v) = match rng.below(4) {
                    0 => ("r_offset", 0, 8, v),
                    1 => ("r_sym", 12, 4, v),
                    2 => ("r_type", 8, 4, rng.below(45) as u64),
                    _ => ("r_addend", 16, 8, v),
                };
                put(e + fo, n, v);
                format!("relocation at {e:#x} {field} = {v:#x}")
            }
            None => "no relocations".into(),
        },
        _ => match pick(rng, 2) {
            Some((off, size)) => {
                let e = off + 24 * rng.below(size / 24);
                let (field, fo, n) = ST_FIELDS[rng.below(ST_FIELDS.len())];
                put(e + fo, n, v);
                format!("symbol at {e:#x} {field} = {v:#x}")
            }
            None => "no symbols".into(),
        },
    }
}

/// Cases run, counted across threads.
static CASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count() -> usize {
    CASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

fn report(what: &str, n: usize) {
    use std::io::Write;
    // Straight to stderr (print! is captured by the test harness), so the count is always seen.
    let _ = writeln!(std::io::stderr(), "hostile input: {n} {what} cases ran");
}

/// Keep a failing input where a developer can turn it into a regression file.
fn keep_failure(name: &str, bytes: &[u8]) -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-failures");
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{}-{}", count(), name.replace('/', "_")));
    let _ = std::fs::write(&p, bytes);
    format!(
        "(kept as {}; add it to tests/regressions/ with the fix)",
        p.display()
    )
}

fn run_object_mutations(
    name: &str,
    obj: &[u8],
    cases: usize,
    seed: u64,
    failures: &mut Vec<String>,
) -> usize {
    assert_eq!(
        try_link(&[(name, obj)], &[]),
        Ok(true),
        "{name}: the unmutated object must link"
    );
    let mut ran = 0;
    // Truncations: every byte of the header, then evenly over the file.
    let mut cuts: Vec<usize> = (0..64.min(obj.len())).collect();
    cuts.extend((0..200).map(|i| i * obj.len() / 200));
    for cut in cuts {
        ran += 1;
        if let Err(p) = try_link(&[(name, &obj[..cut])], &[]) {
            let kept = keep_failure(name, &obj[..cut]);
            failures.push(format!(
                "{name} truncated to {cut} bytes: panic: {p} {kept}"
            ));
        }
    }
    let ranges = interesting_ranges(obj);
    let mut rng = Rng(seed);
    for _ in 0..cases {
        let (m, desc) = mutate(&mut rng, obj, &ranges);
        ran += 1;
        if let Err(p) = try_link(&[(name, &m)], &[]) {
            let kept = keep_failure(name, &m);
            failures.push(format!("{name}: {desc}: panic: {p} {kept}"));
        }
    }
    ran
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-hostile-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn mutated_objects_never_panic() {
    let dir = tmpdir("obj");
    let inputs = [
        (
            "c-O2.o",
            compile(&dir, "c-O2", C_SOURCE, "gcc", &["-O2", "-g", "-fPIC"]),
        ),
        (
            "c-O0-sections.o",
            compile(
                &dir,
                "c-O0",
                C_SOURCE,
                "gcc",
                &["-O0", "-ffunction-sections", "-fdata-sections", "-fPIC"],
            ),
        ),
        ("cxx.o", compile(&dir, "cxx", CXX_SOURCE, "g++", &["-O2"])),
    ];
    // 25,000 mutations per input, one thread per input.
    let results: Vec<(usize, Vec<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, (name, obj))| {
                s.spawn(move || {
                    let mut f = Vec::new();
                    let seed = 0x9e37_79b9_7f4a_7c15 ^ i as u64;
                    let n = run_object_mutations(name, obj, 25_000, seed, &mut f);
                    (n, f)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ran: usize = results.iter().map(|r| r.0).sum();
    let failures: Vec<String> = results.into_iter().flat_map(|r| r.1).collect();
    std::fs::remove_dir_all(&dir).ok();
    report("object", ran);
    assert!(
        failures.is_empty(),
        "{} mutations panicked:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn mutated_archives_never_panic() {
    let libz = std::fs::read("/usr/lib/x86_64-linux-gnu/libz.a").expect(
        "/usr/lib/x86_64-linux-gnu/libz.a is required (zlib1g-dev; scripts/test installs it)",
    );
    let dir = tmpdir("ar");
    let driver = compile(&dir, "zdrv", ZLIB_DRIVER, "gcc", &["-O2"]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        try_link(&[("zdrv.o", &driver)], &[("libz.a", &libz)]),
        Ok(true),
        "unmutated libz.a must link"
    );
    let mut failures = Vec::new();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // Truncations across the archive, and mutations in its first 64 KiB (symbol index and the
    // headers of the first members), and anywhere.
    for i in 0..150 {
        let cut = i * libz.len() / 150;
        if let Err(p) = try_link(&[("zdrv.o", &driver)], &[("libz.a", &libz[..cut])]) {
            failures.push(format!("libz.a truncated to {cut} bytes: panic: {p}"));
        }
    }
    for case in 0..25_000 {
        let mut m = libz.clone();
        let span = if case % 2 == 0 {
            65536.min(m.len())
        } else {
            m.len()
        };
        let mut desc = String::new();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(span);
            m[at] = rng.next() as u8;
            desc.push_str(&format!("{at:#x} "));
        }
        if let Err(p) = try_link(&[("zdrv.o", &driver)], &[("libz.a", &m)]) {
            let kept = keep_failure("libz.a", &m);
            failures.push(format!(
                "libz.a with random bytes at {desc}: panic: {p} {kept}"
            ));
        }
    }
    report("archive", 150 + 25_000);
    assert!(
        failures.is_empty(),
        "{} mutations panicked:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

/// Inputs that once made kiln panic: each must now link or fail with an error.
#[test]
fn regression_files_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/regressions");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("tests/regressions exists") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let r = if bytes.starts_with(b"!<arch>") {
            try_link(&[], &[(&name, &bytes)])
        } else {
            try_link(&[(&name, &bytes)], &[])
        };
        assert!(r.is_ok(), "{name}: panic: {r:?}");
        n += 1;
    }
    report("regression", n);
}

#[test]
fn errors_name_file_section_and_offset() {
    let dir = tmpdir("err");
    let obj = compile(&dir, "e", C_SOURCE, "gcc", &["-O2", "-fPIC"]);
    std::fs::remove_dir_all(&dir).ok();
    let ex = SimulatedExecutor::resolving_everything(0x7000_0000_0000);
    let link_one = |bytes: &[u8]| link_simulated(&ex, &[("e.o", bytes)], &[]);
    // Truncated: the file is named.
    let e = link_one(&obj[..100]).unwrap_err().to_string();
    assert!(e.starts_with("e.o:"), "{e}");
    // A relocation with an unknown type: file, section and offset are named.
    let ranges = interesting_ranges(&obj);
    let (_, lo, _) = ranges
        .iter()
        .find(|(w, _, _)| w.starts_with("relocations"))
        .unwrap()
        .clone();
    let mut m = obj.clone();
    m[lo + 8..lo + 12].copy_from_slice(&200u32.to_le_bytes()); // r_info type of the first rela
    let e = link_one(&m).unwrap_err().to_string();
    assert!(
        e.contains("e.o: section .")
            && e.contains("offset 0x")
            && e.contains("unknown relocation type"),
        "{e}"
    );
    // A symbol index out of range.
    let mut m = obj.clone();
    m[lo + 12..lo + 16].copy_from_slice(&0xfff0u32.to_le_bytes());
    let e = link_one(&m).unwrap_err().to_string();
    assert!(e.contains("beyond the symbol table"), "{e}");
    // A relocation outside its section.
    let mut m = obj.clone();
    m[lo..lo + 8].copy_from_slice(&0xffff_fff0u64.to_le_bytes());
    let e = link_one(&m).unwrap_err().to_string();
    assert!(e.contains("outside its section"), "{e}");
}
