//! What the debug sinks are given (DESIGN.md, "Making JIT'd code known"), checked on the alloc
//! actions of a link against a simulated executor (nothing runs): gdb objects are valid ELF with
//! section addresses patched, perf map entries and jitdump records name every function with its
//! final bytes, line table and unwinding data, valgrind discards cover the code, and each sink
//! is off when asked.

use kiln::internal::{link, LinkInput, LinkedUnit, NoSession};
use kiln::DebugOptions;
use kiln_target::{Action, ActionPair, ExecutorAddr, SimulatedExecutor};
use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::LittleEndian as LE;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BASE: u64 = 0x7100_0000_0000;
const FAR: u64 = 0x1000_0000_0000;

const WITH_DWARF: &str = r#"
extern int far_away(int);
int helper(int x) { return x * 3 + 1; }
/* Hidden and unreferenced: dead-stripped (it has its own section). */
__attribute__((visibility("hidden"))) int dropped_fn(int x) { return x - 1; }
int entry(int argc, char **argv, char **envp) {
    int r = helper(argc);
    r += far_away(r);
    return r;
}
"#;

const WITHOUT_DWARF: &str = r#"
static int quiet_static(int x) { return x ^ 0x55; }
int quiet_global(int x) { return quiet_static(x) + 2; }
"#;

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-debug-objects-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn compile(dir: &Path, name: &str, src: &str, flags: &[&str]) -> Vec<u8> {
    let (s, o) = (dir.join(format!("{name}.c")), dir.join(format!("{name}.o")));
    std::fs::write(&s, src).unwrap();
    let st = Command::new("cc")
        .args(["-c", "-O2", "-ffunction-sections"])
        .args(flags)
        .arg("-o")
        .arg(&o)
        .arg(&s)
        .status()
        .unwrap_or_else(|e| panic!("cc is required for this test: {e}"));
    assert!(st.success(), "cc failed on {name}");
    std::fs::read(&o).unwrap()
}

struct Linked {
    unit: LinkedUnit<'static>,
    actions: Vec<ActionPair>,
    memory: Vec<(u64, Vec<u8>)>,
    /// (address, size with zero fill) of each segment.
    segments: Vec<(u64, u64)>,
}

fn link_with(debug: &DebugOptions, objects: &[(&str, &[u8])]) -> Linked {
    let ex = SimulatedExecutor::new(
        BASE,
        HashMap::from([(b"far_away".to_vec(), ExecutorAddr(FAR))]),
    );
    let defines = FxHashMap::default();
    let unit = link(
        &ex,
        LinkInput {
            objects: objects.iter().map(|(n, d)| (n.to_string(), *d)).collect(),
            archives: Vec::new(),
            graphs: &[],
            functions: &[],
            libraries: &[],
            defines: &defines,
            session: &NoSession,
            process_symbols: false,
            roots: &["entry".to_string(), "quiet_global".to_string()],
            allow: None,
            fixed_address: None,
            want_map: false,
            collect_stats: false,
            debug,
            memory: None,
            relink: false,
        },
    )
    .expect("link");
    let req = ex.finalized().pop().expect("a finalized request");
    Linked {
        unit,
        actions: req.actions,
        memory: req
            .segments
            .iter()
            .map(|s| (s.addr.0, s.content.clone()))
            .collect(),
        segments: req.segments.iter().map(|s| (s.addr.0, s.size())).collect(),
    }
}

impl Linked {
    fn addr(&self, name: &str) -> u64 {
        self.unit
            .exports
            .iter()
            .find(|e| &*e.name == name.as_bytes())
            .unwrap_or_else(|| panic!("{name} is not exported"))
            .addr
    }
    fn bytes(&self, addr: u64, len: usize) -> &[u8] {
        let (a, m) = self
            .memory
            .iter()
            .find(|(a, m)| *a <= addr && addr < a + m.len() as u64)
            .expect("address in a segment");
        &m[(addr - a) as usize..][..len]
    }
    fn finalize_actions(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter_map(|p| p.finalize.as_ref())
    }
}

