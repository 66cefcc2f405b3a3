//! Polymorphic inline caches: built, grown and sent megamorphic while other threads call through
//! the site; retired stubs freed when the VM says so; misuse refused.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, ExecutorAddr, Session};
use kiln_jit::{
    Jit, JitGraph, KeyRegister, KeyWidth, PicConfig, PicState, PicTarget, RegionKind, RetiredKind,
    Site, SiteKind, Verdict, ZoneConfig,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[path = "common/runners.rs"]
mod runners;
use runners::Runners;

const MISS: u64 = 0;

fn session() -> Arc<Session> {
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    Arc::new(s)
}

/// `u64 NAME(void) { return value; }`.
fn returns(name: &str, value: u32) -> JitGraph {
    let mut code = vec![0xb8];
    code.extend(value.to_le_bytes());
    code.push(0xc3);
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    JitGraph::new(g)
}

/// The megamorphic handler: `lea 200(%rax), %rax; ret` — 200 + the key.
fn megamorphic(name: &str) -> JitGraph {
    let code = vec![0x48, 0x8d, 0x80, 200, 0, 0, 0, 0xc3];
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    JitGraph::new(g)
}

/// `u64 NAME(u64 key)`: `mov %rdi, %rax; call SITE; ret`, the send site a `Rel32` at offset 4
/// linked to `first`. With `key_in_rdi`, the `mov` is a nop (the key stays in %rdi).
fn send_site(name: &str, first: &str, key_in_rdi: bool) -> JitGraph {
    let mov = if key_in_rdi {
        [0x0f, 0x1f, 0x00]
    } else {
        [0x48, 0x89, 0xf8]
    };
    let mut code = mov.to_vec();
    code.extend([0xe8, 0, 0, 0, 0, 0xc3]);
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

struct Fixture {
    s: Arc<Session>,
    jit: Arc<Jit>,
    site: Site,
    send: ExecutorAddr,
    targets: Vec<ExecutorAddr>,
}

impl Fixture {
    /// Targets t1..t6 return 100 + their key.
    fn new() -> Fixture {
        let s = session();
        let jit = Arc::new(Jit::new(s.clone(), &ZoneConfig::new(8 << 20)).unwrap());
        jit.link(RegionKind::Fixed, &returns("miss", MISS as u32))
            .unwrap();
        jit.link(RegionKind::Fixed, &megamorphic("mega")).unwrap();
        let targets = (1..=6)
            .map(|k| {
                let name = format!("t{k}");
                jit.link(RegionKind::Method, &returns(&name, 100 + k))
                    .unwrap();
                s.lookup(&name).unwrap()
            })
            .collect();
        let linked = jit
            .link(RegionKind::Method, &send_site("send", "miss", false))
            .unwrap();
        Fixture {
            send: s.lookup("send").unwrap(),
            site: linked.sites[0],
            s,
            jit,
            targets,
        }
    }

    fn send(&self, key: u64) -> u64 {
        self.s.executor().call(self.send, &[key]).unwrap()
    }

    /// Target of key `k` (1..=6), by address for odd keys and by name for even ones.
    fn target(&self, k: u64) -> PicTarget {
        if k % 2 == 1 {
            PicTarget::Addr(self.targets[k as usize - 1])
        } else {
            PicTarget::Name(format!("t{k}"))
        }
    }

    fn config(&self) -> PicConfig {
        PicConfig {
            max_cases: 4,
            megamorphic: Some("mega".into()),
            ..PicConfig::new("miss")
        }
    }
}

/// Wait (yielding) until `cond` holds; fail after a minute: the runners are stuck.
fn wait_until(cond: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "never saw {what}");
        std::thread::yield_now();
    }
}

