//! kiln.h is written by hand, and this test keeps it true to the Rust side. Why not generate
//! it with cbindgen: the header is what a C programmer reads, so its order (by task, not by
//! Rust file), its prose on errors and threads, and its section for what is coming are worth
//! writing; and cbindgen would add a build dependency (syn, serde, toml, ...) to every build
//! of libkiln for what a 400-line test checks. The check: every exported function, callback type and constant
//! of `src/ffi/` must appear in the header with the same C types and values, and the header
//! must declare nothing more. It also compiles the header as C99 and C++11 with warnings as
//! errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    crate_dir().join("include/kiln.h")
}

/// A C function type: return type and parameter types, each as normalized tokens.
#[derive(Debug, PartialEq, Eq)]
struct Signature {
    ret: String,
    params: Vec<String>,
}

#[derive(Debug, Default)]
struct Api {
    functions: BTreeMap<String, Signature>,
    callbacks: BTreeMap<String, Signature>,
    /// Number types (`kiln_unit_t` is `uint64_t`).
    typedefs: BTreeMap<String, String>,
    constants: BTreeMap<String, u64>,
    /// Structures C reads and writes: their fields in order, (name, C type).
    structs: BTreeMap<String, Vec<(String, String)>>,
}

/// Types as tokens (identifiers and `*`) separated by one space: `const char *const *`
/// becomes `const char * const *`.
fn normalize(t: &str) -> String {
    let spaced = t.replace('*', " * ");
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The C spelling of a Rust FFI type.
fn rust_to_c(t: &str) -> String {
    let t = t.trim();
    if let Some(rest) = t.strip_prefix("*mut ") {
        return format!("{} *", rust_to_c(rest));
    }
    if let Some(rest) = t.strip_prefix("*const ") {
        let inner = rust_to_c(rest);
        return if rest.trim_start().starts_with('*') {
            format!("{inner} const *")
        } else {
            format!("const {inner} *")
        };
    }
    let base = match t {
        "c_char" => "char",
        "c_void" => "void",
        "u8" => "uint8_t",
        "u32" => "uint32_t",
        "u64" => "uint64_t",
        "i32" => "int32_t",
        "i64" => "int64_t",
        "usize" => "size_t",
        "bool" => "bool",
        "()" => "void",
        other if other.starts_with("kiln_") => other,
        other => panic!("the header check does not know the Rust type {other:?}"),
    };
    base.to_string()
}

/// The text between the parenthesis at `open` and its partner, and the index after it.
fn parenthesized(s: &str, open: usize) -> (&str, usize) {
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return (&s[open + 1..open + i], open + i + 1);
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after {:?}", &s[open..open + 40]);
}

/// Split a parameter list at its top-level commas.
fn split_params(list: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in list.char_indices() {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' if !list[..i].ends_with('-') => depth -= 1,
            ',' if depth == 0 => {
                out.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&list[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// A Rust `(name: Type, ...) -> Ret` as a C signature.
fn rust_signature(params: &str, ret: Option<&str>) -> Signature {
    Signature {
        ret: normalize(&rust_to_c(ret.unwrap_or("()"))),
        params: split_params(params)
            .into_iter()
            .map(|p| {
                let (_, ty) = p.split_once(':').expect("a Rust parameter has a type");
                normalize(&rust_to_c(ty))
            })
            .collect(),
    }
}

/// The return type after a parameter list: `-> T` up to one of `stop`.
fn return_type<'a>(s: &'a str, stop: &[char]) -> Option<&'a str> {
    let rest = s.trim_start().strip_prefix("->")?;
    Some(rest[..rest.find(stop).expect("return type ends")].trim())
}

fn parse_rust(src: &str, api: &mut Api) {
    // Exported functions: `#[no_mangle] pub [unsafe] extern "C" fn NAME(...) [-> T] {`.
    for (at, _) in src.match_indices("#[no_mangle]") {
        let rest = &src[at..];
        let fn_at = rest.find("fn ").expect("#[no_mangle] on a function");
        let name_start = fn_at + 3;
        let open = name_start + rest[name_start..].find('(').expect("parameters");
        let name = rest[name_start..open].trim().to_string();
        let (params, after) = parenthesized(rest, open);
        let sig = rust_signature(params, return_type(&rest[after..], &['{']));
        assert!(
            api.functions.insert(name.clone(), sig).is_none(),
            "{name} twice"
        );
    }
    // Callback types: `pub type NAME = Option<unsafe extern "C" fn(...) -> T,>;`.
    for (at, _) in src.match_indices("pub type ") {
        let rest = &src[at + "pub type ".len()..];
        let (name, def) = rest.split_once('=').expect("a type alias");
        let def_end = def.find(';').expect("alias ends");
        let def = &def[..def_end];
        if let Some(fn_at) = def.find("extern \"C\" fn") {
            let open = fn_at + def[fn_at..].find('(').expect("parameters");
            let (params, after) = parenthesized(def, open);
            // `Option<unsafe extern "C" fn(..) -> T>` ends at `>` (or `,>` as rustfmt wraps it).
            let ret = return_type(&def[after..], &[',', '>']);
            api.callbacks
                .insert(name.trim().to_string(), rust_signature(params, ret));
        } else {
            api.typedefs
                .insert(name.trim().to_string(), normalize(&rust_to_c(def)));
        }
    }
    // Structures: `#[repr(C)] ... pub struct NAME { pub field: T, ... }` (the opaque handle
    // types have no public field and are left out).
    for (at, _) in src.match_indices("pub struct ") {
        let rest = &src[at + "pub struct ".len()..];
        let (name, body) = rest.split_once('{').expect("a struct with a body");
        let body = &body[..body.find('}').expect("struct ends")];
        let fields: Vec<(String, String)> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub "))
            .map(|f| {
                let (n, t) = f.split_once(':').expect("a field has a type");
                (
                    n.trim().to_string(),
                    normalize(&rust_to_c(t.trim_end_matches(','))),
                )
            })
            .collect();
        if !fields.is_empty() {
            api.structs.insert(name.trim().to_string(), fields);
        }
    }
    // Constants: `pub const KILN_NAME: T = VALUE;`.
    for line in src.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const KILN_") else {
            continue;
        };
        let (name, rest) = rest.split_once(':').expect("a typed constant");
        let value = rest.split_once('=').expect("a value").1;
        let value: u64 = value
            .trim()
            .trim_end_matches(';')
            .parse()
            .expect("a number");
        api.constants.insert(format!("KILN_{name}"), value);
    }
}

/// The header without comments, preprocessor lines and `extern "C"` braces.
fn clean_header(h: &str) -> String {
    let mut out = String::new();
    let mut rest = h;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("*/").expect("comment ends");
        rest = &rest[i + end + 2..];
    }
    out.push_str(rest);
    out.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("extern \"C\" {", "")
}

