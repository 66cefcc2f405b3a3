//! The C API as C and C++ programs use it: `scripts/install-capi --debug` installs header,
//! libraries, pkg-config files and kiln-executor into a prefix under the target directory; the
//! programs in `tests/c/` are compiled there with gcc and g++ (`-Wall -Wextra -Werror`)
//! through pkg-config, and run. Each program checks its own results and exits 0 only if all
//! hold; the harness also checks what they print (the error messages a person would read).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

struct Installed {
    prefix: PathBuf,
    /// Programs and fixture objects.
    work: PathBuf,
}

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn c_dir() -> PathBuf {
    crate_dir().join("tests/c")
}

/// Install once per test run (the tests share the prefix) and compile the fixtures.
fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-capi");
        let _ = std::fs::remove_dir_all(&root);
        let (prefix, work) = (root.join("prefix"), root.join("work"));
        std::fs::create_dir_all(&work).unwrap();
        let script = crate_dir().join("../../scripts/install-capi");
        let out = Command::new(&script)
            .arg("--debug")
            .arg(&prefix)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "install-capi failed:\n{}",
            text(&out.stderr)
        );
        for entry in std::fs::read_dir(c_dir().join("fixtures")).unwrap() {
            let src = entry.unwrap().path();
            let obj = work.join(src.file_stem().unwrap()).with_extension("o");
            let out = Command::new("gcc")
                .args(["-c", "-O1", "-g", "-o"])
                .arg(&obj)
                .arg(&src)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}:\n{}",
                src.display(),
                text(&out.stderr)
            );
        }
        Installed { prefix, work }
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fixture(name: &str) -> PathBuf {
    installed().work.join(name)
}