#[test]
fn a_pic_grows_and_goes_megamorphic_while_threads_call_through_it() {
    let f = Arc::new(Fixture::new());
    let seen: Arc<[AtomicU64; 3]> = Arc::default();
    let runners = {
        let (f, seen) = (f.clone(), seen.clone());
        Runners::spawn(2, move |i, n| {
            let key = (i as u64 + n) % 6 + 1;
            let r = f.send(key);
            // The miss handler, this key's target, or the megamorphic handler for this key:
            // never another key's target, never garbage.
            let which = match r {
                MISS => 0,
                r if r == 100 + key => 1,
                r if r == 200 + key => 2,
                r => return Err(format!("key {key} reached {r}")),
            };
            seen[which].fetch_add(1, Ordering::Relaxed);
            Ok(1)
        })
    };
    let (jit, config) = (&f.jit, f.config());
    let mut freed = 0;
    for round in 0..60 {
        let pic = jit
            .build_pic(&f.site, &config, &[(1, f.target(1))])
            .unwrap();
        assert_eq!((f.send(1), f.send(2)), (101, MISS));
        for k in 2..=4 {
            let state = pic.grow(jit, k, f.target(k)).unwrap();
            assert!(matches!(state, PicState::Polymorphic { cases, .. } if cases == k as usize));
            for j in 1..=k {
                assert_eq!(f.send(j), 100 + j, "round {round}, {k} cases, key {j}");
            }
            assert_eq!(f.send(k + 1), MISS);
            if round == 0 && k == 4 {
                // The runners call through the polymorphic stub at least once (on a loaded
                // machine they may otherwise sleep through every polymorphic window).
                wait_until(
                    || seen[1].load(Ordering::Relaxed) > 0,
                    "a case hit by a runner",
                );
            }
        }
        assert_eq!(
            pic.grow(jit, 5, f.target(5)).unwrap(),
            PicState::Megamorphic
        );
        assert_eq!((f.send(5), f.send(1)), (205, 201));
        if round == 0 {
            wait_until(
                || seen[2].load(Ordering::Relaxed) > 0,
                "the megamorphic handler reached by a runner",
            );
        }
        assert_eq!(
            pic.grow(jit, 6, f.target(6)).unwrap(),
            PicState::Megamorphic
        );
        if round % 5 == 4 {
            let retired = jit.retired();
            assert!(retired.iter().all(|r| r.kind == RetiredKind::Pic));
            let e = runners.quiesce(jit);
            let r = jit.reclaim(e).unwrap();
            assert!(r.kept.is_empty(), "{:?}", r.kept);
            assert_eq!(r.freed.len(), retired.len());
            // Freed stubs are poisoned (until their memory is used again).
            for old in &retired {
                let (at, n) = old.segments[0];
                let bytes = f.s.executor().read_memory(at, n).unwrap();
                assert!(
                    bytes.iter().all(|b| *b == 0xcc),
                    "a freed PIC is not poisoned"
                );
            }
            freed += r.freed.len();
        }
    }
    runners.finish();
    let seen = seen.each_ref().map(|n| n.load(Ordering::Relaxed));
    assert!(seen[1] > 0 && seen[2] > 0, "{seen:?}");
    // 4 stubs per round (1, 2, 3 and 4 cases) were retired.
    assert_eq!(freed, 4 * 60);
}

#[test]
fn pics_compare_64_bit_keys_in_the_register_the_vm_chose() {
    let s = session();
    let jit = Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap();
    jit.link(RegionKind::Method, &returns("miss", 7)).unwrap();
    let keys = [5u64, 0x1234_5678_9abc_def0, u64::MAX, 0x8000_0000];
    for (i, _) in keys.iter().enumerate() {
        jit.link(
            RegionKind::Method,
            &returns(&format!("k{i}"), i as u32 + 10),
        )
        .unwrap();
    }
    let linked = jit
        .link(RegionKind::Method, &send_site("send", "miss", true))
        .unwrap();
    let send = s.lookup("send").unwrap();
    let config = PicConfig {
        register: KeyRegister::Rdi,
        width: KeyWidth::Bits64,
        ..PicConfig::new("miss")
    };
    let cases: Vec<(u64, PicTarget)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, PicTarget::Name(format!("k{i}"))))
        .collect();
    jit.build_pic(&linked.sites[0], &config, &cases).unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(s.executor().call(send, &[*k]).unwrap(), i as u64 + 10);
    }
    // Keys that agree in their low 32 bits with a cached one still miss.
    for k in [0x5_0000_0005, 0x9abc_def0, 0xffff_ffff] {
        assert_eq!(s.executor().call(send, &[k]).unwrap(), 7);
    }
}

#[test]
fn pic_targets_may_be_addresses_outside_any_unit() {
    let s = session();
    let jit = Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap();
    jit.link(RegionKind::Method, &returns("miss", 7)).unwrap();
    let linked = jit
        .link(RegionKind::Method, &send_site("send", "miss", true))
        .unwrap();
    // libc's labs(key): the PIC jumps there with the key in %rdi, its argument register.
    let labs = s.executor().lookup(&[b"labs"], &[], true).unwrap()[0].unwrap();
    let config = PicConfig {
        register: KeyRegister::Rdi,
        width: KeyWidth::Bits64,
        ..PicConfig::new("miss")
    };
    let minus_three = (-3i64) as u64;
    // (Out of reach of a rel32, the link would route the jump through a stub.)
    jit.build_pic(
        &linked.sites[0],
        &config,
        &[(minus_three, PicTarget::Addr(labs))],
    )
    .unwrap();
    let send = s.lookup("send").unwrap();
    assert_eq!(s.executor().call(send, &[minus_three]).unwrap(), 3);
    assert_eq!(s.executor().call(send, &[4]).unwrap(), 7);
}

