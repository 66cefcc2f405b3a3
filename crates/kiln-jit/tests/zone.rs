//! The code zone: where it goes, which region units land in, and sites retargeted while other
//! threads run through them.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, ExecutorAddr, Session};
use kiln_jit::{Jit, JitGraph, RegionKind, SiteKind, ZoneConfig, ZonePlacement};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn session() -> Arc<Session> {
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    Arc::new(s)
}

/// `u64 NAME(void) { return value; }` with 6 bytes of padding so that the imm64 of its `movabs`
/// is 8-byte aligned (functions start 16-aligned): a patchable `Abs64` site at offset 8.
fn constant(name: &str, value: u64) -> JitGraph {
    let mut code = vec![0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00]; // 6-byte nop
    code.extend([0x48, 0xb8]);
    code.extend(value.to_le_bytes());
    code.push(0xc3);
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    let mut g = JitGraph::new(g);
    g.site(name, 8, SiteKind::Abs64);
    g
}

/// `u64 NAME(void) { return CALLEE(); }` as `nop; call CALLEE; ret`: a 3-byte nop puts the
/// call's rel32 at offset 4, 4-aligned (functions start 16-aligned), declared as a `Rel32` site.
fn caller(name: &str, callee: &str) -> JitGraph {
    let code = vec![
        0x0f, 0x1f, 0x00, /* 3-byte nop */
        0xe8, 0, 0, 0, 0, 0xc3,
    ];
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

fn call(s: &Session, name: &str) -> u64 {
    let f = s
        .lookup(name)
        .unwrap_or_else(|| panic!("{name} not defined"));
    s.executor().call(f, &[]).unwrap()
}

#[test]
fn units_land_in_their_region() {
    let s = session();
    let jit = Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap();
    let (base, size) = jit.zone().range();
    assert_eq!(size, 4 << 20);
    let fixed = jit
        .link(RegionKind::Fixed, &constant("in_fixed", 1))
        .unwrap();
    let method = jit
        .link(RegionKind::Method, &constant("in_method", 2))
        .unwrap();
    let (fa, ma) = (
        s.lookup("in_fixed").unwrap(),
        s.lookup("in_method").unwrap(),
    );
    assert!(jit.zone().fixed().contains(fa) && !jit.zone().method().contains(fa));
    assert!(jit.zone().method().contains(ma) && !jit.zone().fixed().contains(ma));
    assert!(
        base.0 <= fa.0 && fa.0 < ma.0 && ma.0 < base.0 + size,
        "fixed code below methods"
    );
    assert!(
        s.relink_record(method.unit).is_some(),
        "methods keep relink records"
    );
    assert!(s.relink_record(fixed.unit).is_none());
    assert_eq!((call(&s, "in_fixed"), call(&s, "in_method")), (1, 2));
}

#[test]
fn a_zone_goes_where_it_is_asked() {
    let s = session();
    // Find a free range, give it back, and ask for exactly that address. The tests of this
    // file run in threads of one process, and the kernel hands a hole just freed to the next
    // mapping anyone makes: another test may take it first, then try again elsewhere.
    let (at, exact, jit) = (0..20)
        .find_map(|_| {
            let probe = Jit::new(s.clone(), &ZoneConfig::new(1 << 20)).unwrap();
            let at = probe.zone().range().0 .0;
            drop(probe);
            let exact = ZoneConfig {
                placement: ZonePlacement::Exactly(at),
                ..ZoneConfig::new(1 << 20)
            };
            let jit = Jit::new(s.clone(), &exact).ok()?;
            Some((at, exact, jit))
        })
        .expect("a zone exactly where a probe found room, in one of 20 tries");
    assert_eq!(jit.zone().range().0 .0, at);
    // Taken now: asking again for it fails clearly.
    let e = Jit::new(s.clone(), &exact).unwrap_err().to_string();
    assert!(e.contains("not free"), "{e}");
    // Near libc's `abs`: within 2 GiB of it.
    let abs = s.executor().lookup(&[b"abs"], &[], true).unwrap()[0].unwrap();
    let near = Jit::new(
        s.clone(),
        &ZoneConfig {
            placement: ZonePlacement::Near(abs.0),
            ..ZoneConfig::new(1 << 20)
        },
    )
    .unwrap();
    assert!(near.zone().range().0 .0.abs_diff(abs.0) < 1 << 31);
    assert!(Jit::new(
        s,
        &ZoneConfig {
            fixed_size: 2 << 20,
            ..ZoneConfig::new(1 << 20)
        }
    )
    .is_err());
}

#[test]
fn sites_retarget_while_threads_run_through_them() {
    let s = session();
    let jit = Arc::new(Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap());
    jit.link(RegionKind::Method, &constant("one", 1)).unwrap();
    jit.link(RegionKind::Method, &constant("two", 2)).unwrap();
    let linked = jit.link(RegionKind::Method, &caller("via", "one")).unwrap();
    let site = linked.sites[0];
    let (one, two) = (s.lookup("one").unwrap(), s.lookup("two").unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = [0u64; 3];
                while !stop.load(Ordering::Relaxed) {
                    let v = call(&s, "via");
                    assert!(v == 1 || v == 2, "reached neither target: {v}");
                    seen[v as usize] += 1;
                }
                seen
            })
        })
        .collect();
    for i in 0..20_000 {
        jit.retarget(&site, if i % 2 == 0 { two } else { one })
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in runners {
        let seen = r.join().unwrap();
        assert!(seen[1] + seen[2] > 0);
    }
    // An immediate site: the value changes for later calls.
    let c = jit.link(RegionKind::Method, &constant("konst", 7)).unwrap();
    jit.set_value(&c.sites[0], 8).unwrap();
    assert_eq!(call(&s, "konst"), 8);
    assert!(
        jit.retarget(&c.sites[0], ExecutorAddr(0)).is_ok(),
        "an Abs64 slot takes an address"
    );
    assert!(
        jit.set_value(&site, 1).is_err(),
        "a call site takes targets, not values"
    );
    // Stale: after removal the site is refused, not written.
    jit.remove(linked.unit).unwrap();
    assert!(jit.retarget(&site, one).is_err());
}

#[test]
fn bad_annotations_are_refused() {
    let s = session();
    let jit = Jit::new(s.clone(), &ZoneConfig::new(1 << 20)).unwrap();
    let mut g = constant("misaligned", 1);
    g.sites[0].offset = 9;
    let e = jit.link(RegionKind::Method, &g).unwrap_err().to_string();
    assert!(e.contains("not aligned"), "{e}");
    assert!(s.lookup("misaligned").is_none(), "nothing stays linked");
    let mut g = constant("past_end", 1);
    g.sites[0].offset = 100;
    assert!(jit.link(RegionKind::Method, &g).is_err());
    let mut g = constant("unknown", 1);
    g.sites[0].symbol = "nope".into();
    assert!(jit.link(RegionKind::Method, &g).is_err());
}