/// The two inputs, compiled once for all tests.
fn inputs() -> (Vec<u8>, Vec<u8>) {
    static INPUTS: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    INPUTS
        .get_or_init(|| {
            let dir = tmpdir();
            (
                compile(&dir, "with_dwarf", WITH_DWARF, &["-g"]),
                compile(&dir, "without_dwarf", WITHOUT_DWARF, &[]),
            )
        })
        .clone()
}

/// (name, type, flags, addr, size) of each section, and (name, shndx, value) of each symbol.
type Sections = Vec<(String, u32, u64, u64, u64)>;
fn read_elf(obj: &[u8]) -> (Sections, Vec<(String, u16, u64)>) {
    let h = FileHeader64::<LE>::parse(obj).expect("ELF header");
    assert_eq!(h.e_type(LE), elf::ET_REL);
    let secs = h.sections(LE, obj).expect("section headers");
    let sections = secs
        .iter()
        .map(|s| {
            (
                String::from_utf8_lossy(secs.section_name(LE, s).unwrap()).into_owned(),
                s.sh_type(LE).0,
                s.sh_flags(LE).0,
                s.sh_addr(LE),
                s.sh_size(LE),
            )
        })
        .collect();
    let symtab = secs
        .symbols(LE, obj, elf::SHT_SYMTAB)
        .expect("symbol table");
    let syms = symtab
        .iter()
        .map(|s| {
            (
                String::from_utf8_lossy(symtab.symbol_name(LE, s).unwrap()).into_owned(),
                s.st_shndx(LE).0,
                s.st_value(LE),
            )
        })
        .collect();
    (sections, syms)
}

/// Final address of a symbol according to a gdb object: its section's sh_addr plus its value.
fn elf_addr(obj: &[u8], name: &str) -> Option<u64> {
    let (secs, syms) = read_elf(obj);
    let (_, shndx, value) = syms.iter().find(|s| s.0 == name)?;
    let sec = secs.get(*shndx as usize)?;
    (sec.2 & elf::SHF_ALLOC.0 != 0).then_some(sec.3 + value)
}

#[test]
fn gdb_objects_have_load_addresses() {
    let (a, b) = inputs();
    let l = link_with(
        &DebugOptions {
            gdb: true,
            ..DebugOptions::none()
        },
        &[("with_dwarf.o", &a), ("without_dwarf.o", &b)],
    );
    let pairs: Vec<&ActionPair> = l
        .actions
        .iter()
        .filter(|p| matches!(p.finalize, Some(Action::RegisterGdbObjects { .. })))
        .collect();
    assert_eq!(pairs.len(), 1, "one registration per unit: {:?}", l.actions);
    let Some(Action::RegisterGdbObjects { key, objects }) = &pairs[0].finalize else {
        unreachable!()
    };
    assert_eq!(
        pairs[0].dealloc,
        Some(Action::DeregisterGdbObjects { key: *key }),
        "registration is undone on free"
    );
    // The two inputs, and kiln's own object (stubs).
    assert_eq!(objects.len(), 3, "{objects:?}");
    let (dwarf, plain, synth) = (&objects[0].0, &objects[1].0, &objects[2].0);

    for (obj, name) in [(dwarf, "entry"), (dwarf, "helper"), (plain, "quiet_global")] {
        assert_eq!(
            elf_addr(obj, name),
            Some(l.addr(name)),
            "{name}: section address + value is the final address"
        );
    }
    // A static function (no export) is named too: it lies inside the unit.
    let q = elf_addr(plain, "quiet_static");
    if let Some(q) = q {
        assert!((BASE..BASE + (1 << 30)).contains(&q), "{q:#x}");
    }

    let (secs, syms) = read_elf(dwarf);
    // Code is not copied (gdb reads it from the process); DWARF and its relocations are.
    let text = secs.iter().find(|s| s.0 == ".text.entry").unwrap();
    assert_eq!(text.1, elf::SHT_NOBITS.0);
    assert!(secs
        .iter()
        .any(|s| s.0 == ".debug_info" && s.1 == elf::SHT_PROGBITS.0 && s.4 > 0));
    assert!(secs
        .iter()
        .any(|s| s.0 == ".rela.debug_info" && s.1 == elf::SHT_RELA.0));
    assert!(
        secs.iter()
            .filter(|s| s.0 == ".rela.text.entry")
            .all(|s| s.1 == elf::SHT_NULL.0),
        "code relocations are already applied"
    );
    // The dead-stripped function's section is no longer allocated, and its symbol undefined.
    let dropped = secs.iter().find(|s| s.0 == ".text.dropped_fn").unwrap();
    assert_eq!(dropped.2 & elf::SHF_ALLOC.0, 0);
    let ds = syms.iter().find(|s| s.0 == "dropped_fn").unwrap();
    assert_eq!((ds.1, ds.2), (elf::SHN_UNDEF.0, 0));
    // .eh_frame holds the unit's final records, at their address.
    let eh = secs.iter().find(|s| s.0 == ".eh_frame").unwrap();
    assert!(eh.3 >= BASE && eh.4 > 0, "{eh:?}");

    // kiln's own object names the stub of the far call.
    let stub = elf_addr(synth, "far_away@stub").expect("stub symbol");
    assert!((BASE..BASE + (1 << 30)).contains(&stub), "{stub:#x}");
    assert_eq!(&l.bytes(stub, 2), &[0xff, 0x25], "a jmp *GOT(%rip) stub");
}