/// A C parameter's type: the declaration without its name (`void` alone is no parameter).
fn c_param_type(p: &str) -> String {
    let p = p.trim();
    let name_start = p
        .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    assert!(name_start > 0, "parameter {p:?} has no name");
    normalize(&p[..name_start])
}

fn c_signature(ret: &str, params: &str) -> Signature {
    let params = params.trim();
    Signature {
        ret: normalize(ret),
        params: if params == "void" {
            Vec::new()
        } else {
            split_params(params).into_iter().map(c_param_type).collect()
        },
    }
}

/// The header's `typedef struct NAME { TYPE field; ... } NAME;` definitions.
fn parse_header_structs(text: &str, api: &mut Api) {
    for (at, _) in text.match_indices("typedef struct ") {
        let rest = &text[at + "typedef struct ".len()..];
        let Some((name, body)) = rest.split_once('{') else {
            continue;
        };
        if name.contains(';') {
            continue; // an opaque handle: `typedef struct NAME NAME;`
        }
        let (body, after) = body.split_once('}').expect("struct ends");
        let alias = after[..after.find(';').expect("typedef ends")].trim();
        assert_eq!(alias, name.trim(), "typedef struct {name} names itself");
        let fields = body
            .split(';')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| {
                let f = f.split_whitespace().collect::<Vec<_>>().join(" ");
                let start = f
                    .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map_or(0, |i| i + 1);
                (f[start..].to_string(), normalize(&f[..start]))
            })
            .collect();
        api.structs.insert(name.trim().to_string(), fields);
    }
}

fn parse_header(h: &str) -> Api {
    let text = clean_header(h);
    let mut api = Api::default();
    parse_header_structs(&text, &mut api);
    for stmt in text.split([';', '{', '}']) {
        let stmt = stmt.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(def) = stmt.strip_prefix("typedef ") {
            // `typedef R (*NAME)(PARAMS)`; other typedefs are the handle and number types.
            if let Some(star) = def.find("(*") {
                let close = star + def[star..].find(')').expect("name ends");
                let name = def[star + 2..close].trim().to_string();
                let open = close + def[close..].find('(').expect("parameters");
                let (params, _) = parenthesized(def, open);
                api.callbacks
                    .insert(name, c_signature(&def[..star], params));
            } else if !def.starts_with("struct ") {
                let (ty, name) = def.rsplit_once(' ').expect("typedef TYPE NAME");
                api.typedefs.insert(name.to_string(), normalize(ty));
            }
            continue;
        }
        if stmt.contains('=') {
            // Enumerators: `NAME = VALUE` separated by commas.
            for e in stmt.split(',') {
                if let Some((name, value)) = e.split_once('=') {
                    let name = name.trim();
                    if name.starts_with("KILN_") {
                        let value = value.trim().parse().expect("a numeric enumerator");
                        assert!(api.constants.insert(name.to_string(), value).is_none());
                    }
                }
            }
            continue;
        }
        if let Some(open) = stmt.find('(') {
            let head = &stmt[..open];
            let name_start = head.rfind([' ', '*']).map_or(0, |i| i + 1);
            let name = head[name_start..].trim().to_string();
            let (params, _) = parenthesized(&stmt, open);
            let sig = c_signature(&head[..name_start], params);
            assert!(
                api.functions.insert(name.clone(), sig).is_none(),
                "{name} twice"
            );
        }
    }
    api
}

