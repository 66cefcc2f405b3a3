//! Compaction with the rest of kiln-jit: inline caches and PICs whose targets (and stubs) move,
//! units retired by a redefinition (pinned until reclaimed), lazy functions whose code and
//! callers move, and redefinition of a lazy function — each in process and with the code in a
//! spawned executor, in shared and in copied memory.
//!
//! This test program has a main of its own (`harness = false`): started with `--kiln-executor`
//! it serves as the executor the remote cases spawn (`tests/support`). Arguments: a substring of
//! the test names to run only those.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{ExecutorAddr, Session, UnitId};
use kiln_jit::{
    Error, IcState, IcUpdate, Jit, JitGraph, LazyStatus, PicConfig, PicState, PicTarget, PinReason,
    RegionKind, RetiredKind, SiteKind, Verdict, ZoneConfig,
};
use std::sync::{Arc, Mutex};
use support::{session, Scenario, Where};

mod support;

const MISS: u32 = 0xdead;
const EMPTY: u64 = 0;
const CLASS_A: u64 = 0x1111;
const CLASS_B: u64 = 0x2222;

fn zone(s: &Arc<Session>) -> Arc<Jit> {
    Arc::new(Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap())
}

/// `u64 NAME(void) { return value; }`, padded with int3 to `size` bytes.
fn returns(name: &str, value: u32, size: usize) -> JitGraph {
    let mut code = vec![0xb8];
    code.extend(value.to_le_bytes());
    code.push(0xc3);
    code.resize(size.max(6), 0xcc);
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    JitGraph::new(g)
}

/// `u64 NAME(u64 class)`: `mov %edi,%eax; nop; cmp $KEY,%eax; jne miss; nop; call TARGET; ret`
/// — the key an `Imm32` site at 4, the call a `Rel32` site at 16.
fn guarded(name: &str) -> JitGraph {
    let mut code = vec![0x89, 0xf8, 0x90, 0x3d];
    code.extend((EMPTY as u32).to_le_bytes());
    code.extend([0x0f, 0x85, 0, 0, 0, 0, 0x90, 0xe8, 0, 0, 0, 0, 0xc3]);
    let mut g = InMemoryGraph::new(name);
    g.add_function(
        name,
        code,
        vec![
            InMemoryEdge::new(10, EdgeKind::BranchPCRel32, "miss", -4),
            InMemoryEdge::new(16, EdgeKind::BranchPCRel32, "miss", -4),
        ],
        None,
    );
    let mut g = JitGraph::new(g);
    g.site(name, 4, SiteKind::Imm32)
        .site(name, 16, SiteKind::Rel32);
    g
}

/// `u64 NAME(u64 key)`: `mov %rdi,%rax; call SITE; ret`, the call a `Rel32` site at 4 linked
/// to `first`.
fn send_site(name: &str, first: &str) -> JitGraph {
    let code = vec![0x48, 0x89, 0xf8, 0xe8, 0, 0, 0, 0, 0xc3];
    let mut g = InMemoryGraph::new(name);
    g.add_function(
        name,
        code,
        vec![InMemoryEdge::new(4, EdgeKind::BranchPCRel32, first, -4)],
        None,
    );
    let mut g = JitGraph::new(g);
    g.site(name, 4, SiteKind::Rel32);
    g
}

/// `u64 NAME(u64 a) { return CALLEE(a); }` with the call's rel32 4-aligned at 8 (a `Rel32` site
/// there): `sub $8,%rsp; nop3; call CALLEE; add $8,%rsp; ret`.
fn caller(name: &str, callee: &str) -> JitGraph {
    let code = vec![
        0x48, 0x83, 0xec, 0x08, 0x0f, 0x1f, 0x00, 0xe8, 0, 0, 0, 0, 0x48, 0x83, 0xc4, 0x08, 0xc3,
    ];
    let mut g = InMemoryGraph::new(name);
    g.add_function(
        name,
        code,
        vec![InMemoryEdge::new(8, EdgeKind::BranchPCRel32, callee, -4)],
        None,
    );
    let mut g = JitGraph::new(g);
    g.site(name, 8, SiteKind::Rel32);
    g
}

/// `u64 NAME(u64 a) { return a + k; }` (`lea k(%rdi),%rax; ret`).
fn plus(name: &str, k: i8) -> JitGraph {
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, vec![0x48, 0x8d, 0x47, k as u8, 0xc3], vec![], None);
    JitGraph::new(g)
}

