use super::*;
use crate::link::LinkMap;

const TEXT: u64 = 0x7ff0_2000;
const DATA: u64 = 0x7ff0_1000;
const GOT: u64 = 0x7ff0_3000;
const STUBS: u64 = 0x7ff0_4000;

/// A hand-made link map: code at TEXT, data at DATA, one GOT entry and one stub.
fn sym(file: &str, name: &str, addr: u64, size: u64) -> crate::link::MappedSymbol {
    crate::link::MappedSymbol {
        file: file.into(),
        name: name.into(),
        addr,
        size,
    }
}

fn sec(file: &str, name: &str, addr: u64, size: u64) -> crate::link::MappedSection {
    crate::link::MappedSection {
        file: file.into(),
        name: name.into(),
        addr,
        size,
    }
}

fn entry(file: &str, target: &str, addr: u64) -> crate::link::TableEntry {
    crate::link::TableEntry {
        file: file.into(),
        target: target.into(),
        addr,
    }
}

fn mem(addr: u64, bytes: Vec<u8>) -> crate::link::MappedBytes {
    crate::link::MappedBytes { addr, bytes }
}

fn map() -> LinkMap {
    let code: Vec<u8> = [
        &[0xc3][..],                                 // main: ret
        &[0xe8, 0x05, 0x00, 0x00, 0x00],             // call: call +5
        &[0x48, 0x8b, 0x05, 0xf2, 0xef, 0xff, 0xff], // load: mov -0x100e(%rip), %rax
        &[0xb8, 0x78, 0x56, 0x34, 0x12],             // imm: mov $0x12345678, %eax
    ]
    .concat();
    let mut data = 0x1122_3344_5566_7788u64.to_le_bytes().to_vec();
    data.extend_from_slice(&TEXT.to_le_bytes());
    LinkMap {
        symbols: vec![
            sym("dir/test.o", "main", TEXT, 1),
            sym("dir/test.o", "call", TEXT + 1, 5),
            sym("dir/test.o", "load", TEXT + 6, 7),
            sym("dir/test.o", "imm", TEXT + 13, 5),
            sym("dir/test.o", "d", DATA, 8),
            sym("dir/test.o", "ptr", DATA + 8, 8),
            sym("dir/test.o", "local", DATA, 0),
            sym("libx.a(m.o)", "local", DATA + 8, 0),
            sym("libx.a(m.o)", "bss_var", DATA + 0x100, 8),
            sym("libx.a(m.o)", "bad", 0x7ff0_5000, 2),
        ],
        got_entries: vec![entry("dir/test.o", "far", GOT)],
        stubs: vec![entry("libx.a(m.o)", "far", STUBS)],
        sections: vec![
            sec("dir/test.o", ".text", TEXT, code.len() as u64),
            sec("dir/test.o", ".data", DATA, 16),
            sec("libx.a(m.o)", ".bss", DATA + 0x100, 8),
            sec("<kiln>", ".got", GOT, 8),
        ],
        memory: vec![
            mem(TEXT, code),
            mem(DATA, data),
            mem(GOT, 0x1234_5678_9000u64.to_le_bytes().to_vec()),
            mem(0x7ff0_5000, vec![0x06, 0x07]),
        ],
    }
}

fn env(m: &LinkMap) -> LinkMapEnv<'_> {
    LinkMapEnv::new(m).with_outside(|n| match n {
        "far" => Some(0x1234_5678_9000),
        "local" => Some(DATA + 8),
        _ => None,
    })
}

fn value(m: &LinkMap, src: &str) -> Result<u64, String> {
    let e = parse_expr(src).map_err(|e| e.to_string())?;
    eval(&e, &env(m))
}

