//! Redefinition: callers through relinked calls, retargeted sites, slots, PICs and inline caches
//! all reach the new definition while other threads call in a loop; the old code is freed only
//! when the VM says so, and then nothing runs it.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, ExecutorAddr, Session};
use kiln_jit::{IcUpdate, Jit, JitGraph, PicConfig, PicTarget, RegionKind, SiteKind, ZoneConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[path = "common/runners.rs"]
mod runners;
use runners::Runners;

const CLASS: u64 = 0x1111;

fn session() -> Arc<Session> {
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    Arc::new(s)
}

/// A graph of functions `name() { return value; }`.
fn returning(graph: &str, fns: &[(&str, u32)]) -> JitGraph {
    let mut g = InMemoryGraph::new(graph);
    for (name, value) in fns {
        let mut code = vec![0xb8];
        code.extend(value.to_le_bytes());
        code.push(0xc3);
        g.add_function(name, code, vec![], None);
    }
    JitGraph::new(g)
}

/// `NAME() { return CALLEE(); }` as `nop3; call CALLEE; ret`, the rel32 a `Rel32` site at 4.
fn caller(name: &str, callee: &str) -> JitGraph {
    let code = vec![0x0f, 0x1f, 0x00, 0xe8, 0, 0, 0, 0, 0xc3];
    let mut g = InMemoryGraph::new(name);
    g.add_function(
        name,
        code,
        vec![InMemoryEdge::new(4, EdgeKind::BranchPCRel32, callee, -4)],
        None,
    );
    let mut g = JitGraph::new(g);
    g.site(name, 4, SiteKind::Rel32);
    g
}

/// `NAME() { return CALLEE(); }` through the unit's GOT: `xchg %ax,%ax; call *CALLEE@GOTPCREL(%rip);
/// ret`.
fn through_got(name: &str, callee: &str) -> JitGraph {
    let code = vec![0x66, 0x90, 0xff, 0x15, 0, 0, 0, 0, 0xc3];
    let mut g = InMemoryGraph::new(name);
    g.add_function(
        name,
        code,
        vec![InMemoryEdge::new(4, EdgeKind::GotDelta32, callee, -4)],
        None,
    );
    JitGraph::new(g)
}

/// `NAME() { return (*SLOT)(); }` as `movabs $SLOT, %rax; call *%rax; ret`, the imm64 an
/// `Abs64` site at 8 (no edge: the VM fills it).
fn through_slot(name: &str) -> JitGraph {
    let mut code = vec![0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x48, 0xb8];
    code.extend([0; 8]);
    code.extend([0xff, 0xd0, 0xc3]);
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    let mut g = JitGraph::new(g);
    g.site(name, 8, SiteKind::Abs64);
    g
}

/// `NAME(key) { key in %rax; return SITE(); }`, the send site a `Rel32` at 4.
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

/// The 32-bit guard of tests/ic.rs: key `Imm32` at 4, call `Rel32` at 16.
fn guarded(name: &str, miss: &str) -> JitGraph {
    let mut code = vec![0x89, 0xf8, 0x90, 0x3d, 0, 0, 0, 0];
    code.extend([0x0f, 0x85, 0, 0, 0, 0, 0x90, 0xe8, 0, 0, 0, 0, 0xc3]);
    let mut g = InMemoryGraph::new(name);
    g.add_function(
        name,
        code,
        vec![
            InMemoryEdge::new(10, EdgeKind::BranchPCRel32, miss, -4),
            InMemoryEdge::new(16, EdgeKind::BranchPCRel32, miss, -4),
        ],
        None,
    );
    let mut g = JitGraph::new(g);
    g.site(name, 4, SiteKind::Imm32)
        .site(name, 16, SiteKind::Rel32);
    g
}

/// Every path to `f` the test sets up: (entry, argument).
fn paths(s: &Session) -> Vec<(ExecutorAddr, u64)> {
    [
        "via_call", "via_got", "via_site", "via_slot", "via_pic", "via_ic",
    ]
    .iter()
    .zip([0, 0, 0, 0, 7, CLASS])
    .map(|(n, arg)| (s.lookup(n).unwrap(), arg))
    .collect()
}

/// f (generation 1) and six ways to reach it.
fn setup() -> (Arc<Session>, Arc<Jit>) {
    let s = session();
    let jit = Arc::new(Jit::new(s.clone(), &ZoneConfig::new(8 << 20)).unwrap());
    jit.link(RegionKind::Fixed, &returning("zero", &[("zero", 0)]))
        .unwrap();
    jit.link(RegionKind::Method, &returning("f", &[("f", 1)]))
        .unwrap();
    let f = s.lookup("f").unwrap();
    // A relinked direct call (kiln core).
    jit.link(RegionKind::Method, &caller("via_call", "f"))
        .unwrap();
    // A GOT entry (kiln core).
    jit.link(RegionKind::Method, &through_got("via_got", "f"))
        .unwrap();
    // A site in the fixed region (no relink record) retargeted by the VM.
    let site = jit
        .link(RegionKind::Fixed, &caller("via_site", "zero"))
        .unwrap()
        .sites[0];
    jit.retarget(&site, f).unwrap();
    // A slot with no edge at all, filled by the VM.
    let slot = jit
        .link(RegionKind::Method, &through_slot("via_slot"))
        .unwrap()
        .sites[0];
    jit.retarget(&slot, f).unwrap();
    // A PIC with f as a case, given by address.
    let send = jit
        .link(RegionKind::Method, &send_site("via_pic", "zero"))
        .unwrap()
        .sites[0];
    jit.build_pic(&send, &PicConfig::new("zero"), &[(7, PicTarget::Addr(f))])
        .unwrap();
    // An inline cache with f as its target.
    let g = jit
        .link(RegionKind::Method, &guarded("via_ic", "zero"))
        .unwrap();
    let ic = jit.mono_ic(g.sites[0], g.sites[1], 0).unwrap();
    assert_eq!(ic.set(&jit, CLASS, f).unwrap(), IcUpdate::Done);
    for (entry, arg) in paths(&s) {
        assert_eq!(s.executor().call(entry, &[arg]).unwrap(), 1);
    }
    (s, jit)
}

#[test]
fn redefinition_reaches_every_caller_while_threads_call_it() {
    let (s, jit) = setup();
    let generation = Arc::new(AtomicU64::new(1));
    let runners = {
        let (s, generation) = (s.clone(), generation.clone());
        let paths = paths(&s);
        Runners::spawn(2, move |_, _| {
            for &(entry, arg) in &paths {
                let g = generation.load(Ordering::SeqCst);
                let r = s
                    .executor()
                    .call(entry, &[arg])
                    .map_err(|e| e.to_string())?;
                // The definition current when the call began, or the next one: never an older
                // one, never garbage.
                if r != g && r != g + 1 {
                    return Err(format!("generation {g}: {entry} returned {r}"));
                }
            }
            Ok(1)
        })
    };
    for n in 2..=40u32 {
        let old = s.lookup_symbol(jit.scope(), "f").unwrap().unit;
        let (old_at, old_size) = s.unit_segments(old).unwrap()[0];
        let old_code = s.executor().read_memory(old_at, old_size).unwrap();
        let r = jit.redefine("f", &returning("f", &[("f", n)])).unwrap();
        assert_eq!(r.old, old);
        assert!(r.unmapped.is_empty() && r.unreached.is_empty(), "{r:?}");
        // The fixed-region site and the slot were kiln-jit's to patch (the IC's call too,
        // which kiln core had relinked already).
        assert_eq!(r.retargeted.len(), 3, "{r:?}");
        generation.store(u64::from(n), Ordering::SeqCst);
        for (entry, arg) in paths(&s) {
            assert_eq!(s.executor().call(entry, &[arg]).unwrap(), u64::from(n));
        }
        // Nothing freed yet: the old code is intact (a frame could still be running it).
        assert_eq!(
            s.executor().read_memory(old_at, old_size).unwrap(),
            old_code
        );
        assert!(jit.retired().iter().any(|x| x.unit == old));
        let e = runners.quiesce(&jit);
        let freed = jit.reclaim(e).unwrap();
        assert_eq!(freed.freed, [old], "{freed:?}");
        // Freed: poisoned, so a thread that still ran it would trap.
        let after = s.executor().read_memory(old_at, old_size).unwrap();
        assert!(after.iter().all(|b| *b == 0xcc));
    }
    assert!(runners.finish() > 0);
}

#[test]
fn redefinition_reports_what_it_cannot_reach_and_frees_only_when_told() {
    let s = session();
    let jit = Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap();
    jit.link(RegionKind::Fixed, &returning("zero", &[("zero", 0)]))
        .unwrap();
    let v1 = jit
        .link(RegionKind::Method, &returning("fg", &[("f", 1), ("g", 2)]))
        .unwrap();
    let (f1, g1) = (s.lookup("f").unwrap(), s.lookup("g").unwrap());
    // A fixed-region unit linked to f: no relink record, kiln cannot move its call.
    let fixed = jit
        .link(RegionKind::Fixed, &caller("fixed_f", "f"))
        .unwrap();
    // A site the VM pointed at g, which the new graph does not define.
    let to_g = jit
        .link(RegionKind::Fixed, &caller("to_g", "zero"))
        .unwrap()
        .sites[0];
    jit.retarget(&to_g, g1).unwrap();

    // Misuse first: unknown names, annotations that do not fit; nothing changes.
    assert!(jit.redefine("nope", &returning("x", &[("f", 9)])).is_err());
    let mut bad = returning("f", &[("f", 9)]);
    bad.site("missing", 0, SiteKind::Rel32);
    assert!(jit.redefine("f", &bad).is_err());
    assert_eq!(s.lookup("f"), Some(f1));

    let r = jit
        .redefine(v1.unit, &returning("f2", &[("f", 3)]))
        .unwrap();
    assert_eq!(r.old, v1.unit);
    assert_eq!(r.unmapped, [to_g]);
    assert_eq!(r.unreached, [fixed.unit]);
    let call = |name: &str| {
        let f = s.lookup(name).unwrap();
        s.executor().call(f, &[]).unwrap()
    };
    assert_eq!(call("f"), 3);
    assert_eq!((call("fixed_f"), call("to_g"), call("g")), (1, 2, 2));
    // The old unit is retired: it cannot be redefined again, its sites are refused.
    assert!(jit
        .redefine(v1.unit, &returning("f3", &[("f", 4)]))
        .is_err());
    assert_eq!(jit.retired().len(), 1);
    // Others still bind to it: the reclaim keeps it and says why.
    let kept = jit.reclaim_retired().unwrap();
    assert!(kept.freed.is_empty());
    assert_eq!(kept.kept.len(), 1);
    assert_eq!(s.executor().call(f1, &[]).unwrap(), 1, "not freed");
    // The VM retargets and removes what the redefinition could not reach; then it goes.
    jit.retarget(&to_g, s.lookup("zero").unwrap()).unwrap();
    jit.remove(fixed.unit).unwrap();
    let freed = jit.reclaim_retired().unwrap();
    assert_eq!(freed.freed, [v1.unit]);
    assert!(jit.retired().is_empty());
    assert_eq!(s.lookup("g"), None, "g went with its unit");
    assert!(s.executor().call(f1, &[]).is_err(), "no live unit's code");
    assert_eq!(call("f"), 3);
    // Redefining by name again, twice in a row, before any reclaim.
    jit.redefine("f", &returning("f4", &[("f", 4)])).unwrap();
    jit.redefine("f", &returning("f5", &[("f", 5)])).unwrap();
    assert_eq!(call("f"), 5);
    assert_eq!(jit.retired().len(), 2);
    assert_eq!(jit.reclaim_retired().unwrap().freed.len(), 2);
    assert_eq!(call("f"), 5);
}