fn call(s: &Session, name: &str, arg: u64) -> u64 {
    let f = s
        .lookup(name)
        .unwrap_or_else(|| panic!("{name} not defined"));
    s.executor().call(f, &[arg]).unwrap()
}

fn unit_of(s: &Session, name: &str) -> UnitId {
    s.unit_at(s.lookup(name).unwrap()).unwrap().0
}

/// Where the `call rel32` whose field is at `field` goes.
fn call_target(s: &Session, field: ExecutorAddr) -> ExecutorAddr {
    let b = s.executor().read_memory(field, 4).unwrap();
    let rel = i32::from_le_bytes(b[..4].try_into().unwrap());
    ExecutorAddr((field.0 + 4).wrapping_add_signed(i64::from(rel)))
}

/// Drop the units defining a name that starts with "drop"; keep the rest. Records whom it was
/// asked about.
fn drop_fillers<'a>(
    s: &'a Session,
    asked: &'a Mutex<Vec<UnitId>>,
) -> impl FnMut(UnitId) -> Verdict + 'a {
    move |u| {
        asked.lock().unwrap().push(u);
        let names = s.unit_symbols(u).unwrap();
        if names.iter().any(|(n, _)| n.starts_with("drop")) {
            Verdict::Drop
        } else {
            Verdict::Keep
        }
    }
}

