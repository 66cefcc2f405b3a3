//! The `kiln` command as a user meets it: help, exit statuses, --noexec, --entry, --define,
//! --no-process-symbols, -l/-L/-l:FILE, shared-library inputs, stubs for far targets.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn workdir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{tag}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cc(dir: &Path, name: &str, src: &str, flags: &[&str]) -> String {
    let s = dir.join(format!("{name}.c"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&s, src).unwrap();
    let st = Command::new("cc")
        .arg("-c")
        .args(flags)
        .arg("-o")
        .arg(&o)
        .arg(&s)
        .status()
        .expect("cc is required");
    assert!(st.success(), "cc failed on {name}");
    o.display().to_string()
}

#[test]
fn help_explains_with_examples() {
    let (out, _) = text(&kiln(&["--help"]));
    assert!(out.contains("run") && out.contains("Examples"), "{out}");
    let (out, _) = text(&kiln(&["run", "--help"]));
    for opt in [
        "--noexec",
        "--show-stats",
        "--entry",
        "--define",
        "--no-process-symbols",
        "-L",
        "-l",
        "--static",
        "Examples",
    ] {
        assert!(out.contains(opt), "run --help lacks {opt}:\n{out}");
    }
}

#[test]
fn link_failure_runs_nothing_and_exits_125() {
    let d = workdir("fail");
    let o = cc(&d, "f", "#include <stdio.h>\nextern int missing(void);\n__attribute__((constructor)) static void c(void){ puts(\"ctor ran\"); }\nint main(void){ return missing(); }", &[]);
    let r = kiln(&["run", &o]);
    let (out, err) = text(&r);
    assert_eq!(r.status.code(), Some(125));
    assert!(out.is_empty(), "nothing may run: {out}");
    assert!(
        err.contains("undefined symbols") && err.contains("missing") && err.contains("f.o"),
        "{err}"
    );
}

#[test]
fn noexec_runs_not_even_constructors() {
    let d = workdir("noexec");
    let o = cc(&d, "n", "#include <stdio.h>\n__attribute__((constructor)) static void c(void){ puts(\"ctor ran\"); }\nint main(void){ puts(\"main ran\"); return 7; }", &[]);
    let r = kiln(&["run", "--noexec", "--show-stats", &o]);
    let (out, err) = text(&r);
    assert_eq!(r.status.code(), Some(0));
    assert!(out.is_empty(), "{out}");
    for what in [
        "segments:",
        "edges by kind:",
        "GOT entries",
        "stubs",
        "relaxed",
        "archive members",
        "phases:",
        "fixups",
    ] {
        assert!(err.contains(what), "--show-stats lacks {what}:\n{err}");
    }
    let r = kiln(&["run", &o]);
    assert_eq!(r.status.code(), Some(7));
    assert_eq!(text(&r).0, "ctor ran\nmain ran\n");
}

#[test]
fn entry_args_and_defines() {
    let d = workdir("entry");
    let o = cc(
        &d,
        "e",
        "#include <stdio.h>\nextern char magic[];\nint other(int argc, char **argv){ printf(\"%d %s %s %p\\n\", argc, argv[0], argv[argc-1], (void*)magic); return argc; }",
        &["-fPIC"],
    );
    let r = kiln(&[
        "run",
        "--entry",
        "other",
        "--define",
        "magic=0x1234",
        &o,
        "--",
        "x",
        "last",
    ]);
    let (out, err) = text(&r);
    assert_eq!(r.status.code(), Some(3), "{err}");
    assert_eq!(out, format!("3 {o} last 0x1234\n"));
}

#[test]
fn no_process_symbols_turns_the_host_off() {
    let d = workdir("noproc");
    let o = cc(
        &d,
        "p",
        "#include <stdio.h>\nint main(void){ puts(\"hi\"); return 0; }",
        &[],
    );
    let r = kiln(&["run", "--no-process-symbols", &o]);
    let (_, err) = text(&r);
    assert_eq!(r.status.code(), Some(125));
    assert!(err.contains("puts"), "{err}");
    // ... but a library named with -l is still searched: libc by its file name.
    let r = kiln(&["run", "--no-process-symbols", &o, "-l:libc.so.6"]);
    assert_eq!(text(&r).0, "hi\n", "{}", text(&r).1);
}