#[test]
fn perf_map_names_functions_and_stubs() {
    let (a, b) = inputs();
    let l = link_with(
        &DebugOptions {
            perf_map: true,
            ..DebugOptions::none()
        },
        &[("with_dwarf.o", &a), ("without_dwarf.o", &b)],
    );
    let entries: Vec<_> = l
        .actions
        .iter()
        .filter_map(|p| match (&p.finalize, &p.dealloc) {
            (Some(Action::WritePerfMap { entries }), None) => Some(entries.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let find = |n: &str| entries.iter().find(|e| e.name == n);
    for n in ["entry", "helper", "quiet_global"] {
        let e = find(n).unwrap_or_else(|| panic!("{n} in {entries:?}"));
        assert_eq!(e.addr.0, l.addr(n));
        assert!(e.size > 0);
    }
    assert!(
        find("far_away@stub").is_some_and(|e| e.size == 8),
        "{entries:?}"
    );
    assert!(find("dropped_fn").is_none(), "dead code is not named");
}

/// (address, line, file) of a JIT_CODE_DEBUG_INFO entry.
type LineEntry = (u64, u32, String);

/// A jitdump record: (id, body after the 16-byte header).
fn records_of(mut b: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let id = u32::from_le_bytes(b[0..4].try_into().unwrap());
        let size = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        assert!(size >= 16 && size <= b.len(), "record size {size}");
        out.push((id, b[16..size].to_vec()));
        b = &b[size..];
    }
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn cstr_at(b: &[u8], at: usize) -> (String, usize) {
    let n = b[at..].iter().position(|c| *c == 0).unwrap();
    (
        String::from_utf8_lossy(&b[at..at + n]).into_owned(),
        at + n + 1,
    )
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn i32_at(b: &[u8], at: usize) -> i64 {
    i64::from(i32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}

/// (name, address, size, unwinding: (mapped_size, unwinding_size)) of a JIT_CODE_LOAD.
type LoadUnwind = (String, u64, u64, Option<(u64, u64)>);

/// A `JIT_CODE_UNWINDING_INFO` body, checked and decoded for code of `code_size` bytes as
/// `perf inject --jit` lays it out (code at 0, `.eh_frame` at `align8(code_size)`,
/// `.eh_frame_hdr` after it): (mapped_size, unwinding_size, each table entry's FDE as
/// (pc_begin relative to the code, pc_range)).
fn decode_unwinding(body: &[u8], code_size: u64) -> (u64, u64, Vec<(i64, u64)>) {
    let (size, hdr_size, mapped) = (u64_at(body, 0), u64_at(body, 8), u64_at(body, 16));
    assert_eq!((body.len() + 16) % 8, 0, "record padded to 8 bytes");
    let data = &body[24..];
    assert!(
        size as usize <= data.len() && data.len() < size as usize + 8,
        "unwinding_size {size}, {} bytes of data",
        data.len()
    );
    assert!(
        data[size as usize..].iter().all(|b| *b == 0),
        "zero padding"
    );
    assert!(hdr_size <= size && (mapped == 0 || mapped == size));
    let eh_len = (size - hdr_size) as usize;
    let base = code_size.next_multiple_of(8) as i64;
    let hdr_at = base + eh_len as i64;
    let hdr = &data[eh_len..size as usize];
    assert_eq!(
        &hdr[..4],
        &[1, 0x1b, 0x03, 0x3b],
        ".eh_frame_hdr version, encodings"
    );
    assert_eq!(hdr_at + 4 + i32_at(hdr, 4), base, "eh_frame_ptr");
    let n = u32_at(hdr, 8) as usize;
    assert_eq!(hdr.len(), 12 + 8 * n, "eh_frame_hdr_size");
    assert_eq!(&data[eh_len - 4..eh_len], &[0; 4], ".eh_frame terminator");
    let mut fdes: Vec<(i64, u64)> = Vec::new();
    for k in 0..n {
        let loc = hdr_at + i32_at(hdr, 12 + 8 * k);
        let fde = (hdr_at + i32_at(hdr, 16 + 8 * k) - base) as usize;
        assert!(fde + 16 <= eh_len);
        let cie = fde + 4 - u32_at(data, fde + 4) as usize;
        assert_eq!(
            u32_at(data, cie + 4),
            0,
            "the FDE's CIE pointer reaches a CIE"
        );
        assert_eq!(&data[cie + 9..cie + 12], b"zR\0", "CIE augmentation");
        let pc = base + fde as i64 + 8 + i32_at(data, fde + 8);
        assert_eq!(pc, loc, "table entry and FDE pc_begin agree");
        assert!(fdes.last().is_none_or(|l| l.0 <= loc), "table sorted");
        fdes.push((pc, u64::from(u32_at(data, fde + 12))));
    }
    (mapped, size, fdes)
}

#[test]
fn jitdump_records_carry_code_and_lines() {
    let (a, b) = inputs();
    let l = link_with(
        &DebugOptions {
            jitdump: Some(PathBuf::from("/some/dir")),
            ..DebugOptions::none()
        },
        &[("with_dwarf.o", &a), ("without_dwarf.o", &b)],
    );
    let (dir, recs) = l
        .finalize_actions()
        .find_map(|a| match a {
            Action::WriteJitdump { dir, records } => Some((dir.clone(), records.0.clone())),
            _ => None,
        })
        .expect("jitdump action");
    assert_eq!(dir, "/some/dir");
    let recs = records_of(&recs);
    let mut loads = HashMap::new();
    let mut pending_debug: Option<(u64, Vec<LineEntry>)> = None;
    let mut pending_unwind: Option<&Vec<u8>> = None;
    let mut prev_id = None;
    let mut unwinds: Vec<LoadUnwind> = Vec::new();
    for (id, body) in &recs {
        let after = prev_id.replace(*id);
        match id {
            4 => pending_unwind = Some(body),
            2 => {
                let (addr, n) = (u64_at(body, 0), u64_at(body, 8));
                let mut at = 16;
                let mut entries = Vec::new();
                for _ in 0..n {
                    let (ea, line) = (
                        u64_at(body, at),
                        u32::from_le_bytes(body[at + 8..at + 12].try_into().unwrap()),
                    );
                    let (file, next) = cstr_at(body, at + 16);
                    entries.push((ea, line, file));
                    at = next;
                }
                assert_eq!(at, body.len());
                pending_debug = Some((addr, entries));
            }
            0 => {
                let (vma, code_addr, size) = (u64_at(body, 8), u64_at(body, 16), u64_at(body, 24));
                assert_eq!(vma, code_addr);
                let (name, at) = cstr_at(body, 40);
                let code = &body[at..];
                assert_eq!(code.len() as u64, size, "{name}");
                assert_eq!(
                    code,
                    l.bytes(code_addr, size as usize),
                    "{name}: final bytes"
                );
                let debug = pending_debug.take().filter(|(a, _)| *a == code_addr);
                if let Some((_, entries)) = &debug {
                    for (ea, _, _) in entries {
                        assert!((code_addr..code_addr + size).contains(ea), "{name}");
                    }
                }
                // The unwinding record just before the load: its FDE covers exactly the
                // function (gcc's FDEs span each function), at perf's addresses.
                let unwind = pending_unwind.take().map(|body| {
                    assert_eq!(
                        after,
                        Some(4),
                        "{name}: unwinding info right before the load"
                    );
                    let (mapped, size_u, fdes) = decode_unwinding(body, size);
                    assert_eq!(fdes, vec![(0, size)], "{name}: FDE covers the function");
                    (mapped, size_u)
                });
                assert_eq!(
                    unwind.is_some(),
                    !name.ends_with("@stub"),
                    "{name}: every compiled function has an FDE, stubs have none"
                );
                unwinds.push((name.clone(), code_addr, size, unwind));
                loads.insert(name, (code_addr, debug.map(|d| d.1)));
            }
            other => panic!("unexpected record {other}"),
        }
    }
    let (addr, lines) = &loads["helper"];
    assert_eq!(*addr, l.addr("helper"));
    let lines = lines
        .as_ref()
        .expect("helper has DWARF: a debug-info record");
    assert!(
        lines
            .iter()
            .all(|(_, line, file)| file.ends_with("with_dwarf.c") && *line == 3),
        "{lines:?}"
    );
    let (_, lines) = &loads["entry"];
    let lines = lines.as_ref().expect("entry has a debug-info record");
    assert!(lines.iter().any(|(_, line, _)| *line == 7), "{lines:?}");
    assert!(
        loads["quiet_global"].1.is_none(),
        "no DWARF, no debug-info record"
    );
    assert!(loads.contains_key("far_away@stub"));

    check_mapped_sizes(&l, &unwinds);

    // Without the stub (no call to far_away), the object without DWARF ends the code with a
    // function that has room after it.
    let entry = compile(
        &tmpdir(),
        "entry_only",
        "int entry(int argc, char **argv, char **envp) { return argc; }",
        &[],
    );
    let alone = link_with(
        &DebugOptions {
            jitdump: Some(PathBuf::from("/some/dir")),
            ..DebugOptions::none()
        },
        &[("entry_only.o", &entry), ("without_dwarf.o", &b)],
    );
    let recs = alone
        .finalize_actions()
        .find_map(|a| match a {
            Action::WriteJitdump { records, .. } => Some(records.0.clone()),
            _ => None,
        })
        .expect("jitdump action");
    let recs = records_of(&recs);
    let mut unwinds = Vec::new();
    for w in recs.windows(2) {
        if let [(4, u), (0, load)] = w {
            let (name, _) = cstr_at(load, 40);
            let (addr, size) = (u64_at(load, 16), u64_at(load, 24));
            let (mapped, data_size, fdes) = decode_unwinding(u, size);
            assert_eq!(fdes, vec![(0, size)], "{name}");
            unwinds.push((name, addr, size, Some((mapped, data_size))));
        }
    }
    let last = unwinds.iter().max_by_key(|u| u.1).expect("loads");
    assert_eq!(last.0, "quiet_global");
    assert!(
        last.3.is_some_and(|(mapped, size)| mapped == size),
        "the last function is mapped: {unwinds:?}"
    );
    check_mapped_sizes(&alone, &unwinds);
}

/// mapped_size is the unwinding data's size where perf's longer mapping (code, padding to 8,
/// data) stays inside the unit and covers no other function, 0 where it would cover one.
fn check_mapped_sizes(l: &Linked, unwinds: &[LoadUnwind]) {
    let unit_end = l
        .memory
        .iter()
        .map(|(a, m)| a + m.len() as u64)
        .max()
        .unwrap();
    for (name, addr, size, unwind) in unwinds {
        let Some((mapped, data_size)) = unwind else {
            continue;
        };
        let lo = addr + size.next_multiple_of(8);
        let hi = lo + data_size;
        let covers_other = unwinds
            .iter()
            .any(|(n, a, s, _)| n != name && *a < hi && lo < a + s);
        if covers_other {
            assert_eq!(*mapped, 0, "{name}: the next function follows its code");
        } else if hi <= unit_end {
            assert_eq!(mapped, data_size, "{name}: room after its code");
        }
    }
}

#[test]
fn valgrind_discards_code_on_finalize_and_free() {
    let (a, b) = inputs();
    let l = link_with(
        &DebugOptions {
            valgrind: true,
            ..DebugOptions::none()
        },
        &[("with_dwarf.o", &a), ("without_dwarf.o", &b)],
    );
    let code = l.addr("entry");
    let covered = l.actions.iter().any(|p| match (&p.finalize, &p.dealloc) {
        (
            Some(Action::DiscardTranslations { addr, size }),
            Some(Action::DiscardTranslations { addr: a2, size: s2 }),
        ) => addr == a2 && size == s2 && (addr.0..addr.0 + size).contains(&code),
        _ => false,
    });
    assert!(covered, "{:?}", l.actions);
}

#[test]
fn sinks_that_are_off_add_nothing() {
    let (a, b) = inputs();
    let l = link_with(
        &DebugOptions::none(),
        &[("with_dwarf.o", &a), ("without_dwarf.o", &b)],
    );
    for a in l
        .actions
        .iter()
        .flat_map(|p| [&p.finalize, &p.dealloc])
        .flatten()
    {
        assert!(
            matches!(
                a,
                Action::RegisterEhFrame { .. } | Action::DeregisterEhFrame { .. }
            ),
            "{a:?}"
        );
    }
}

#[test]
fn kiln_debug_spec() {
    let mut o = DebugOptions::none();
    o.apply("gdb, perfmap,jitdump=/x").unwrap();
    assert_eq!(
        o,
        DebugOptions {
            gdb: true,
            perf_map: true,
            jitdump: Some(PathBuf::from("/x")),
            valgrind: false
        }
    );
    o.apply("all,no-gdb,no-jitdump").unwrap();
    assert_eq!(
        o,
        DebugOptions {
            gdb: false,
            perf_map: true,
            jitdump: None,
            valgrind: true
        }
    );
    o.apply("none,jitdump").unwrap();
    assert_eq!(o.jitdump, Some(PathBuf::from(".")));
    assert!(o.apply("gbd").unwrap_err().contains("unknown sink"));
    assert!(o.apply("gdb=1").is_err());
}

/// The gdb objects of the two inputs and kiln's own, for the tests below.
fn gdb_objects(l: &Linked) -> Vec<Vec<u8>> {
    l.finalize_actions()
        .find_map(|a| match a {
            Action::RegisterGdbObjects { objects, .. } => {
                Some(objects.iter().map(|o| o.0.clone()).collect())
            }
            _ => None,
        })
        .expect("a gdb registration")
}

#[test]
fn gdb_objects_are_well_formed_elf() {
    use object::read::elf::ElfFile64;
    use object::{Object, ObjectSection, ObjectSymbol};
    let (a, b) = inputs();
    let l = link_with(
        &DebugOptions {
            gdb: true,
            ..DebugOptions::none()
        },
        &[("with_dwarf.o", &a), ("without_dwarf.o", &b)],
    );
    let objects = gdb_objects(&l);
    let dir = tmpdir();
    for (i, (obj, input)) in objects.iter().zip([Some(&a), Some(&b), None]).enumerate() {
        // binutils reads it without a complaint.
        let path = dir.join(format!("gdb-object-{i}.o"));
        std::fs::write(&path, obj).unwrap();
        let out = Command::new("readelf")
            .args(["-a", "-W"])
            .arg(&path)
            .output()
            .expect("readelf (binutils) is required for this test");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "object {i}: {stderr}"
        );

        let file = ElfFile64::<LE>::parse(&obj[..]).expect("ELF");
        for sym in file.symbols().filter(|s| s.is_definition()) {
            let Some(index) = sym.section_index() else {
                continue;
            };
            let sec = file.section_by_index(index).unwrap();
            // Section relative values, as in any relocatable object: gdb adds sh_addr.
            let addr = sec.elf_section_header().sh_addr(LE) + sym.address();
            let name = sym.name().unwrap();
            assert!(
                l.segments
                    .iter()
                    .any(|&(start, size)| (start..=start + size).contains(&addr)),
                "object {i}: {name} at {addr:#x} is in the unit"
            );
        }
        let Some(input) = input else {
            continue;
        };
        // Everything gdb reads from the copy is the input's, but `.eh_frame` (the final
        // records at their address) and the symbol table (unloaded symbols undefined).
        let input = ElfFile64::<LE>::parse(&input[..]).unwrap();
        for sec in file.sections() {
            if sec.elf_section_header().sh_type(LE) == elf::SHT_NULL {
                continue; // inactive: relocations already applied, groups resolved
            }
            let name = sec.name().unwrap();
            let data = sec.data().expect("section data inside the object");
            if name == ".eh_frame" {
                assert_eq!(data, l.bytes(sec.address(), data.len()), "{name}");
            } else if !data.is_empty() && name != ".symtab" {
                let original = input.section_by_name(name).unwrap();
                assert_eq!(data, original.data().unwrap(), "object {i}: {name}");
            }
        }
    }
}

#[test]
fn kiln_object_has_its_sections_at_their_addresses() {
    use object::read::elf::ElfFile64;
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
    let (a, b) = inputs();
    let l = link_with(
        &DebugOptions {
            gdb: true,
            ..DebugOptions::none()
        },
        &[("with_dwarf.o", &a), ("without_dwarf.o", &b)],
    );
    let objects = gdb_objects(&l);
    let synth = ElfFile64::<LE>::parse(&objects[2][..]).expect("ELF");
    assert_eq!(synth.elf_header().e_machine(LE), elf::EM_X86_64);
    let stub = synth
        .symbol_by_name("far_away@stub")
        .expect("the stub is named");
    assert_eq!(stub.kind(), SymbolKind::Text);
    assert!(stub.is_local());
    assert_eq!(stub.size(), 8);
    let sec = synth
        .section_by_index(stub.section_index().unwrap())
        .unwrap();
    let h = sec.elf_section_header();
    assert_eq!(
        h.sh_type(LE),
        elf::SHT_NOBITS,
        "code is read from the process"
    );
    let flags = h.sh_flags(LE).0;
    assert_eq!(flags & (elf::SHF_ALLOC.0 | elf::SHF_EXECINSTR.0), 6);
    let addr = sec.address() + stub.address();
    assert!(
        addr + stub.size() <= sec.address() + sec.size(),
        "the stub lies in its section"
    );
    assert_eq!(&l.bytes(addr, 2), &[0xff, 0x25], "a jmp *GOT(%rip) stub");
    // ELF's order: locals, then globals from the symbol table's sh_info on.
    let symtab = synth.section_by_name(".symtab").unwrap();
    let first_global = symtab.elf_section_header().sh_info(LE) as usize;
    for sym in synth.symbols() {
        assert_eq!(
            sym.is_local(),
            sym.index().0 < first_global,
            "{:?}",
            sym.name()
        );
    }
}

/// The rows of an FDE's unwind table, with expressions as bytes (they are offsets into their
/// section otherwise): (start, end, CFA, register rules).
type Rows = Vec<(u64, u64, String, String)>;

fn unwind_rows(
    eh: &gimli::EhFrame<gimli::EndianSlice<gimli::LittleEndian>>,
    bases: &gimli::BaseAddresses,
    fde: &gimli::FrameDescriptionEntry<gimli::EndianSlice<gimli::LittleEndian>>,
) -> Rows {
    let show = |e: gimli::UnwindExpression<usize>| format!("{:?}", e.get(eh).unwrap().0.slice());
    let mut ctx = gimli::UnwindContext::new();
    let mut rows = fde.rows(eh, bases, &mut ctx).unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next_row().unwrap() {
        let cfa = match row.cfa() {
            gimli::CfaRule::Expression(e) => show(*e),
            rule => format!("{rule:?}"),
        };
        let regs = row
            .registers()
            .map(|(reg, rule)| match rule {
                gimli::RegisterRule::Expression(e) | gimli::RegisterRule::ValExpression(e) => {
                    format!("{reg:?}={}", show(*e))
                }
                rule => format!("{reg:?}={rule:?}"),
            })
            .collect::<Vec<_>>()
            .join(",");
        out.push((row.start_address(), row.end_address(), cfa, regs));
    }
    out
}

#[test]
fn jitdump_unwinding_records_keep_the_rules_of_the_units_eh_frame() {
    use gimli::UnwindSection;
    let (a, b) = inputs();
    let l = link_with(
        &DebugOptions {
            jitdump: Some(PathBuf::from("/some/dir")),
            ..DebugOptions::none()
        },
        &[("with_dwarf.o", &a), ("without_dwarf.o", &b)],
    );
    let mut eh_range = None;
    let mut records = Vec::new();
    for a in l.finalize_actions() {
        match a {
            Action::RegisterEhFrame { addr, size } => eh_range = Some((addr.0, *size)),
            Action::WriteJitdump { records: r, .. } => records = r.0.clone(),
            _ => {}
        }
    }
    // The unit's `.eh_frame`, as the unwinder in the process sees it.
    let (eh_addr, eh_size) = eh_range.expect("the unit registers its .eh_frame");
    let unit_eh = gimli::EhFrame::new(l.bytes(eh_addr, eh_size as usize), gimli::LittleEndian);
    let unit_bases = gimli::BaseAddresses::default().set_eh_frame(eh_addr);
    let unit_fde = |pc: u64| {
        unit_eh
            .fde_for_address(&unit_bases, pc, gimli::EhFrame::cie_from_offset)
            .unwrap()
    };

    let recs = records_of(&records);
    let mut checked = 0;
    for w in recs.windows(2) {
        let [(4, unwind), (0, load)] = w else {
            continue;
        };
        let (name, _) = cstr_at(load, 40);
        let (code_addr, code_size) = (u64_at(load, 16), u64_at(load, 24));
        let (size, hdr_size) = (u64_at(unwind, 0) as usize, u64_at(unwind, 8) as usize);
        let data = &unwind[24..24 + size];
        // Read as perf's `.so` places it, but at the code's real address: `.eh_frame` at
        // `align8(code_size)` after the code, `.eh_frame_hdr` after it.
        let eh_at = code_addr + code_size.next_multiple_of(8);
        let hdr_at = eh_at + (size - hdr_size) as u64;
        let bases = gimli::BaseAddresses::default()
            .set_eh_frame(eh_at)
            .set_eh_frame_hdr(hdr_at);
        let eh = gimli::EhFrame::new(&data[..size - hdr_size], gimli::LittleEndian);
        let hdr = gimli::EhFrameHdr::new(&data[size - hdr_size..], gimli::LittleEndian)
            .parse(&bases, 8)
            .expect(".eh_frame_hdr");
        // The header's table finds the function's FDE from its first byte.
        let table = hdr.table().expect("a search table");
        let fde = table
            .fde_for_address(&eh, &bases, code_addr, gimli::EhFrame::cie_from_offset)
            .unwrap_or_else(|e| panic!("{name}: no FDE through the table: {e}"));
        assert!(fde.cie().personality().is_none() && fde.lsda().is_none());
        let original = unit_fde(code_addr);
        assert_eq!(
            (fde.initial_address(), fde.len()),
            (original.initial_address(), original.len()),
            "{name}"
        );
        assert_eq!(
            unwind_rows(&eh, &bases, &fde),
            unwind_rows(&unit_eh, &unit_bases, &original),
            "{name}: the same unwinding rules at every address"
        );
        checked += 1;
    }
    assert!(checked >= 3, "entry, helper, quiet_global: {checked}");
}