fn inline_caches_and_pics_follow_code_that_moves(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    jit.link(RegionKind::Fixed, &returns("miss", MISS, 6))
        .unwrap();
    jit.link(RegionKind::Method, &returns("drop0", 0, 512))
        .unwrap();
    for (name, v) in [("ta", 0xa), ("tb", 0xb)] {
        jit.link(RegionKind::Method, &returns(name, v, 16)).unwrap();
    }
    for k in 1..=4 {
        jit.link(RegionKind::Method, &returns(&format!("t{k}"), 100 + k, 16))
            .unwrap();
    }
    jit.link(RegionKind::Method, &returns("drop1", 0, 256))
        .unwrap();
    let guard = jit.link(RegionKind::Method, &guarded("ic_site")).unwrap();
    let send = jit
        .link(RegionKind::Method, &send_site("send", "miss"))
        .unwrap();
    // A send site in the fixed region too: no relink record, so what kiln-jit wrote there is
    // all that says where it goes.
    let fixed_send = jit
        .link(RegionKind::Fixed, &send_site("fixed_send", "miss"))
        .unwrap();
    jit.link(RegionKind::Method, &returns("drop2", 0, 256))
        .unwrap();

    let ic = jit.mono_ic(guard.sites[0], guard.sites[1], EMPTY).unwrap();
    let ta = s.lookup("ta").unwrap();
    assert_eq!(ic.set(&jit, CLASS_A, ta).unwrap(), IcUpdate::Done);
    let config = PicConfig {
        max_cases: 4,
        ..PicConfig::new("miss")
    };
    let t1 = s.lookup("t1").unwrap();
    let pic = jit
        .build_pic(
            &send.sites[0],
            &config,
            &[(1, PicTarget::Addr(t1)), (2, "t2".into())],
        )
        .unwrap();
    // Grown once: the first stub is retired.
    pic.grow(&jit, 3, "t3").unwrap();
    let fixed_pic = jit
        .build_pic(&fixed_send.sites[0], &config, &[(2, "t2".into())])
        .unwrap();
    let check = |when: &str| {
        assert_eq!(call(&s, "ic_site", CLASS_A), 0xa, "{when}: IC hit");
        assert_eq!(
            call(&s, "ic_site", CLASS_B),
            u64::from(MISS),
            "{when}: IC miss"
        );
        for k in 1..=3 {
            assert_eq!(call(&s, "send", k), 100 + k, "{when}: PIC case {k}");
        }
        assert_eq!(call(&s, "send", 9), u64::from(MISS), "{when}: PIC miss");
        assert_eq!(call(&s, "fixed_send", 2), 102, "{when}: fixed-region PIC");
        assert_eq!(call(&s, "fixed_send", 1), u64::from(MISS));
    };
    check("before");
    let PicState::Polymorphic { stub, entry, .. } = pic.state(&jit).unwrap() else {
        panic!("polymorphic")
    };
    let PicState::Polymorphic {
        stub: fixed_stub, ..
    } = fixed_pic.state(&jit).unwrap()
    else {
        panic!("polymorphic")
    };
    let retired_stub = jit
        .retired()
        .iter()
        .find(|r| r.kind == RetiredKind::Pic)
        .map(|r| (r.unit, r.segments.clone()))
        .expect("the grown PIC's first stub is retired");

    let asked = Mutex::new(Vec::new());
    let report = jit.compact(drop_fillers(&s, &asked)).unwrap();
    assert_eq!(report.dropped.len(), 3, "{report:?}");
    let asked = asked.into_inner().unwrap();
    for own in [stub, fixed_stub, retired_stub.0] {
        assert!(!asked.contains(&own), "the VM is not asked about PIC stubs");
    }
    for u in [
        unit_of(&s, "ta"),
        unit_of(&s, "t1"),
        guard.unit,
        send.unit,
        stub,
        fixed_stub,
    ] {
        assert!(report.moved.contains(&u), "{u} moved: {report:?}");
    }
    assert!(report
        .pinned
        .contains(&(retired_stub.0, PinReason::Retired)));
    let retired_now = jit.retired();
    assert_eq!(
        retired_now
            .iter()
            .find(|r| r.unit == retired_stub.0)
            .map(|r| &r.segments),
        Some(&retired_stub.1),
        "the retired stub did not move"
    );
    check("after");

    // The book kept places: the state names where things are now.
    let PicState::Polymorphic { entry: now, .. } = pic.state(&jit).unwrap_or_else(|_| {
        report
            .pic(&pic)
            .state(&jit)
            .expect("the translated handle is valid")
    }) else {
        panic!("polymorphic")
    };
    assert_eq!(report.translate(entry), Some(now), "the stub's entry moved");
    // Handles taken before hold addresses: the report gives them at their new places.
    assert!(
        ic.state(&jit).is_err(),
        "the old handle names where the guard was"
    );
    let ic = report.mono_ic(&ic);
    let pic = report.pic(&pic);
    let ta = s.lookup("ta").unwrap();
    assert_eq!(
        ic.state(&jit).unwrap(),
        IcState::Set {
            key: CLASS_A,
            target: ta
        }
    );
    // Patching goes on at the new places.
    pic.grow(&jit, 4, "t4").unwrap();
    assert_eq!(call(&s, "send", 4), 104);
    assert_eq!(call(&s, "send", 1), 101);
    ic.clear(&jit).unwrap();
    assert_eq!(call(&s, "ic_site", CLASS_A), u64::from(MISS));
    let tb = s.lookup("tb").unwrap();
    if let IcUpdate::Pending(_) = ic.set(&jit, CLASS_B, tb).unwrap() {
        jit.reclaim_retired().unwrap();
    }
    assert_eq!(call(&s, "ic_site", CLASS_B), 0xb);
    assert_eq!(call(&s, "ic_site", CLASS_A), u64::from(MISS));
    // Everything retired is freed; compacting again closes the gaps.
    jit.reclaim_retired().unwrap();
    assert!(jit.retired().is_empty());
    jit.compact(|_| Verdict::Keep).unwrap();
    assert_eq!(call(&s, "send", 4), 104);
    assert_eq!(call(&s, "fixed_send", 2), 102);
    assert_eq!(call(&s, "ic_site", CLASS_B), 0xb);
}

fn dropping_a_unit_drops_its_pic_stubs(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    jit.link(RegionKind::Fixed, &returns("miss", MISS, 6))
        .unwrap();
    jit.link(RegionKind::Method, &returns("t1", 101, 16))
        .unwrap();
    let send = jit
        .link(RegionKind::Method, &send_site("drop_send", "miss"))
        .unwrap();
    let pic = jit
        .build_pic(&send.sites[0], &PicConfig::new("miss"), &[(1, "t1".into())])
        .unwrap();
    let PicState::Polymorphic { stub, .. } = pic.state(&jit).unwrap() else {
        panic!("polymorphic")
    };
    let asked = Mutex::new(Vec::new());
    let report = jit.compact(drop_fillers(&s, &asked)).unwrap();
    assert!(report.dropped.contains(&send.unit));
    assert!(report.dropped.contains(&stub), "{report:?}");
    assert!(s.unit_segments(stub).is_err(), "the stub is gone");
    assert_eq!(call(&s, "t1", 0), 101);
}

