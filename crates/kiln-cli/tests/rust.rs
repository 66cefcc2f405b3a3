//! Rust code through kiln: a staticlib (the whole std, 300+ archive members) built by rustc,
//! linked and run by kiln, compared with the same program built natively by rustc.

use std::path::Path;
use std::process::Command;

/// In process, and out of process with shared and with copied memory.
const MODES: [&[&str]; 3] = [
    &[],
    &["--executor", "spawn", "--memory", "shared"],
    &["--executor", "spawn", "--memory", "copy"],
];

#[test]
fn rust_staticlib_runs_like_its_native_build() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/programs/rust/prog.rs");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rust-prog");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(&src).unwrap();
    let lib_src = dir.join("lib.rs");
    std::fs::write(
        &lib_src,
        text.replace(
            "fn main() {",
            "#[no_mangle]\npub extern \"C\" fn rust_main() -> i32 {",
        ),
    )
    .unwrap();
    let rustc = |args: &[&str]| {
        let st = Command::new("rustc")
            .args(args)
            .status()
            .expect("rustc is required for this test");
        assert!(st.success(), "rustc {args:?} failed");
    };
    let native = dir.join("native");
    let lib = dir.join("libprog.a");
    rustc(&["-O", "-o", native.to_str().unwrap(), src.to_str().unwrap()]);
    rustc(&[
        "-O",
        "--crate-type=staticlib",
        "-o",
        lib.to_str().unwrap(),
        lib_src.to_str().unwrap(),
    ]);
    let n = Command::new(&native)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert_eq!(n.status.code(), Some(3));
    for mode in MODES {
        let k = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("run")
            .args(mode)
            .args(["--entry", "rust_main", lib.to_str().unwrap()])
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let (ns, ks) = (
            String::from_utf8_lossy(&n.stdout),
            String::from_utf8_lossy(&k.stdout),
        );
        assert_eq!(
            ks,
            ns,
            "{mode:?}: stdout differs; kiln stderr:\n{}",
            String::from_utf8_lossy(&k.stderr)
        );
        assert_eq!(
            k.status.code(),
            n.status.code(),
            "{mode:?}: exit status differs"
        );
        // The panic message goes to stderr in both.
        assert!(
            String::from_utf8_lossy(&k.stderr).contains("boom 4"),
            "{mode:?}: no panic message on stderr"
        );
    }
}

/// `rustc --emit=obj` plus the sysroot's rlibs (std and its dependencies, with the unwinding
/// panic runtime as a native link picks): kiln writes the allocator shim rustc would have.
#[test]
fn rustc_object_with_sysroot_rlibs_runs_like_its_native_build() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/programs/rust/prog.rs");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rust-obj");
    std::fs::create_dir_all(&dir).unwrap();
    let obj = dir.join("prog.o");
    let native = dir.join("native");
    for args in [
        vec![
            "-O",
            "--emit=obj",
            "-o",
            obj.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
        vec!["-O", "-o", native.to_str().unwrap(), src.to_str().unwrap()],
    ] {
        let st = Command::new("rustc")
            .args(&args)
            .status()
            .expect("rustc is required");
        assert!(st.success(), "rustc {args:?} failed");
    }
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let libdir = Path::new(String::from_utf8_lossy(&sysroot.stdout).trim())
        .join("lib/rustlib/x86_64-unknown-linux-gnu/lib");
    let mut rlibs: Vec<String> = std::fs::read_dir(&libdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rlib"))
        .filter(|p| !p.to_string_lossy().contains("panic_abort"))
        .map(|p| p.display().to_string())
        .collect();
    rlibs.sort();
    assert!(rlibs.len() > 10, "the sysroot's rlibs: {rlibs:?}");
    let n = Command::new(&native)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    for mode in MODES {
        let mut args = vec!["run".to_string()];
        args.extend(mode.iter().map(|m| m.to_string()));
        args.push(obj.display().to_string());
        args.extend(rlibs.iter().cloned());
        let k = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&k.stdout),
            String::from_utf8_lossy(&n.stdout),
            "{mode:?}: kiln stderr:\n{}",
            String::from_utf8_lossy(&k.stderr)
        );
        assert_eq!(k.status.code(), n.status.code(), "{mode:?}");
    }
}
