//! The kiln-lox command: options, exit statuses, the REPL, --stats.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn kiln_lox(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-lox"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln-lox");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait for kiln-lox")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn program(name: &str, source: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, source).expect("write program");
    path
}

#[test]
fn repl_keeps_globals_and_goes_on_after_errors() {
    let session = "var a = 1;\nprint a;\nprint b;\nprint a + 1;\nfun f() { return a * 10; }\nprint f();\nvar x = ;\n\
                   class A { init(v) { this.v = v; } }\nprint A(3).v;\nundefinedVar = 2;\nprint \"still here\";";
    let out = kiln_lox(&[], session.as_bytes());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "> > 1\n> > 2\n> > 10\n> > > 3\n> > still here\n> \n"
    );
    assert_eq!(
        text(&out.stderr),
        "Undefined variable 'b'.\n[line 1] in script\n[line 1] Error at ';': Expect expression.\n\
         Undefined variable 'undefinedVar'.\n[line 1] in script\n"
    );
}

#[test]
fn repl_reads_at_most_1023_bytes_per_line_as_clox_does() {
    let session = format!("print \"{}\";\nprint 1;\n", "a".repeat(1100));
    let out = kiln_lox(&[], session.as_bytes());
    assert_eq!(text(&out.stdout), "> > > 1\n> \n");
    assert_eq!(
        text(&out.stderr),
        "[line 1] Error: Unterminated string.\n[line 2] Error: Unterminated string.\n"
    );
}