fn compaction_after_a_redefinition_pins_the_old_body_and_moves_the_new(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    jit.link(RegionKind::Fixed, &returns("miss", MISS, 6))
        .unwrap();
    jit.link(RegionKind::Method, &returns("drop0", 0, 512))
        .unwrap();
    let f1 = jit.link(RegionKind::Method, &plus("f", 1)).unwrap();
    jit.link(RegionKind::Method, &caller("c", "f")).unwrap();
    // A fixed-region caller whose site the VM pointed at f: kiln keeps no relink record there.
    let fixed = jit.link(RegionKind::Fixed, &caller("fc", "miss")).unwrap();
    jit.retarget(&fixed.sites[0], s.lookup("f").unwrap())
        .unwrap();
    let old_f = s.lookup("f").unwrap();
    assert_eq!((call(&s, "c", 1), call(&s, "fc", 1)), (2, 2));

    let r = jit.redefine("f", &plus("f", 10)).unwrap();
    assert_eq!(r.old, f1.unit);
    assert_eq!((call(&s, "c", 1), call(&s, "fc", 1)), (11, 11));
    // A filler after the new body, so that dropping the first filler moves it.
    jit.link(RegionKind::Method, &returns("drop1", 0, 256))
        .unwrap();
    let new_f = s.lookup("f").unwrap();

    let asked = Mutex::new(Vec::new());
    let report = jit.compact(drop_fillers(&s, &asked)).unwrap();
    assert!(
        !asked.lock().unwrap().contains(&f1.unit),
        "the VM is not asked about retired code"
    );
    assert!(report.pinned.contains(&(f1.unit, PinReason::Retired)));
    assert!(report.moved.contains(&r.new.unit), "{report:?}");
    assert_eq!(report.translate(old_f), Some(old_f), "the old body stays");
    assert_ne!(s.lookup("f").unwrap(), new_f, "the new body moved");
    assert_eq!(
        s.executor().call(old_f, &[1]).unwrap(),
        2,
        "a thread still in the old body runs it where it was"
    );
    assert_eq!((call(&s, "c", 1), call(&s, "fc", 1)), (11, 11));
    assert_eq!(
        call_target(&s, jit.unit(fixed.unit).unwrap().sites[0].addr),
        s.lookup("f").unwrap(),
        "the fixed-region site was written again"
    );
    // Reclaimed, the old body goes; another compaction, and callers still reach the new one.
    assert_eq!(jit.reclaim_retired().unwrap().freed, [f1.unit]);
    jit.compact(|_| Verdict::Keep).unwrap();
    assert_eq!((call(&s, "c", 5), call(&s, "fc", 5)), (15, 15));
}

fn lazy_functions_follow_their_code_and_callers_when_compacted(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    let f = jit
        .declare_lazy("inc", |cx| Ok(plus(cx.code_name, 1)))
        .unwrap();
    // One caller below the filler (it stays) and one above (it moves).
    jit.link(RegionKind::Method, &caller("low", "inc")).unwrap();
    jit.link(RegionKind::Method, &returns("drop0", 0, 512))
        .unwrap();
    jit.link(RegionKind::Method, &caller("high", "inc"))
        .unwrap();
    assert_eq!(call(&s, "low", 41), 42, "the first call compiles inc");
    let Some(LazyStatus::Compiled { unit, code, .. }) = jit.lazy_status(&f) else {
        panic!("compiled")
    };
    let field = |name: &str| ExecutorAddr(s.lookup(name).unwrap().0 + 8);
    assert_eq!(
        call_target(&s, field("low")),
        code,
        "low calls the code directly"
    );
    assert_eq!(call_target(&s, field("high")), code, "so does high");

    // The lazy function's code cannot be dropped: its stub leads there.
    let refused = jit.compact(|u| {
        if u == unit {
            Verdict::Drop
        } else {
            Verdict::Keep
        }
    });
    assert!(matches!(refused, Err(Error::Lazy { .. })), "{refused:?}");
    assert_eq!(call(&s, "high", 1), 2);

    let asked = Mutex::new(Vec::new());
    let report = jit.compact(drop_fillers(&s, &asked)).unwrap();
    assert!(report.moved.contains(&unit), "{report:?}");
    assert!(report.moved.contains(&unit_of(&s, "high")));
    assert!(!report.moved.contains(&unit_of(&s, "low")));
    let Some(LazyStatus::Compiled {
        code: new_code,
        redirected,
        ..
    }) = jit.lazy_status(&f)
    else {
        panic!("compiled")
    };
    assert_eq!(report.translate(code), Some(new_code));
    assert_ne!(new_code, code);
    // The stub (fixed region) did not move, and leads to the code where it is now.
    assert_eq!(report.translate(f.addr), Some(f.addr));
    assert_eq!(s.executor().call(f.addr, &[5]).unwrap(), 6);
    // Both callers call the new code directly: the one that stayed (its call retargeted) and
    // the one that moved (kiln applied its call to the stub again; it was redirected again).
    assert_eq!(call_target(&s, field("low")), new_code);
    assert_eq!(call_target(&s, field("high")), new_code);
    assert_eq!(redirected.len(), 2, "{redirected:?}");
    assert_eq!((call(&s, "low", 1), call(&s, "high", 2)), (2, 3));
}

