//! Misuse and malformed input give errors that say what is wrong, never a panic or a crash; host
//! names resolve in JITBuilder's order.
#![allow(unsafe_code)] // calling finalized code

mod common;

use common::{call, define, sig};
use cranelift_codegen::binemit::Reloc;
use cranelift_codegen::ir::{types::I64, InstBuilder};
use cranelift_module::{
    default_libcall_names, DataDescription, Linkage, Module, ModuleError, ModuleReloc,
    ModuleRelocTarget,
};
use kiln_cranelift::{Error, KilnBuilder, KilnModule};

fn module() -> KilnModule {
    KilnModule::new(KilnBuilder::new(default_libcall_names()).unwrap())
}

fn text(e: ModuleError) -> String {
    text_ref(&e)
}

fn text_ref(e: &ModuleError) -> String {
    format!(
        "{e}: {}",
        std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    )
}

#[test]
fn unresolved_and_undefined_names_are_named() {
    let mut m = module();
    let missing = m
        .declare_function("no_such_function_anywhere", Linkage::Import, &sig(&m, 0))
        .unwrap();
    define(&mut m, "caller", Linkage::Export, 0, |m, b, _| {
        call(m, b, missing, &[])
    });
    let e = text(m.finalize_definitions().unwrap_err());
    assert!(
        e.contains("cannot resolve no_such_function_anywhere (referenced by caller)"),
        "{e}"
    );

    // A module function declared but not defined: an error now, and fine once it is defined
    // (the failed batch stays pending).
    let mut m = module();
    let later = m
        .declare_function("later", Linkage::Export, &sig(&m, 1))
        .unwrap();
    let user = define(&mut m, "user", Linkage::Export, 1, |m, b, p| {
        call(m, b, later, &[p[0]])
    });
    let e = text(m.finalize_definitions().unwrap_err());
    assert!(
        e.contains("user refers to later, which is declared but not defined"),
        "{e}"
    );
    assert!(matches!(
        m.function_address(user),
        Err(Error::NotFinalized(_))
    ));
    define(&mut m, "later", Linkage::Export, 1, |_, b, p| {
        b.ins().iadd_imm_s(p[0], 5)
    });
    m.finalize_definitions().unwrap();
    let f: extern "C" fn(i64) -> i64 =
        unsafe { std::mem::transmute(m.get_finalized_function(user)) };
    assert_eq!(f(1), 6);
}

#[test]
fn definitions_are_checked() {
    let mut m = module();
    let f = define(&mut m, "f", Linkage::Export, 0, |_, b, _| {
        b.ins().iconst(I64, 1)
    });
    let mut ctx = m.make_context();
    ctx.func.signature = sig(&m, 0);
    assert!(matches!(
        m.define_function_bytes(f, 16, &[0xc3], &[]),
        Err(ModuleError::DuplicateDefinition(n)) if n == "f"
    ));
    let imp = m
        .declare_function("imported", Linkage::Import, &sig(&m, 0))
        .unwrap();
    assert!(matches!(
        m.define_function_bytes(imp, 16, &[0xc3], &[]),
        Err(ModuleError::InvalidImportDefinition(_))
    ));
    let g = m
        .declare_function("g", Linkage::Export, &sig(&m, 0))
        .unwrap();
    let reloc = |kind, offset, name| ModuleReloc {
        offset,
        kind,
        name,
        addend: -4,
    };
    let cases: Vec<(Vec<ModuleReloc>, u64, &str)> = vec![
        (
            vec![reloc(
                Reloc::X86CallPCRel4,
                30,
                ModuleRelocTarget::user(0, f.as_u32()),
            )],
            16,
            "outside the definition",
        ),
        (
            vec![reloc(
                Reloc::Arm64Call,
                1,
                ModuleRelocTarget::user(0, f.as_u32()),
            )],
            16,
            "not an x86-64 ELF relocation",
        ),
        (
            vec![reloc(
                Reloc::X86SecRel,
                1,
                ModuleRelocTarget::user(0, f.as_u32()),
            )],
            16,
            "COFF",
        ),
        (
            vec![reloc(
                Reloc::X86CallPCRel4,
                1,
                ModuleRelocTarget::user(0, 999),
            )],
            16,
            "Undeclared",
        ),
        (
            vec![reloc(
                Reloc::X86CallPCRel4,
                1,
                ModuleRelocTarget::user(7, 0),
            )],
            16,
            "Undeclared",
        ),
        (vec![], 3, "not a power of two"),
    ];
    for (relocs, align, want) in cases {
        let code = [0xe8, 0, 0, 0, 0, 0xc3];
        let e = match m.define_function_bytes(g, align, &code, &relocs) {
            Err(e) => e,
            Ok(()) => {
                let e = m.finalize_definitions().unwrap_err();
                // Drop the bad definition so the next case can define g again.
                let mut fresh = module();
                std::mem::swap(&mut m, &mut fresh);
                let f2 = define(&mut m, "f", Linkage::Export, 0, |_, b, _| {
                    b.ins().iconst(I64, 1)
                });
                assert_eq!(f2, f);
                m.declare_function("imported", Linkage::Import, &sig(&m, 0))
                    .unwrap();
                m.declare_function("g", Linkage::Export, &sig(&m, 0))
                    .unwrap();
                e
            }
        };
        let e = format!("{:?} {}", e, text_ref(&e));
        assert!(e.contains(want), "{want}: {e}");
    }
    let d = m
        .declare_data("nothing", Linkage::Export, false, false)
        .unwrap();
    let e = text(m.define_data(d, &DataDescription::new()).unwrap_err());
    assert!(e.contains("has no contents"), "{e}");
    // Not finalized: an error from function_address, a panic (as in JITModule) from
    // get_finalized_function.
    assert!(matches!(m.function_address(g), Err(Error::NotFinalized(n)) if n == "g"));
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // the panic is expected
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.get_finalized_function(g)));
    std::panic::set_hook(hook);
    assert!(r.is_err());
}