#[test]
fn libraries_by_name_path_and_shared_inputs() {
    let d = workdir("libs");
    let lib_o = cc(&d, "answer", "int answer(void){ return 42; }", &["-fPIC"]);
    let so = d.join("libanswer.so");
    let st = Command::new("cc")
        .args(["-shared", "-o"])
        .arg(&so)
        .arg(&lib_o)
        .status()
        .unwrap();
    assert!(st.success());
    let ar = d.join("libstatic_answer.a");
    let st = Command::new("ar")
        .arg("rcs")
        .arg(&ar)
        .arg(&lib_o)
        .status()
        .expect("ar is required");
    assert!(st.success());
    let main = cc(&d, "m", "#include <math.h>\nextern int answer(void);\nint main(void){ return answer() + (int)sqrt(4.0); }", &[]);
    let dir = d.display().to_string();
    for args in [
        vec!["-L", &dir, "-lanswer", "-lm"],
        vec!["-L", &dir, "-l:libanswer.so", "-lm"],
        vec!["--static", "-L", &dir, "-lstatic_answer", "-lm"],
    ] {
        let mut a = vec!["run", &main];
        a.extend(args.iter().copied());
        let r = kiln(&a);
        assert_eq!(r.status.code(), Some(44), "{a:?}: {}", text(&r).1);
    }
    let so = so.display().to_string();
    let r = kiln(&["run", &main, &so, "-lm"]);
    assert_eq!(r.status.code(), Some(44), "{}", text(&r).1);
    let r = kiln(&["run", &main, "-lnosuchlib"]);
    assert_eq!(r.status.code(), Some(125));
    assert!(text(&r).1.contains("cannot find library -lnosuchlib"));
}

#[test]
fn far_calls_go_through_stubs_and_far_data_is_an_error() {
    let d = workdir("far");
    // Two call targets more than 2 GiB apart (libc's puts, and far_away): at most one can be
    // reached directly; the other goes through a stub.
    let o = cc(&d, "c", "#include <stdio.h>\nextern void far_away(void);\nint main(void){ puts(\"x\"); far_away(); return 0; }", &[]);
    let r = kiln(&[
        "run",
        "--noexec",
        "--show-stats",
        "--define",
        "far_away=0x100000000000",
        &o,
    ]);
    let (_, err) = text(&r);
    assert_eq!(r.status.code(), Some(0), "{err}");
    assert!(err.contains("stubs: 1"), "{err}");
    // PIE code reaches data with PC32 and has no fallback: two far-apart targets cannot both reach.
    let o = cc(
        &d,
        "dd",
        "extern int far_a, far_b;\nint main(void){ return far_a + far_b; }",
        &["-fPIE"],
    );
    let r = kiln(&[
        "run",
        "--noexec",
        "--define",
        "far_a=0x100000000000",
        "--define",
        "far_b=0x200000000000",
        &o,
    ]);
    let (_, err) = text(&r);
    assert_eq!(r.status.code(), Some(125));
    assert!(err.contains("more than 2 GiB apart"), "{err}");
}