fn redefining_a_lazy_function_moves_its_stub_and_calls(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    let f = jit
        .declare_lazy("inc", |cx| Ok(plus(cx.code_name, 1)))
        .unwrap();
    let later = jit
        .declare_lazy("later", |cx| Ok(plus(cx.code_name, 2)))
        .unwrap();
    jit.link(RegionKind::Method, &caller("c", "inc")).unwrap();
    // Not compiled yet: nothing to redefine.
    let e = jit.redefine("later", &plus("later.code", 3)).unwrap_err();
    assert!(matches!(e, Error::Lazy { .. }), "{e}");
    assert_eq!(s.executor().call(later.addr, &[1]).unwrap(), 3);

    assert_eq!(call(&s, "c", 41), 42);
    let Some(LazyStatus::Compiled { unit: old, .. }) = jit.lazy_status(&f) else {
        panic!("compiled")
    };
    // The new graph must define the code under the name the stub leads to.
    let e = jit.redefine("inc", &plus("inc_v2", 100)).unwrap_err();
    assert!(matches!(e, Error::Graph { .. }), "{e}");
    assert_eq!(
        call(&s, "c", 1),
        2,
        "a refused redefinition changes nothing"
    );

    // By the function's name (its stub): the code is replaced, the stub stays.
    let r = jit.redefine("inc", &plus("inc.code", 100)).unwrap();
    assert_eq!(r.old, old);
    let Some(LazyStatus::Compiled { unit, code, .. }) = jit.lazy_status(&f) else {
        panic!("compiled")
    };
    assert_eq!(unit, r.new.unit);
    assert_eq!(call(&s, "c", 1), 101, "the redirected caller follows");
    assert_eq!(
        s.executor().call(f.addr, &[1]).unwrap(),
        101,
        "so does the stub"
    );
    let field = ExecutorAddr(s.lookup("c").unwrap().0 + 8);
    assert_eq!(call_target(&s, field), code, "directly");
    // By the code's name too.
    let r2 = jit.redefine("inc.code", &plus("inc.code", 50)).unwrap();
    assert_eq!(r2.old, r.new.unit);
    assert_eq!(call(&s, "c", 1), 51);
    assert_eq!(s.executor().call(f.addr, &[1]).unwrap(), 51);
    // The old code is retired, not the lazy function's any more: reclaim frees it.
    let freed = jit.reclaim_retired().unwrap().freed;
    assert!(
        freed.contains(&old) && freed.contains(&r.new.unit),
        "{freed:?}"
    );
    jit.compact(|_| Verdict::Keep).unwrap();
    assert_eq!(call(&s, "c", 2), 52);
    assert_eq!(s.executor().call(f.addr, &[2]).unwrap(), 52);
}

fn main() {
    support::main(|| {
        let all: [(&str, Scenario); 5] = [
            (
                "inline_caches_and_pics_follow_code_that_moves",
                inline_caches_and_pics_follow_code_that_moves,
            ),
            (
                "dropping_a_unit_drops_its_pic_stubs",
                dropping_a_unit_drops_its_pic_stubs,
            ),
            (
                "compaction_after_a_redefinition_pins_the_old_body_and_moves_the_new",
                compaction_after_a_redefinition_pins_the_old_body_and_moves_the_new,
            ),
            (
                "lazy_functions_follow_their_code_and_callers_when_compacted",
                lazy_functions_follow_their_code_and_callers_when_compacted,
            ),
            (
                "redefining_a_lazy_function_moves_its_stub_and_calls",
                redefining_a_lazy_function_moves_its_stub_and_calls,
            ),
        ];
        support::in_places(&all, &support::EVERYWHERE)
    });
}