extern "C" fn my_labs(_: i64) -> i64 {
    -1
}
extern "C" fn my_abs_sym(_: i64) -> i64 {
    -2
}

#[test]
fn host_names_resolve_in_jit_builder_order() {
    let mut b = KilnBuilder::new(default_libcall_names()).unwrap();
    // A lookup function wins over the process (libc's labs)...
    b.symbol_lookup_fn(Box::new(|n| (n == "labs").then_some(my_labs as *const u8)));
    // ...and a symbol over a lookup function.
    b.symbol_lookup_fn(Box::new(|n| {
        (n == "abs_sym").then_some(my_labs as *const u8)
    }));
    b.symbol("abs_sym", my_abs_sym as *const u8);
    let mut m = KilnModule::new(b);
    let labs = m
        .declare_function("labs", Linkage::Import, &sig(&m, 1))
        .unwrap();
    let abs_sym = m
        .declare_function("abs_sym", Linkage::Import, &sig(&m, 1))
        .unwrap();
    let llabs = m
        .declare_function("llabs", Linkage::Import, &sig(&m, 1))
        .unwrap();
    // Preemptible and defined nowhere: null, as in cranelift-jit.
    let weak = m
        .declare_function("weak_nowhere", Linkage::Preemptible, &sig(&m, 0))
        .unwrap();
    let f = define(&mut m, "f", Linkage::Export, 1, |m, b, p| {
        let a = call(m, b, labs, &[p[0]]);
        let c = call(m, b, abs_sym, &[p[0]]);
        let d = call(m, b, llabs, &[p[0]]); // from the process
        let w = m.declare_func_in_func(weak, b.func);
        let wa = b.ins().func_addr(I64, w);
        let s = b.ins().iadd(a, c);
        let s = b.ins().imul_imm_s(s, 1000);
        let s = b.ins().iadd(s, d);
        b.ins().iadd(s, wa)
    });
    m.finalize_definitions().unwrap();
    let f: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(m.get_finalized_function(f)) };
    assert_eq!(f(-9), (-1 - 2) * 1000 + 9);
}