#[test]
fn bad_input_is_named() {
    let d = workdir("bad");
    let p = d.join("junk.o");
    std::fs::write(&p, b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x01\0>\0").unwrap();
    let r = kiln(&["run", &p.display().to_string()]);
    let (_, err) = text(&r);
    assert_eq!(r.status.code(), Some(125));
    assert!(err.contains("junk.o") && err.contains("malformed"), "{err}");
}

#[test]
fn allow_list_refuses_other_symbols_before_running() {
    let d = workdir("allow");
    let o = cc(
        &d,
        "a",
        "#include <stdio.h>\n#include <stdlib.h>\nstatic void bye(void){ puts(\"bye\"); }\n__attribute__((constructor)) static void c(void){ puts(\"ctor ran\"); }\nint main(void){ atexit(bye); puts(\"p\"); printf(\"%d\\n\", 1); return 0; }",
        &[],
    );
    let list = d.join("allow.txt");
    std::fs::write(&list, "# what the program may call\nputs\natexit\n").unwrap();
    let r = kiln(&["run", "--allow-symbols", &list.display().to_string(), &o]);
    let (out, err) = text(&r);
    assert_eq!(r.status.code(), Some(125));
    assert!(out.is_empty(), "nothing may run: {out}");
    assert!(
        err.contains("not on the allow-list") && err.contains("printf") && err.contains("a.o"),
        "{err}"
    );
    assert!(
        !err.contains("puts") && !err.contains("__cxa_atexit"),
        "{err}"
    );
    std::fs::write(&list, "puts\natexit\nprintf\n").unwrap();
    let r = kiln(&["run", "--allow-symbols", &list.display().to_string(), &o]);
    assert_eq!(text(&r).0, "ctor ran\np\n1\nbye\n", "{}", text(&r).1);
}

#[test]
fn non_pie_code_runs_from_the_low_2gib() {
    let d = workdir("nopie");
    let o = cc(
        &d,
        "np",
        "#include <stdio.h>\nstatic int table[4] = {10, 20, 30, 40};\nstatic const char *names[] = {\"a\", \"b\", \"c\", \"d\"};\nint pick(int i) { return table[i & 3]; }\nint main(void) { for (int i = 0; i < 4; i++) printf(\"%s=%d \", names[i], pick(i)); puts(\"\"); return 0; }",
        &["-O2", "-fno-pie"],
    );
    let r = kiln(&["run", "--show-stats", &o]);
    let (out, err) = text(&r);
    assert_eq!(out, "a=10 b=20 c=30 d=40 \n", "{err}");
    let text_seg = err
        .lines()
        .find(|l| l.trim_start().starts_with("r-x"))
        .expect("segments listed");
    let addr = u64::from_str_radix(
        text_seg
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert!(
        addr < 0x8000_0000,
        "non-PIE code must be in the low 2 GiB: {text_seg}"
    );
    // Non-PIE code reading libc's stdout directly needs a copy relocation: refused, clearly.
    let o = cc(
        &d,
        "np2",
        "#include <stdio.h>\nint main(void) { fputs(\"x\\n\", stdout); return 0; }",
        &["-O2", "-fno-pie"],
    );
    let r = kiln(&["run", &o]);
    let (out, err) = text(&r);
    assert_eq!(r.status.code(), Some(125));
    assert!(out.is_empty());
    assert!(
        err.contains("copy relocation") && err.contains("-fPIE"),
        "{err}"
    );
}

/// `--executor spawn`: the program runs in a child of kiln, not in kiln; with shared memory its
/// code lives in the executor's memory file, with copied memory it does not; stdin, stdout, exit
/// status and the `-l` libraries (dlopen'd in the executor) are the program's as in process.
#[test]
fn spawned_executor_runs_the_program_in_a_child() {
    let d = workdir("spawn");
    let o = cc(
        &d,
        "where",
        r#"#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <math.h>
int main(int argc, char **argv) {
    char line[4096]; int memfd = 0;
    FILE *m = fopen("/proc/self/maps", "r");
    while (m && fgets(line, sizeof line, m)) if (strstr(line, "kiln-slab")) memfd = 1;
    char in[64] = "";
    if (!fgets(in, sizeof in, stdin)) strcpy(in, "none\n");
    printf("pid %d ppid %d memfd %d arg %s cbrt %.1f stdin %s", (int)getpid(), (int)getppid(),
           memfd, argv[1], cbrt(27.0 + argc - 2), in);
    return 42;
}
"#,
        &["-O1"],
    );
    for mode in ["shared", "copy"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "run",
                "--executor",
                "spawn",
                "--memory",
                mode,
                &o,
                "-lm",
                "--",
                "x",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let kiln_pid = child.id() as i32;
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"typed\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(42), "{mode}: {stdout}{stderr}");
        let f: Vec<&str> = stdout.split_whitespace().collect();
        assert_eq!(f.len(), 12, "{mode}: {stdout}");
        let (pid, ppid): (i32, i32) = (f[1].parse().unwrap(), f[3].parse().unwrap());
        assert_ne!(pid, kiln_pid, "{mode}: the program ran inside kiln");
        assert_eq!(ppid, kiln_pid, "{mode}: the executor is not kiln's child");
        let expect_memfd = if mode == "shared" { "1" } else { "0" };
        assert_eq!(f[5], expect_memfd, "{mode}: memory file presence: {stdout}");
        assert_eq!(&f[7..], ["x", "cbrt", "3.0", "stdin", "typed"], "{mode}");
    }
}

/// The program's end is kiln's: `exit(3)` from JIT'd code is status 3; death by a signal, even
/// in an exit handler after main returned, is reported and is never status 0.
#[test]
fn executor_exit_and_signals_come_through() {
    let d = workdir("spawn-end");
    let exits = cc(
        &d,
        "exits",
        "#include <stdio.h>\n#include <stdlib.h>\nint main(void){puts(\"before\");exit(3);}\n",
        &[],
    );
    let segv = cc(
        &d,
        "segv",
        "#include <stdio.h>\nint main(void){puts(\"before\");fflush(stdout);*(volatile int*)8=1;return 0;}\n",
        &[],
    );
    let late = cc(
        &d,
        "late",
        "#include <stdio.h>\n#include <stdlib.h>\n#include <signal.h>\n\
         static void h(void){fflush(stdout);raise(SIGABRT);}\n\
         int main(void){atexit(h);puts(\"main done\");return 0;}\n",
        &[],
    );
    for mode in ["shared", "copy"] {
        let run = |o: &str| kiln(&["run", "--executor", "spawn", "--memory", mode, o]);
        let r = run(&exits);
        let (out, err) = text(&r);
        assert_eq!(
            (r.status.code(), out.as_str()),
            (Some(3), "before\n"),
            "{err}"
        );
        let r = run(&segv);
        let (out, err) = text(&r);
        assert_eq!(out, "before\n");
        assert_eq!(r.status.code(), Some(128 + 11), "{err}");
        assert!(err.contains("killed by signal 11 (SIGSEGV)"), "{err}");
        let r = run(&late);
        let (out, err) = text(&r);
        assert_eq!(out, "main done\n");
        assert_eq!(r.status.code(), Some(128 + 6), "{err}");
        assert!(err.contains("signal 6 (SIGABRT)"), "{err}");
    }
}

/// A listening executor (`kiln executor --listen`, as `kiln-executor --listen`): over a Unix
/// socket the program gets kiln's own stdio; over TCP (with a token) its output is forwarded;
/// its exit status comes back either way.
#[test]
fn connect_to_a_listening_executor() {
    use std::io::BufRead;
    let d = workdir("listen");
    let o = cc(
        &d,
        "hello",
        "#include <stdio.h>\n#include <stdlib.h>\nstatic void bye(void){puts(\"bye\");}\n\
         int main(int c,char**v){atexit(bye);printf(\"hi %s\\n\",v[1]);fprintf(stderr,\"err line\\n\");return 5;}\n",
        &[],
    );
    let token = d.join("token");
    std::fs::write(&token, "0123456789abcdef-test-token\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sock = d.join("exec.sock");
    let _ = std::fs::remove_file(&sock);
    let unix_at = format!("unix:{}", sock.display());
    for (listen_at, memory) in [
        (unix_at.as_str(), "shared"),
        (unix_at.as_str(), "copy"),
        ("tcp:127.0.0.1:0", "copy"),
    ] {
        let mut l = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["executor", "--listen", listen_at, "--once", "--token-file"])
            .arg(&token)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufReader::new(l.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        let at = ready
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("listener said {ready:?}"))
            .to_string();
        let tok = token.to_str().unwrap();
        let r = kiln(&[
            "run",
            "--executor",
            &format!("connect={at}"),
            "--memory",
            memory,
            "--token-file",
            tok,
            &o,
            "--",
            "there",
        ]);
        let (out, err) = text(&r);
        assert_eq!(out, "hi there\nbye\n", "{at} {memory}: {err}");
        assert!(err.contains("err line"), "{at}: stderr {err:?}");
        assert_eq!(r.status.code(), Some(5), "{at} {memory}: {err}");
        assert!(
            l.wait().unwrap().success(),
            "{at}: the --once listener failed"
        );
    }
}

/// Compile C++ `src` with `c++ -c` into `dir/name.o`.
fn cxx(dir: &Path, name: &str, src: &str) -> String {
    let s = dir.join(format!("{name}.cc"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&s, src).unwrap();
    let st = Command::new("c++")
        .args(["-c", "-O1", "-o"])
        .arg(&o)
        .arg(&s)
        .status()
        .expect("c++ is required");
    assert!(st.success(), "c++ failed on {name}");
    o.display().to_string()
}

fn kiln_logged(level: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_LOG", level)
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .expect("run kiln")
}

const CXX_PROGRAM: &str = r#"#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>
int main(int argc, char **) {
    std::vector<std::string> v{"a", "b"};
    try {
        if (argc > 0) throw std::runtime_error("thrown");
    } catch (const std::exception &e) {
        std::cout << e.what() << " " << v.size() << std::endl;
    }
    return 7;
}
"#;

/// A C++ object runs without naming its runtime, as `g++ prog.o` links it: kiln sees the
/// references and adds `-lstdc++ -lm -lgcc_s` (saying so under KILN_LOG=info), in process and
/// out of process; `--no-cxx-runtime` turns that off.
#[test]
fn cxx_objects_get_their_runtime() {
    let d = workdir("cxxrt");
    let o = cxx(&d, "prog", CXX_PROGRAM);
    for executor in ["inprocess", "spawn"] {
        let r = kiln_logged("info", &["run", "--executor", executor, &o]);
        let (out, err) = text(&r);
        assert_eq!(r.status.code(), Some(7), "{executor}: {err}");
        assert_eq!(out, "thrown 2\n", "{executor}");
        assert!(
            err.contains("prog.o references the C++ runtime (")
                && err.contains("linking -lstdc++ -lm -lgcc_s as g++ does"),
            "{executor}: {err}"
        );
    }
    // Named already: not named twice.
    let r = kiln_logged("info", &["run", &o, "-lstdc++"]);
    let (_, err) = text(&r);
    assert_eq!(r.status.code(), Some(7), "{err}");
    assert!(err.contains("linking -lm -lgcc_s as g++ does"), "{err}");
    let r = kiln(&["run", "--no-cxx-runtime", &o]);
    let (out, err) = text(&r);
    assert_eq!(r.status.code(), Some(125), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("undefined symbols") && err.contains("__cxa_"),
        "{err}"
    );
}

/// C code gets no C++ runtime, even when it calls the `__cxa_` functions that glibc defines.
#[test]
fn c_objects_get_no_cxx_runtime() {
    let d = workdir("crt");
    let o = cc(
        &d,
        "c",
        "#include <stdio.h>\nextern int __cxa_atexit(void (*)(void *), void *, void *);\n\
         extern void *__dso_handle;\nstatic void bye(void *p){ (void)p; puts(\"bye\"); }\n\
         int main(void){ __cxa_atexit(bye, 0, &__dso_handle); return 5; }",
        &[],
    );
    let src = d.join("s.c");
    std::fs::write(&src, "int main(void){ return 6; }").unwrap();
    let src = src.display().to_string();
    for (input, status) in [(&o, 5), (&src, 6)] {
        let r = kiln_logged("debug", &["run", input]);
        let (_, err) = text(&r);
        assert_eq!(r.status.code(), Some(status), "{err}");
        assert!(
            !err.contains("C++") && !err.contains("-lstdc++"),
            "{input}: {err}"
        );
    }
}

/// The references may come from an archive member, given as a file or with -l, the rest of the
/// program being C; C++ sources get the runtime as `c++` gives it.
#[test]
fn cxx_runtime_for_archive_members_and_sources() {
    let d = workdir("cxxar");
    let part = cxx(
        &d,
        "part",
        "#include <string>\n#include <stdexcept>\nextern \"C\" int part_len(const char *s) {\n\
         try { std::string t(s); if (t.empty()) throw std::invalid_argument(\"e\"); return (int)t.size(); }\n\
         catch (const std::exception &) { return -1; } }\n",
    );
    let ar = d.join("libcxxpart.a");
    let st = Command::new("ar")
        .arg("rcs")
        .arg(&ar)
        .arg(&part)
        .status()
        .expect("ar is required");
    assert!(st.success());
    let main = cc(
        &d,
        "cmain",
        "extern int part_len(const char *);\nint main(void){ return part_len(\"four\") * 10 + part_len(\"\") + 1; }",
        &[],
    );
    let ar = ar.display().to_string();
    let dir = d.display().to_string();
    for args in [
        vec!["run", &main, &ar],
        vec!["run", &main, "-L", &dir, "-lcxxpart"],
    ] {
        let r = kiln_logged("info", &args);
        let (_, err) = text(&r);
        assert_eq!(r.status.code(), Some(40), "{args:?}: {err}");
        assert!(
            err.contains("libcxxpart.a(part.o) references the C++ runtime"),
            "{args:?}: {err}"
        );
    }
    let src = d.join("prog.cc");
    std::fs::write(&src, CXX_PROGRAM).unwrap();
    let src = src.display().to_string();
    let r = kiln_logged("info", &["run", &src]);
    let (out, err) = text(&r);
    assert_eq!(r.status.code(), Some(7), "{err}");
    assert_eq!(out, "thrown 2\n");
    assert!(err.contains("prog.cc is C++: linking -lstdc++"), "{err}");
}

/// `--define` cannot give an address to a symbol the linker defines for the unit: the link
/// would use its own, so the definition would be silently ignored.
#[test]
fn define_refuses_linker_defined_symbols() {
    let d = workdir("defld");
    let o = cc(&d, "m", "int main(void){ return 0; }", &[]);
    for name in ["_GLOBAL_OFFSET_TABLE_", "__dso_handle"] {
        let def = format!("{name}=0x1000");
        let r = kiln(&["run", "--noexec", "--define", &def, &o]);
        let (_, err) = text(&r);
        assert_eq!(r.status.code(), Some(125), "{err}");
        assert!(
            err.contains(&format!("`{name}` is defined by the linker")),
            "{err}"
        );
    }
}