#[test]
fn values() {
    let m = map();
    let cases: &[(&str, u64)] = &[
        ("main", TEXT),
        ("far", 0x1234_5678_9000),
        ("1+2<<3", 24),
        ("2 << 3 + 1", 17),
        ("10 - 2 - 3", 5),
        ("0xff & 0x0f | 0x30", 0x3f),
        ("0x30 | 0xff & 0x0f", 0xf),
        ("0 - 1", u64::MAX),
        ("1 << 64", 0),
        ("1 << 63", 1 << 63),
        ("0x8000000000000000 >> 100", 0),
        ("*{8}d", 0x1122_3344_5566_7788),
        ("*{4}d", 0x5566_7788),
        ("*{2}d", 0x7788),
        ("*{1}d", 0x88),
        ("*{4}d + 4", 0x1122_3344),
        ("(*{4}d) + 4", 0x5566_778c),
        ("1+*{4}d+4", 0x1122_3345),
        ("*{1}*{8}ptr", 0xc3),
        ("(*{8}d)[15:8]", 0x77),
        ("0x1234[15:8] + 1", 0x13),
        ("0xff[63:0]", 0xff),
        ("0xf0f0[7:4][1:0]", 3),
        ("*{8}got_addr(test.o, far)", 0x1234_5678_9000),
        ("got_addr(dir/test.o, far)", GOT),
        ("stub_addr(m.o, far)", STUBS),
        ("stub_addr(libx.a(m.o), far)", STUBS),
        ("section_addr(test.o, .data)", DATA),
        ("section_addr(m.o, .bss)", DATA + 0x100),
        ("*{8}bss_var", 0),
        ("next_pc(call)", TEXT + 6),
        ("decode_operand(call, 0)", 5),
        ("decode_operand(call, 0) + next_pc(call)", TEXT + 11),
        ("decode_operand(load, 4)", (-0x100ei64) as u64),
        ("decode_operand(imm, 1)", 0x1234_5678),
        ("decode_operand(call + 5, 2)", 1),
        // Two locals named `local`: the one `outside` knows (the global) wins.
        ("local", DATA + 8),
    ];
    for (src, want) in cases {
        assert_eq!(value(&m, src), Ok(*want), "{src}");
    }
}

#[test]
fn evaluation_errors_are_messages() {
    let m = map();
    let cases: &[(&str, &str)] = &[
        ("nosuch", "no symbol `nosuch`"),
        ("*{8}0x1000", "0x1000 is not in the linked memory"),
        ("*{8}(d + 12)", "0x7ff0100c"),
        ("*{8}0xffffffffffffffff", "not in the linked memory"),
        ("got_addr(nosuch.o, far)", "no input file `nosuch.o`"),
        (
            "got_addr(test.o, d)",
            "no GOT entry for `d` referenced from `test.o`",
        ),
        ("stub_addr(test.o, far)", "no stub for `far`"),
        (
            "section_addr(test.o, .rodata)",
            "no live section `.rodata` in `test.o`",
        ),
        ("decode_operand(load, 0)", "is a register rax"),
        ("decode_operand(load, 9)", "has 6 operands"),
        ("decode_operand(imm + 5, 0)", "not in the linked memory"),
        ("next_pc(bad)", "no valid x86-64 instruction"),
        ("next_pc(0)", "not in the linked memory"),
    ];
    for (src, want) in cases {
        let e = value(&m, src).unwrap_err();
        assert!(e.contains(want), "{src}: {e:?} does not mention {want:?}");
    }
    // Without an outside answer, two locals of one name are ambiguous.
    let plain = LinkMapEnv::new(&m);
    let e = eval(&parse_expr("local").unwrap(), &plain).unwrap_err();
    assert!(e.contains("ambiguous") && e.contains("libx.a(m.o)"), "{e}");
}

#[test]
fn file_names() {
    use env::file_matches;
    assert!(file_matches("dir/sub/test.o", "test.o"));
    assert!(file_matches("dir/sub/test.o", "dir/sub/test.o"));
    assert!(!file_matches("dir/sub/test.o", "sub/test.o"));
    assert!(!file_matches("dir/test.o", "est.o"));
    assert!(file_matches("/usr/lib/libz.a(crc32.o)", "crc32.o"));
    assert!(file_matches("/usr/lib/libz.a(crc32.o)", "libz.a(crc32.o)"));
    assert!(file_matches(
        "/usr/lib/libz.a(crc32.o)",
        "/usr/lib/libz.a(crc32.o)"
    ));
    assert!(!file_matches("/usr/lib/libz.a(crc32.o)", "libz.a"));
}

#[test]
fn extraction() {
    let src = "\
        .text\n\
        # jitlink-check: a = 1\n\
        #jitlink-check: b = 2\n\
        \t  // jitlink-check: c = 3\n\
        ; jitlink-check: d = 4\n\
        # jitlink-check-pic: e = 5\n\
        # jitlink-check: f = \\\n\
        # jitlink-check:     6 + \\\n\
        \t 7\n\
        movq %rax, %rbx # jitlink-check: g = 8\n\
        # other-check: h = 9\n";
    let checks = extract_checks(src, DEFAULT_CHECK_NAME).unwrap();
    let got: Vec<(usize, &str)> = checks.iter().map(|c| (c.line, c.text.as_str())).collect();
    assert_eq!(
        got,
        [
            (2, "a = 1"),
            (3, "b = 2"),
            (4, "c = 3"),
            (5, "d = 4"),
            (7, "f = 6 + 7"),
        ]
    );
    let other = extract_checks(src, "other-check").unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].text, "h = 9");
    let pic = extract_checks(src, "jitlink-check-pic").unwrap();
    assert_eq!(pic[0].text, "e = 5");
    let e = extract_checks("# jitlink-check: a = \\\n", DEFAULT_CHECK_NAME).unwrap_err();
    assert!(e.contains("line 1") && e.contains("file ends"), "{e}");
    assert!(extract_checks("", "a b").is_err());
    assert!(extract_checks("", "").is_err());
}