/// Host names are defined in the session as `[host]NAME`: a module cannot take such a name, a
/// module name that is also a host name binds to the module's definition, and a preemptible
/// name that was null for an earlier unit is the module's definition for later ones.
#[test]
fn host_names_never_shadow_module_names() {
    let mut m = module();
    let e = text(
        m.declare_function("[host]labs", Linkage::Export, &sig(&m, 1))
            .unwrap_err(),
    );
    assert!(e.contains("[host]"), "{e}");
    assert!(m
        .declare_data("[host]x", Linkage::Export, true, false)
        .is_err());

    // `labs` is also libc's: the module's own definition wins for its callers.
    let labs = define(&mut m, "labs", Linkage::Export, 1, |_, b, p| {
        b.ins().iadd_imm_s(p[0], 100)
    });
    let weak = m
        .declare_function("weak_later", Linkage::Preemptible, &sig(&m, 0))
        .unwrap();
    let early = define(&mut m, "early", Linkage::Export, 1, |m, b, p| {
        let l = call(m, b, labs, &[p[0]]);
        let w = m.declare_func_in_func(weak, b.func);
        let wa = b.ins().func_addr(I64, w);
        b.ins().iadd(l, wa)
    });
    m.finalize_definitions().unwrap();
    let early: extern "C" fn(i64) -> i64 =
        unsafe { std::mem::transmute(m.get_finalized_function(early)) };
    assert_eq!(early(-9), 91, "labs is the module's, weak_later null");

    define(&mut m, "weak_later", Linkage::Preemptible, 0, |_, b, _| {
        b.ins().iconst(I64, 42)
    });
    let late = define(&mut m, "late", Linkage::Export, 0, |m, b, _| {
        call(m, b, weak, &[])
    });
    m.finalize_definitions().unwrap();
    let late: extern "C" fn() -> i64 =
        unsafe { std::mem::transmute(m.get_finalized_function(late)) };
    assert_eq!(late(), 42, "a later unit binds to the definition");
    assert_eq!(early(-9), 91, "the earlier unit keeps its null");
}

/// `define_function_bytes` with relocations of every x86-64 kind at every offset and with odd
/// addends: each is linked or refused, never a panic. (The code is not run.)
#[test]
fn hostile_relocations_never_panic() {
    let kinds = [
        Reloc::Abs4,
        Reloc::Abs8,
        Reloc::X86PCRel4,
        Reloc::X86CallPCRel4,
        Reloc::X86CallPLTRel4,
        Reloc::X86GOTPCRel4,
        Reloc::ElfX86_64TlsGd,
        Reloc::X86SecRel,
        Reloc::Arm64Call,
    ];
    let mut m = module();
    let target = define(&mut m, "target", Linkage::Export, 0, |_, b, _| {
        b.ins().iconst(I64, 1)
    });
    let tls = m.declare_data("tls", Linkage::Export, true, true).unwrap();
    m.finalize_definitions().unwrap();
    let (mut linked, mut refused) = (0, 0);
    let mut n = 0u32;
    for kind in kinds {
        for offset in [0u32, 1, 3, 8, 12, 13, 16, u32::MAX] {
            for addend in [0i64, -4, i64::MAX, i64::MIN, 1 << 40] {
                for name in [
                    ModuleRelocTarget::user(0, target.as_u32()),
                    ModuleRelocTarget::user(1, tls.as_u32()),
                    ModuleRelocTarget::LibCall(cranelift_codegen::ir::LibCall::CeilF64),
                    ModuleRelocTarget::KnownSymbol(
                        cranelift_codegen::ir::KnownSymbol::ElfGlobalOffsetTable,
                    ),
                    ModuleRelocTarget::KnownSymbol(
                        cranelift_codegen::ir::KnownSymbol::CoffTlsIndex,
                    ),
                ] {
                    n += 1;
                    let id = m
                        .declare_function(&format!("h{n}"), Linkage::Export, &sig(&m, 0))
                        .unwrap();
                    let code = [
                        0xe8, 0, 0, 0, 0, 0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3, 0, 0, 0,
                    ];
                    let r = ModuleReloc {
                        offset,
                        kind,
                        name,
                        addend,
                    };
                    let ok = m.define_function_bytes(id, 16, &code, &[r]).is_ok()
                        && m.finalize_definitions().is_ok();
                    if ok {
                        linked += 1;
                        m.free_function(id).unwrap();
                    } else {
                        refused += 1;
                        m = module_with_targets();
                    }
                }
            }
        }
    }
    println!("{linked} linked, {refused} refused");
    assert!(linked > 0 && refused > 0);
}

/// A fresh module with `target` and `tls` (a refused definition stays pending in the old one).
fn module_with_targets() -> KilnModule {
    let mut m = module();
    define(&mut m, "target", Linkage::Export, 0, |_, b, _| {
        b.ins().iconst(I64, 1)
    });
    m.declare_data("tls", Linkage::Export, true, true).unwrap();
    m.finalize_definitions().unwrap();
    m
}