#[test]
fn removing_a_unit_removes_the_pic_stubs_of_its_sites() {
    let f = Fixture::new();
    let jit = &f.jit;
    let used_before = jit.zone().method().used().unwrap();
    let units_before = f.s.units();
    // A send site whose unit also defines `own` (returns 7), which the grown PIC jumps to: the
    // live stub binds to the unit, and the unit (its site's relink edge) to the stub.
    let mut g = send_site("send2", "miss", false);
    g.graph
        .add_function("own", vec![0xb8, 7, 0, 0, 0, 0xc3], vec![], None);
    let linked = jit.link(RegionKind::Method, &g).unwrap();
    let send2 = f.s.lookup("send2").unwrap();
    let call = |key: u64| f.s.executor().call(send2, &[key]).unwrap();
    let pic = jit
        .build_pic(&linked.sites[0], &f.config(), &[(1, f.target(1))])
        .unwrap();
    let PicState::Polymorphic { stub: first, .. } = pic.state(jit).unwrap() else {
        panic!("a PIC with one case is polymorphic");
    };
    let PicState::Polymorphic { stub: live, .. } = pic.grow(jit, 5, "own").unwrap() else {
        panic!("a PIC with two cases is polymorphic");
    };
    assert_eq!((call(1), call(5), call(2)), (101, 7, MISS));
    assert!(f.s.units().contains(&live));

    jit.remove(linked.unit).unwrap();
    // The live stub went with the unit: no longer in the session, the zone, or a lookup.
    assert!(!f.s.units().contains(&live), "the live PIC stub leaked");
    assert!(jit.unit(live).is_none());
    assert!(f.s.unit_segments(live).is_err());
    assert!(f.s.lookup("send2").is_none() && f.s.lookup("own").is_none());
    // The stub grow replaced stays retired (a thread may still be in it) until reclaimed.
    assert!(jit.retired().iter().any(|r| r.unit == first));
    assert_eq!(jit.reclaim_retired().unwrap().freed, vec![first]);
    assert_eq!(f.s.units(), units_before);
    assert_eq!(jit.zone().method().used().unwrap(), used_before);
    // Compaction is asked about the VM's own units only: nothing was left behind for it.
    let mut asked = Vec::new();
    jit.compact(|u| {
        asked.push(u);
        Verdict::Pin
    })
    .unwrap();
    let method_units: Vec<_> = units_before
        .iter()
        .copied()
        .filter(|u| jit.unit(*u).is_some_and(|l| l.region == RegionKind::Method))
        .collect();
    assert_eq!(asked, method_units);
}

#[test]
fn misused_pics_give_errors_and_change_nothing() {
    let f = Fixture::new();
    let (jit, config) = (&f.jit, f.config());
    // Too many cases for the limit, a limit out of bounds, duplicate and too-wide keys.
    let five: Vec<(u64, PicTarget)> = (1..=5).map(|k| (k, f.target(k))).collect();
    assert!(jit.build_pic(&f.site, &config, &five).is_err());
    let none = PicConfig {
        max_cases: 0,
        ..config.clone()
    };
    assert!(jit.build_pic(&f.site, &none, &[]).is_err());
    assert!(jit
        .build_pic(&f.site, &config, &[(1, f.target(1)), (1, f.target(2))])
        .is_err());
    assert!(jit
        .build_pic(&f.site, &config, &[(1 << 40, f.target(1))])
        .is_err());
    // An undefined target: the link fails, the site still reaches the miss handler.
    assert!(jit
        .build_pic(&f.site, &config, &[(1, PicTarget::Name("nowhere".into()))])
        .is_err());
    assert_eq!(f.send(1), MISS);
    // An immediate site cannot be served by a PIC.
    let imm = Site {
        kind: SiteKind::Imm32,
        ..f.site
    };
    assert!(jit.build_pic(&imm, &config, &[]).is_err());
    // Past its limit without a megamorphic handler.
    let bounded = PicConfig {
        megamorphic: None,
        ..config.clone()
    };
    let pic = jit
        .build_pic(&f.site, &bounded, &[(1, f.target(1))])
        .unwrap();
    for k in 2..=4 {
        pic.grow(jit, k, f.target(k)).unwrap();
    }
    let e = pic.grow(jit, 5, f.target(5)).unwrap_err().to_string();
    assert!(e.contains("limit"), "{e}");
    assert!(pic.grow(jit, 4, f.target(4)).is_err(), "a key cached twice");
    assert!(matches!(
        pic.state(jit).unwrap(),
        PicState::Polymorphic { cases: 4, .. }
    ));
    assert_eq!((f.send(4), f.send(5)), (104, MISS));
    // A site of another unit that has no PIC.
    let other = jit
        .link(RegionKind::Method, &send_site("other", "miss", false))
        .unwrap();
    let no_pic = kiln_jit::Pic {
        site: other.sites[0],
    };
    assert!(no_pic.grow(jit, 1, f.target(1)).is_err());
    assert!(no_pic.state(jit).is_err());
    // Stale: its unit removed.
    jit.remove(other.unit).unwrap();
    assert!(jit
        .build_pic(&other.sites[0], &config, &[(1, f.target(1))])
        .is_err());
    // The retired stubs are freed on reclaim, the live one stays.
    let r = jit.reclaim_retired().unwrap();
    assert_eq!(r.freed.len(), 3);
    assert_eq!((f.send(1), f.send(4)), (101, 104));
}