#[test]
fn reports() {
    let m = map();
    let src = "\
        # jitlink-check: main = 0x7ff02000\n\
        # jitlink-check: decode_operand(call, 0) = 6\n\
        # jitlink-check: nosuch = 1\n\
        # jitlink-check: main = (1\n";
    let checks = extract_checks(src, DEFAULT_CHECK_NAME).unwrap();
    let r = run_checks(&checks, &env(&m));
    assert_eq!(r.passed, 1);
    assert_eq!(r.total(), 4);
    assert!(!r.ok());
    let texts: Vec<String> = r.failures.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        texts[0],
        "line 2: check failed: decode_operand(call, 0) = 6\n    left side:  0x5\n    right side: 0x6"
    );
    assert!(
        texts[1].starts_with("line 3: cannot evaluate check: nosuch = 1\n"),
        "{}",
        texts[1]
    );
    assert!(texts[1].contains("no symbol `nosuch`"), "{}", texts[1]);
    // The caret points below the place of the error.
    assert_eq!(
        texts[2],
        "line 4: malformed check: unexpected end of the check, expected `)` to close `(`\n    \
         main = (1\n             ^"
    );
}

/// Arbitrary input never panics: every prefix of a set of checks, and assorted junk.
#[test]
fn no_panics_on_junk() {
    let m = map();
    let e = env(&m);
    let samples = [
        "decode_operand(load + 1, 4) = got_addr(libx.a(m.o), far) - next_pc(load)",
        "*{8}(section_addr(test.o, .data) + 8)[63:32] = 0x0 | 1 << 3 >> 2",
        "stub_addr(m.o, far) = *{8}got_addr(test.o, far)",
        "((((a)))) = [1:0] ] ) ( *{} {",
        "\u{e9}\u{1F600} = 0x\u{e9}",
    ];
    for s in samples {
        for end in 0..=s.len() {
            if let Some(prefix) = s.get(..end) {
                let _ = run_check(prefix, &e);
            }
        }
    }
    for junk in [
        "=", "==", "\\", "*{8}", "[", "a[", "a[1", "a[1:", "0x[1:0]", "(", ")",
    ] {
        assert!(run_check(junk, &e).is_err(), "{junk}");
    }
}

/// Symbols the linker defines are answered from the unit even when no input referenced them
/// (the map does not list them): never from outside, where the process's own would be found.
#[test]
fn linker_defined_symbols() {
    let mut m = map();
    let outside = |n: &str| match n {
        "__dso_handle" | "_GLOBAL_OFFSET_TABLE_" | "_TLS_MODULE_BASE_" => Some(0x5555_0000),
        _ => None,
    };
    let value = |m: &LinkMap, src: &str| {
        let e = parse_expr(src).map_err(|e| e.to_string())?;
        eval(&e, &LinkMapEnv::new(m).with_outside(outside))
    };
    assert_eq!(value(&m, "_GLOBAL_OFFSET_TABLE_"), Ok(GOT));
    let e = value(&m, "_TLS_MODULE_BASE_").unwrap_err();
    assert!(e.contains("no initialized thread-local data"), "{e}");
    let e = value(&m, "__dso_handle").unwrap_err();
    assert!(e.contains("the unit's identity for __cxa_atexit"), "{e}");
    let e = value(&m, "_end").unwrap_err();
    assert!(e.contains("static linkers define `_end`"), "{e}");
    // The TLS block starts with the lowest .tdata of any input.
    m.sections.push(sec("b.o", ".tdata.x", DATA + 0x240, 8));
    m.sections.push(sec("a.o", ".tdata", DATA + 0x200, 8));
    assert_eq!(value(&m, "_TLS_MODULE_BASE_"), Ok(DATA + 0x200));
    // Without a GOT section the error says so.
    m.sections.retain(|s| s.name != ".got");
    let e = value(&m, "_GLOBAL_OFFSET_TABLE_").unwrap_err();
    assert!(e.contains("has no GOT entries"), "{e}");
    // A definition in the unit is what the name means.
    m.symbols
        .push(sym("<kiln>", "__dso_handle", DATA + 0x300, 8));
    assert_eq!(value(&m, "__dso_handle"), Ok(DATA + 0x300));
}