fn rust_api() -> Api {
    let mut api = Api::default();
    let dir = crate_dir().join("src/ffi");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for f in files {
        parse_rust(&std::fs::read_to_string(&f).unwrap(), &mut api);
    }
    api
}

fn compare<T: std::fmt::Debug + PartialEq>(
    what: &str,
    rust: &BTreeMap<String, T>,
    c: &BTreeMap<String, T>,
    problems: &mut Vec<String>,
) {
    for (name, r) in rust {
        match c.get(name) {
            None => problems.push(format!("{what} {name} is in Rust but not in kiln.h")),
            Some(h) if h != r => {
                problems.push(format!("{what} {name}: Rust says {r:?}, kiln.h says {h:?}"))
            }
            Some(_) => {}
        }
    }
    for name in c.keys().filter(|n| !rust.contains_key(*n)) {
        problems.push(format!("{what} {name} is in kiln.h but not in Rust"));
    }
}

#[test]
fn header_matches_the_rust_side() {
    let rust = rust_api();
    let header = parse_header(&std::fs::read_to_string(header_path()).unwrap());
    // The parsers found the API (a parser that finds nothing would compare nothing).
    assert!(
        rust.functions.len() >= 45,
        "{} functions",
        rust.functions.len()
    );
    assert!(
        rust.constants.len() >= 60,
        "{} constants",
        rust.constants.len()
    );
    assert_eq!(rust.callbacks.len(), 5, "{:?}", rust.callbacks.keys());
    assert_eq!(rust.typedefs.len(), 12, "{:?}", rust.typedefs);
    assert!(rust.structs.len() >= 14, "{:?}", rust.structs.keys());
    let mut problems = Vec::new();
    compare(
        "function",
        &rust.functions,
        &header.functions,
        &mut problems,
    );
    compare(
        "callback type",
        &rust.callbacks,
        &header.callbacks,
        &mut problems,
    );
    compare("type", &rust.typedefs, &header.typedefs, &mut problems);
    compare(
        "constant",
        &rust.constants,
        &header.constants,
        &mut problems,
    );
    compare("struct", &rust.structs, &header.structs, &mut problems);
    assert!(
        problems.is_empty(),
        "kiln.h and src/ffi differ:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_a_drift() {
    // The same comparison on a header with one parameter type changed must fail.
    let text = std::fs::read_to_string(header_path()).unwrap();
    let drifted = text.replace(
        "kiln_error_t *kiln_session_define(kiln_session_t *s, const char *name, uint64_t addr);",
        "kiln_error_t *kiln_session_define(kiln_session_t *s, const char *name, uint32_t addr);",
    );
    assert_ne!(drifted, text, "the test's anchor is gone from kiln.h");
    let rust = rust_api();
    let header = parse_header(&drifted);
    assert_ne!(
        rust.functions["kiln_session_define"],
        header.functions["kiln_session_define"]
    );
}

fn compile_header(compiler: &str, args: &[&str], source: &str, dir: &Path) {
    let file = dir.join(source);
    std::fs::write(
        &file,
        "#include <kiln.h>\nint main(void) { return kiln_version() == 0; }\n",
    )
    .unwrap();
    let out = Command::new(compiler)
        .args(args)
        .arg("-fsyntax-only")
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(
        out.status.success(),
        "{compiler} {args:?} rejects kiln.h:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_checker_sees_a_struct_drift() {
    // A field's type changed, and two fields swapped: both are drifts.
    let text = std::fs::read_to_string(header_path()).unwrap();
    let anchor = "    uint32_t width;\n    /* The value it holds";
    assert!(
        text.contains(anchor),
        "the test's anchor is gone from kiln.h"
    );
    let retyped = text.replace(anchor, "    uint64_t width;\n    /* The value it holds");
    let rust = rust_api();
    assert_ne!(
        rust.structs["kiln_heap_ref_t"],
        parse_header(&retyped).structs["kiln_heap_ref_t"]
    );
    let swapped = text.replace(
        "    uint64_t base;\n    uint64_t size;",
        "    uint64_t size;\n    uint64_t base;",
    );
    assert_ne!(
        swapped, text,
        "the test's second anchor is gone from kiln.h"
    );
    assert_ne!(
        rust.structs["kiln_zone_info_t"],
        parse_header(&swapped).structs["kiln_zone_info_t"]
    );
    assert_eq!(
        rust.structs["kiln_zone_info_t"],
        parse_header(&text).structs["kiln_zone_info_t"]
    );
}

#[test]
fn header_compiles_as_c99_and_cxx11_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let strict = ["-Wall", "-Wextra", "-Werror", "-pedantic"];
    compile_header(
        "gcc",
        &[&["-std=c99"][..], &strict].concat(),
        "c99.c",
        dir.path(),
    );
    compile_header(
        "g++",
        &[&["-std=c++11"][..], &strict].concat(),
        "cxx.cpp",
        dir.path(),
    );
}