/// `pkg-config --cflags --libs PACKAGE` against the installed prefix.
fn pkg_config(package: &str) -> Vec<String> {
    let i = installed();
    let out = Command::new("pkg-config")
        .args(["--cflags", "--libs", package])
        .env("PKG_CONFIG_PATH", i.prefix.join("lib/pkgconfig"))
        .output()
        .expect("pkg-config runs");
    assert!(
        out.status.success(),
        "pkg-config {package}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Compile `source` (in tests/c) into a program named `name`, linked against `package`.
fn build(source: &str, name: &str, package: &str) -> PathBuf {
    let i = installed();
    let exe = i.work.join(name);
    let cxx = source.ends_with(".cpp");
    let (compiler, std) = if cxx {
        ("g++", "-std=c++17")
    } else {
        ("gcc", "-std=c11")
    };
    let out = Command::new(compiler)
        .args([std, "-Wall", "-Wextra", "-Werror", "-g", "-o"])
        .arg(&exe)
        .arg("-I")
        .arg(c_dir())
        .arg(c_dir().join(source))
        .args(pkg_config(package))
        .arg(format!("-Wl,-rpath,{}", i.prefix.join("lib").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{compiler} {source}:\n{}",
        text(&out.stderr)
    );
    exe
}

/// Run a program; it must exit 0. Returns its standard output.
fn run(cmd: &mut Command) -> String {
    let out: Output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn program(exe: &Path, args: &[&Path]) -> Command {
    let mut c = Command::new(exe);
    c.args(args);
    c
}

#[test]
fn link_an_object_and_call_into_it() {
    let exe = build("link_call.c", "link_call", "kiln");
    let out = run(&mut program(&exe, &[&fixture("adder.o")]));
    assert!(out.contains("link_call: "), "{out}");
}

#[test]
fn link_statically_against_libkiln_a() {
    let exe = build("link_call.c", "link_call_static", "kiln-static");
    let dynamic = Command::new("readelf")
        .arg("-d")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        !text(&dynamic.stdout).contains("libkiln"),
        "the static build still needs libkiln.so"
    );
    run(&mut program(&exe, &[&fixture("adder.o")]));
}

#[test]
fn undefined_symbols_give_a_readable_error() {
    let exe = build("undefined.c", "undefined", "kiln");
    let obj = fixture("needs_missing.o");
    let out = run(&mut program(&exe, &[&obj]));
    let expected = format!(
        "error: kiln_session_link: undefined symbols:\n  missing_fn (referenced by {})",
        obj.display()
    );
    assert!(out.contains(&expected), "{out}");
}

#[test]
fn allow_list_refuses_other_names() {
    let exe = build("allow_list.c", "allow_list", "kiln");
    let out = run(&mut program(&exe, &[&fixture("uses_libc.o")]));
    assert!(
        out.contains("symbols not on the allow-list:\n  malloc (referenced by"),
        "{out}"
    );
}

#[test]
fn remove_and_relink() {
    let exe = build("remove_relink.c", "remove_relink", "kiln");
    let (v1, user, v2) = (
        fixture("version1.o"),
        fixture("version_user.o"),
        fixture("version2.o"),
    );
    let out = run(&mut program(&exe, &[&v1, &user, &v2]));
    assert!(out.contains("remove_relink: "), "{out}");
}

#[test]
fn graph_built_from_c() {
    let exe = build("graph.c", "graph", "kiln");
    let out = run(&mut program(&exe, &[]));
    assert!(out.contains("graph: "), "{out}");
}

#[test]
fn function_linked_without_a_graph() {
    let exe = build("function.c", "function", "kiln");
    let out = run(&mut program(&exe, &[]));
    assert!(out.contains("function: "), "{out}");
    // Every refusal printed its message; none is empty.
    assert_eq!(out.matches("error: ").count(), 12, "{out}");
}

#[test]
fn generator_callbacks_answer() {
    let exe = build("generator.c", "generator", "kiln");
    let out = run(&mut program(
        &exe,
        &[&fixture("gen_user.o"), &fixture("gen_object.o")],
    ));
    assert!(out.contains("generator: "), "{out}");
}

/// A spawned executor: given by path, found through KILN_EXECUTOR, found next to the program,
/// and not found at all.
#[test]
fn spawned_executor() {
    let i = installed();
    let exe = build("spawned.c", "spawned", "kiln");
    let executor = i.prefix.join("bin/kiln-executor");
    let hello = fixture("hello.o");
    let ran_there = |out: &str| {
        assert!(
            out.contains("hello from the executor, 3 args, last two\n"),
            "{out}"
        );
        assert!(out.contains("poked\n"), "{out}");
    };
    let sanitized = |c: &mut Command| {
        c.env_remove("KILN_EXECUTOR").env("PATH", "/usr/bin:/bin");
    };

    ran_there(&run(&mut program(&exe, &[&executor, &hello])));

    let mut by_env = program(&exe, &[Path::new("-"), &hello]);
    by_env.env("KILN_EXECUTOR", &executor);
    ran_there(&run(&mut by_env));

    let sibling = i.prefix.join("bin/spawned-sibling");
    std::fs::copy(&exe, &sibling).unwrap();
    let mut next_to_it = program(&sibling, &[Path::new("-"), &hello]);
    sanitized(&mut next_to_it);
    ran_there(&run(&mut next_to_it));

    let mut nowhere = Command::new(&exe);
    nowhere.arg("--expect-not-found");
    sanitized(&mut nowhere);
    let out = run(&mut nowhere);
    assert!(out.contains("cannot find kiln-executor"), "{out}");
}

#[test]
fn misuse_gives_errors_not_crashes() {
    let exe = build("misuse.c", "misuse", "kiln");
    let out = run(&mut program(&exe, &[&fixture("adder.o")]));
    assert!(out.contains("misuse: "), "{out}");
    assert!(
        out.contains("error: kiln_session_link: s is NULL\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "error: kiln_session_lookup: s is a kiln_session_t that was deleted already\n"
        ),
        "{out}"
    );
}

/// The misuse program and a program running JIT'd code under valgrind: no invalid read or
/// write, no use of uninitialised memory, no definite leak.
#[test]
fn misuse_and_linking_under_valgrind() {
    let misuse = build("misuse.c", "misuse_vg", "kiln");
    let link_call = build("link_call.c", "link_call_vg", "kiln");
    let adder = fixture("adder.o");
    for exe in [&misuse, &link_call] {
        let mut vg = Command::new("valgrind");
        vg.args([
            "-q",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
        ])
        .arg(exe)
        .arg(&adder);
        let out = run(&mut vg);
        assert!(out.contains("checks passed"), "{out}");
    }
}

/// kiln-jit from C: zone, regions, sites, write window, inline cache, PIC (targets by address
/// and by name), redefinition, heap references (jit.c checks each by calling the code).
#[test]
fn jit_zone_sites_caches_redefinition_heap_refs() {
    let exe = build("jit.c", "jit", "kiln");
    let out = run(&mut program(&exe, &[]));
    assert!(out.contains("jit: "), "{out}");
    assert!(
        out.contains("error: kiln_jit_set_value: the site at 0x"),
        "{out}"
    );
}

/// A lazy function whose C callback compiles it on the first call (once, also when 8 threads
/// call it at once); callbacks that fail reach the VM's error handler with a readable message
/// and calls take its fallback, no crash.
#[test]
fn lazy_functions_with_c_callbacks() {
    let exe = build("lazy.c", "lazy", "kiln");
    let out = run(&mut program(&exe, &[]));
    assert!(out.contains("lazy: "), "{out}");
    assert!(
        out.contains(
            "handler: lazy_broken: its handler failed: lazy function lazy_broken: the compile \
             callback failed: the VM has no code for lazy_broken\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("error: kiln_jit_declare_lazy: callback is NULL\n"),
        "{out}"
    );
}

/// Misuse of the JIT API: NULL, deleted and foreign handles, bad configurations, unknown
/// regions and kinds, stale units and sites, writes outside the zone's regions.
#[test]
fn jit_misuse_gives_errors_not_crashes() {
    let exe = build("jit_misuse.c", "jit_misuse", "kiln");
    let out = run(&mut program(&exe, &[]));
    assert!(out.contains("jit_misuse: "), "{out}");
    assert!(out.contains("error: kiln_jit_zone: jit is NULL\n"), "{out}");
    assert!(
        out.contains("error: kiln_jit_link: 9 is not a kiln_region_t"),
        "{out}"
    );
}

/// The JIT with code in a child kiln-executor: patches, heap references, a lazy function whose
/// C callback runs in this process when the child first calls it, redefinition, and a
/// compaction of the child's method region (survivors right at their new places, the map
/// translating old addresses).
#[test]
fn jit_with_a_spawned_executor() {
    let i = installed();
    let exe = build("jit_spawned.c", "jit_spawned", "kiln");
    let out = run(&mut program(&exe, &[&i.prefix.join("bin/kiln-executor")]));
    assert!(out.contains("jit_spawned: "), "{out}");
}

/// Compaction with a move map: refused when a dropped unit's user stays, survivors slide down
/// (calls, a patched constant, a heap reference carried along), the map translates return
/// addresses and names dropped code, pinned units stay.
#[test]
fn compaction_with_a_move_map() {
    let exe = build("compact.c", "compact", "kiln");
    let out = run(&mut program(&exe, &[&fixture("adder.o")]));
    assert!(out.contains("compact: "), "{out}");
    assert!(out.contains("error: kiln_jit_compact: unit "), "{out}");
    assert!(out.contains("cannot be dropped: unit "), "{out}");
}

/// The JIT programs under valgrind (their JITs tell valgrind of replaced code): code patched,
/// redefined, reclaimed, compiled lazily on 8 threads, and misused — no invalid read or write,
/// no use of uninitialised memory, no definite leak.
#[test]
fn jit_programs_under_valgrind() {
    let adder = fixture("adder.o");
    for (source, name, args) in [
        ("jit_misuse.c", "jit_misuse_vg", &[][..]),
        ("jit.c", "jit_vg", &[]),
        ("lazy.c", "lazy_vg", &[]),
        ("compact.c", "compact_vg", &[adder.as_path()]),
    ] {
        let exe = build(source, name, "kiln");
        let mut vg = Command::new("valgrind");
        vg.args([
            "-q",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
        ])
        .arg(&exe)
        .args(args);
        let out = run(&mut vg);
        assert!(out.contains("checks passed"), "{out}");
    }
}

#[test]
fn threads_share_a_session_and_see_it_deleted() {
    let exe = build("threads.c", "threads", "kiln");
    let out = run(&mut program(&exe, &[]));
    assert!(out.contains("threads: "), "{out}");
}

#[test]
fn cxx_program() {
    let exe = build("cxx.cpp", "cxx", "kiln");
    let out = run(&mut program(&exe, &[]));
    assert!(out.contains("cxx: ok"), "{out}");
    assert!(
        out.contains("error: kiln_session_lookup: cxx_missing is not defined"),
        "{out}"
    );
}

/// `examples/c` builds with its own Makefile against the installed library (through
/// pkg-config) and runs. Built in a copy, so that the source tree gets no build products.
#[test]
fn the_c_example_builds_with_its_makefile_and_runs() {
    let i = installed();
    let copy = i.work.join("example");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["Makefile", "embed.c", "plugin.c", "jit.c"] {
        std::fs::copy(crate_dir().join("../../examples/c").join(f), copy.join(f)).unwrap();
    }
    let out = run(Command::new("make")
        .arg("-C")
        .arg(&copy)
        .arg("run")
        .env("PKG_CONFIG_PATH", i.prefix.join("lib/pkgconfig")));
    assert!(
        out.contains("host_log: plugin_run computed 41\nplugin_run(4) = 41\n"),
        "{out}"
    );
    assert!(
        out.contains("as expected: kiln_session_remove: unit 1 cannot be removed"),
        "{out}"
    );
    assert!(
        out.contains(
            "compiling square\nf(7) = 49\nf(8) = 64\nf(7) = 1049 after patching the \
             constant\nentry(3) = 1009\nentry(3) = -3 after redefining f\n"
        ),
        "{out}"
    );
}

/// Every function kiln.h declares is exported by libkiln.so: a program taking the address of
/// each one links.
#[test]
fn every_declared_function_is_exported() {
    let header = std::fs::read_to_string(crate_dir().join("include/kiln.h")).unwrap();
    // Identifiers directly followed by `(`: declarations (and the callback typedef's
    // parameter list, which follows `)`, not a name).
    let mut names: Vec<&str> = Vec::new();
    let mut start = None;
    for (i, c) in header.char_indices() {
        if c.is_alphanumeric() || c == '_' {
            start.get_or_insert(i);
            continue;
        }
        if let Some(s) = start.take() {
            if c == '(' && header[s..i].starts_with("kiln_") {
                names.push(&header[s..i]);
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 45, "{names:?}");
    let table: Vec<String> = names.iter().map(|n| format!("    (fn){n},\n")).collect();
    let source = format!(
        "#include <kiln.h>\n#include <stdio.h>\ntypedef void (*fn)(void);\n\
         static fn all[] = {{\n{}}};\n\
         int main(void) {{ size_t i, n = 0; for (i = 0; i < sizeof all / sizeof *all; i++) n += all[i] != 0; printf(\"%zu\\n\", n); return 0; }}\n",
        table.concat()
    );
    let i = installed();
    let src = i.work.join("all_functions.c");
    std::fs::write(&src, source).unwrap();
    let exe = i.work.join("all_functions");
    let out = Command::new("gcc")
        .args(["-std=c11", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(pkg_config("kiln"))
        .arg(format!("-Wl,-rpath,{}", i.prefix.join("lib").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = run(&mut Command::new(&exe));
    assert_eq!(printed.trim(), names.len().to_string());
}