#[test]
fn usage_errors_exit_64() {
    for args in [
        &["a.lox", "b.lox"][..],
        &["--no-such-option"],
        &["--runs"],
        &["--jit=sometimes"],
    ] {
        let out = kiln_lox(args, b"");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(
            text(&out.stderr).contains("Usage: kiln-lox [options] [path]"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn jit_modes_run_with_any_valid_code_zone() {
    let path = program("modes.lox", "fun f(n) { return n + 1; }\nprint f(41);\n");
    let path = path.to_str().expect("utf-8 path");
    for mode in ["--jit=off", "--jit=on", "--jit=always"] {
        let out = kiln_lox(&[mode, path], b"");
        assert_eq!(out.status.code(), Some(0), "{mode}");
        assert_eq!(text(&out.stdout), "42\n", "{mode}");
    }
    for args in [
        &["--jit=always", "--code-zone", "1M", path][..],
        &["--jit=always", "--code-zone=512K", path],
        &["--jit=always", "--code-zone=128k", path],
        &["--jit=always", "--code-zone", "1G", path],
        &["--jit=always", "--code-zone", "8388608", path],
    ] {
        let out = kiln_lox(args, b"");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "42\n", "{args:?}");
    }
}

#[test]
fn bad_code_zone_sizes_are_usage_errors() {
    for (value, why) in [
        ("", "not a size"),
        ("M", "not a size"),
        ("12X", "suffix must be K, M or G"),
        ("-5M", "not a size"),
        ("1.5M", "not a size"),
        ("64", "too small"),
        ("47K", "too small"),
        ("2G", "too large"),
        ("99999999999999999999", "too large"),
        ("18014398509481984K", "too large"),
    ] {
        for args in [
            vec!["--code-zone".to_string(), value.to_string()],
            vec![format!("--code-zone={value}")],
        ] {
            let out = kiln_lox(&args.iter().map(String::as_str).collect::<Vec<_>>(), b"");
            assert_eq!(out.status.code(), Some(64), "{args:?}");
            let err = text(&out.stderr);
            assert!(
                err.contains("--code-zone") && err.contains(why),
                "{args:?}: {err}"
            );
        }
    }
    let out = kiln_lox(&["--code-zone"], b"");
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("--code-zone needs a value"));
}

#[test]
fn missing_file_exits_74() {
    let out = kiln_lox(&["/no/such/file.lox"], b"");
    assert_eq!(out.status.code(), Some(74));
    assert_eq!(
        text(&out.stderr),
        "Could not open file \"/no/such/file.lox\".\n"
    );
}

#[test]
fn help_lists_the_options() {
    let out = kiln_lox(&["--help"], b"");
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for option in [
        "--gc-stress",
        "--stats",
        "--jit=off",
        "--code-zone",
        "--bench-against",
    ] {
        assert!(help.contains(option), "--help does not mention {option}");
    }
}

/// The number after `label` in the --stats report.
fn stat(report: &str, label: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} in:\n{report}"));
    line[line.find(label).expect("label") + label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

#[test]
fn stats_count_calls_cache_hits_and_collections() {
    let source = "class P { init(x) { this.x = x; } get() { return this.x; } }\n\
                  var s = 0;\nfor (var i = 0; i < 1000; i = i + 1) { var p = P(i); s = s + p.get() + p.x; }\nprint s;\n";
    let path = program("stats.lox", source);
    let path = path.to_str().expect("utf-8 path");
    let out = kiln_lox(&["--stats", "--gc-stress", "--jit=off", path], b"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "999000\n");
    let report = text(&out.stderr);
    assert!(stat(&report, "calls") >= 2000, "{report}");
    assert!(stat(&report, "instructions executed") > 10_000, "{report}");
    assert!(stat(&report, "ic invoke") >= 990, "{report}");
    assert!(stat(&report, "ic get property") >= 990, "{report}");
    assert!(stat(&report, "ic set property") >= 990, "{report}");
    // --gc-stress collects at every allocation: at least once per instance.
    assert!(stat(&report, "gc collections") >= 1000, "{report}");
    assert!(
        stat(&report, "bytes moved by gc") > 0 && stat(&report, "references updated") > 0,
        "{report}"
    );

    let plain = kiln_lox(&[path], b"");
    assert_eq!(text(&plain.stdout), "999000\n");
    assert!(plain.stderr.is_empty(), "no report without --stats");
}

#[test]
fn stats_count_what_the_jit_did() {
    let source = "class P { init(x) { this.x = x; } get() { return this.x; } }\n\
                  var s = 0;\nfor (var i = 0; i < 1000; i = i + 1) { var p = P(i); s = s + p.get() + p.x; }\nprint s;\n";
    let path = program("jit_stats.lox", source);
    let path = path.to_str().expect("utf-8 path");
    let out = kiln_lox(&["--stats", "--jit=always", path], b"");
    assert_eq!(text(&out.stdout), "999000\n");
    let report = text(&out.stderr);
    // The script, init and get.
    assert_eq!(stat(&report, "functions compiled"), 3, "{report}");
    assert!(stat(&report, "bytes of code") > 100, "{report}");
    assert_eq!(stat(&report, "not compiled"), 0, "{report}");
    assert_eq!(stat(&report, "instructions executed"), 0, "{report}");
    assert!(stat(&report, "jit ic invoke") >= 990, "{report}");
    assert!(stat(&report, "jit ic get property") >= 1990, "{report}");
    assert!(stat(&report, "jit ic set property") >= 990, "{report}");

    // Tiered: the loop gets hot and the script goes on in machine code.
    let out = kiln_lox(&["--stats", "--jit=on", path], b"");
    assert_eq!(text(&out.stdout), "999000\n");
    let report = text(&out.stderr);
    assert_eq!(stat(&report, "loop entries (OSR)"), 1, "{report}");
    assert!(stat(&report, "instructions executed") < 10_000, "{report}");
}

#[test]
fn call_sites_to_functions_compiled_later_are_patched() {
    // `a` is compiled first (the loop runs it hot) with a call site waiting for `b`, which
    // the bridge then runs until `b` gets hot: its compilation retargets that site.
    let source = "fun a(n) { return b(n) + 1; }\nfun b(n) { return n * 2; }\n\
                  var s = 0;\nfor (var i = 0; i < 1000; i = i + 1) { s = s + a(i); }\nprint s;\n";
    let path = program("sites.lox", source);
    let path = path.to_str().expect("utf-8 path");
    let out = kiln_lox(&["--stats", "--jit=on", path], b"");
    assert_eq!(text(&out.stdout), "1e+06\n");
    let report = text(&out.stderr);
    assert_eq!(stat(&report, "call sites made"), 1, "{report}");
    assert_eq!(stat(&report, "call sites patched"), 1, "{report}");
    assert!(stat(&report, "calls into interpreter") < 100, "{report}");
    assert!(stat(&report, "code zone bytes") == 64 << 20, "{report}");
    let out = kiln_lox(&["--stats", "--code-zone=2M", path], b"");
    assert_eq!(text(&out.stdout), "1e+06\n");
    assert_eq!(stat(&text(&out.stderr), "code zone bytes"), 2 << 20);
}

#[test]
fn property_sites_use_code_patching_caches() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lox/jit/code_ics.lox");
    let out = kiln_lox(&["--stats", "--jit=always", path], b"");
    assert_eq!(text(&out.stdout), "10400\n22950\n1950\ntrue\n900\n");
    let report = text(&out.stderr);
    assert!(stat(&report, "code ic mono sets") >= 5, "{report}");
    // Ten shapes at each of five property sites and one invocation site: PICs grown case by
    // case, then megamorphic.
    assert!(stat(&report, "code ic pics built") >= 6 * 7, "{report}");
    assert_eq!(stat(&report, "code ic megamorphic"), 6, "{report}");
    assert_eq!(stat(&report, "code ic patch errors"), 0, "{report}");
    assert_eq!(stat(&report, "code ic gc rewrites"), 0, "{report}");
    // Under --gc-stress every shape moves at every collection: the keys in code follow.
    let out = kiln_lox(&["--stats", "--jit=always", "--gc-stress", path], b"");
    assert_eq!(text(&out.stdout), "10400\n22950\n1950\ntrue\n900\n");
    let report = text(&out.stderr);
    assert!(stat(&report, "code ic gc rewrites") > 100, "{report}");
    assert_eq!(stat(&report, "code ic patch errors"), 0, "{report}");
    // Its string constants are immediates in code, which every collection rewrites.
    assert!(stat(&report, "heap refs in code") >= 2, "{report}");
    assert!(stat(&report, "heap refs updated") > 50, "{report}");
}

#[test]
fn a_full_code_zone_is_compacted_with_the_same_output() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lox/jit/zone_full.lox");
    for extra in [&[][..], &["--gc-stress"]] {
        let mut args = vec!["--stats", "--jit=always", "--code-zone=128K"];
        args.extend_from_slice(extra);
        args.push(path);
        let out = kiln_lox(&args, b"");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(text(&out.stdout), "109500\n", "{args:?}");
        let report = text(&out.stderr);
        // 400 KiB of code through 48 KiB: functions dropped, survivors moved, many times.
        assert!(stat(&report, "compactions") >= 5, "{report}");
        assert!(stat(&report, "functions dropped") >= 5, "{report}");
        assert!(stat(&report, "units moved") >= 5, "{report}");
        assert_eq!(stat(&report, "compaction errors"), 0, "{report}");
        assert!(stat(&report, "functions compiled") > 40, "{report}");
    }
    // The default zone holds it all: no compaction.
    let out = kiln_lox(&["--stats", "--jit=always", path], b"");
    assert_eq!(text(&out.stdout), "109500\n");
    assert_eq!(stat(&text(&out.stderr), "compactions"), 0);
}
