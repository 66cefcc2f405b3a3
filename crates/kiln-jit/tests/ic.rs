//! Monomorphic inline caches: set and clear while other threads call through the guarded site;
//! no thread ever runs a target cached for another key.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, ExecutorAddr, Session};
use kiln_jit::{IcState, IcUpdate, Jit, JitGraph, MonoIc, RegionKind, SiteKind, ZoneConfig};
use std::sync::Arc;

#[path = "common/runners.rs"]
mod runners;
use runners::Runners;

const MISS: u64 = 0xdead;
const EMPTY: u64 = 0;
const CLASS_A: u64 = 0x1111;
const CLASS_B: u64 = 0x2222;

fn session() -> Arc<Session> {
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    Arc::new(s)
}

/// `u64 NAME(void) { return value; }` (`mov $imm32, %eax; ret`).
fn returns(name: &str, value: u32) -> JitGraph {
    let mut code = vec![0xb8];
    code.extend(value.to_le_bytes());
    code.push(0xc3);
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    JitGraph::new(g)
}

/// `mov $SPIN, %ecx; 1: dec %ecx; jnz 1b`: a stretch between a guard and its call, as long as
/// a thread preempted there would stay (9 bytes).
fn spin() -> Vec<u8> {
    let mut code = vec![0xb9];
    code.extend(1_000_000u32.to_le_bytes());
    code.extend([0xff, 0xc9, 0x75, 0xfc]);
    code
}

/// `u64 NAME(u64 class)`: the 32-bit guard shape, the receiver's class word in %rdi.
///
/// ```text
///  0: 89 f8            mov %edi, %eax
///  2: 90               nop
///  3: 3d KEY           cmp $KEY, %eax     ; key: Imm32 site at 4
///  8: 0f 85 rel32      jne miss           ; tail jump to the miss handler
/// 14: 90               nop                ; (slow: 14..23 spin)
/// 15: e8 rel32         call TARGET        ; target: Rel32 site at 16 (slow: 24)
/// 20: c3               ret
/// ```
fn guarded32(name: &str, miss: &str, first: &str, slow: bool) -> JitGraph {
    let mut code = vec![0x89, 0xf8, 0x90, 0x3d];
    code.extend((EMPTY as u32).to_le_bytes());
    code.extend([0x0f, 0x85, 0, 0, 0, 0]);
    if slow {
        code.extend(spin());
    } else {
        code.push(0x90);
    }
    code.push(0xe8);
    let call = code.len() as u32;
    code.extend([0, 0, 0, 0, 0xc3]);
    let mut g = InMemoryGraph::new(name);
    g.add_function(
        name,
        code,
        vec![
            InMemoryEdge::new(10, EdgeKind::BranchPCRel32, miss, -4),
            InMemoryEdge::new(call, EdgeKind::BranchPCRel32, first, -4),
        ],
        None,
    );
    let mut g = JitGraph::new(g);
    g.site(name, 4, SiteKind::Imm32)
        .site(name, u64::from(call), SiteKind::Rel32);
    g
}

/// The 64-bit guard shape:
///
/// ```text
///  0: 48 89 f8         mov %rdi, %rax
///  3: 0f 1f 00         nop
///  6: 49 bb KEY64      movabs $KEY, %r11  ; key: Abs64 site at 8
/// 16: 4c 39 d8         cmp %r11, %rax
/// 19: 0f 85 rel32      jne miss
/// 25: 66 90            nop                ; (slow: 25..34 spin, 34 nop)
/// 27: e8 rel32         call TARGET        ; target: Rel32 site at 28 (slow: 36)
/// 32: c3               ret
/// ```
fn guarded64(name: &str, miss: &str, first: &str, slow: bool) -> JitGraph {
    let mut code = vec![0x48, 0x89, 0xf8, 0x0f, 0x1f, 0x00, 0x49, 0xbb];
    code.extend(EMPTY.to_le_bytes());
    code.extend([0x4c, 0x39, 0xd8, 0x0f, 0x85, 0, 0, 0, 0]);
    if slow {
        code.extend(spin());
        code.push(0x90);
    } else {
        code.extend([0x66, 0x90]);
    }
    code.push(0xe8);
    let call = code.len() as u32;
    code.extend([0, 0, 0, 0, 0xc3]);
    let mut g = InMemoryGraph::new(name);
    g.add_function(
        name,
        code,
        vec![
            InMemoryEdge::new(21, EdgeKind::BranchPCRel32, miss, -4),
            InMemoryEdge::new(call, EdgeKind::BranchPCRel32, first, -4),
        ],
        None,
    );
    let mut g = JitGraph::new(g);
    g.site(name, 8, SiteKind::Abs64)
        .site(name, u64::from(call), SiteKind::Rel32);
    g
}

struct Fixture {
    s: Arc<Session>,
    jit: Arc<Jit>,
    ic: MonoIc,
    dispatch: ExecutorAddr,
    ta: ExecutorAddr,
    tb: ExecutorAddr,
}

fn fixture(wide: bool, slow: bool) -> Fixture {
    let s = session();
    let jit = Arc::new(Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap());
    for (name, v) in [("miss", MISS), ("ta", CLASS_A), ("tb", CLASS_B)] {
        jit.link(RegionKind::Method, &returns(name, v as u32))
            .unwrap();
    }
    let g = if wide {
        guarded64("dispatch", "miss", "miss", slow)
    } else {
        guarded32("dispatch", "miss", "miss", slow)
    };
    let linked = jit.link(RegionKind::Method, &g).unwrap();
    let ic = jit
        .mono_ic(linked.sites[0], linked.sites[1], EMPTY)
        .unwrap();
    Fixture {
        dispatch: s.lookup("dispatch").unwrap(),
        ta: s.lookup("ta").unwrap(),
        tb: s.lookup("tb").unwrap(),
        s,
        jit,
        ic,
    }
}

impl Fixture {
    fn send(&self, class: u64) -> u64 {
        self.s.executor().call(self.dispatch, &[class]).unwrap()
    }
}

#[test]
fn an_inline_cache_is_set_cleared_and_changed_through_an_epoch() {
    for wide in [false, true] {
        let f = fixture(wide, false);
        let (jit, ic) = (&f.jit, f.ic);
        assert_eq!(ic.state(jit).unwrap(), IcState::Empty);
        assert_eq!((f.send(CLASS_A), f.send(CLASS_B)), (MISS, MISS));
        // Never hit: set at once.
        assert_eq!(ic.set(jit, CLASS_A, f.ta).unwrap(), IcUpdate::Done);
        assert_eq!((f.send(CLASS_A), f.send(CLASS_B)), (CLASS_A, MISS));
        assert_eq!(
            ic.state(jit).unwrap(),
            IcState::Set {
                key: CLASS_A,
                target: f.ta
            }
        );
        // Another target: the guard fails at once, the change waits for the VM's epoch.
        let IcUpdate::Pending(since) = ic.set(jit, CLASS_B, f.tb).unwrap() else {
            panic!("a new target while another is cached must wait")
        };
        assert_eq!((f.send(CLASS_A), f.send(CLASS_B)), (MISS, MISS));
        assert!(matches!(
            ic.state(jit).unwrap(),
            IcState::Pending { key: CLASS_B, .. }
        ));
        // An epoch that began before the guard was emptied does not complete it.
        let r = jit.reclaim(since).unwrap();
        assert_eq!(r.ics_completed, 0);
        assert_eq!(f.send(CLASS_B), MISS);
        let e = jit.grace_start();
        assert!(e > since);
        assert_eq!(jit.reclaim(e).unwrap().ics_completed, 1);
        assert_eq!((f.send(CLASS_A), f.send(CLASS_B)), (MISS, CLASS_B));
        // The same target for another key: at once.
        assert_eq!(ic.set(jit, CLASS_A, f.tb).unwrap(), IcUpdate::Done);
        assert_eq!((f.send(CLASS_A), f.send(CLASS_B)), (CLASS_B, MISS));
        // Clear: misses at once; a set right after waits (a thread may still be past the guard).
        ic.clear(jit).unwrap();
        assert_eq!(ic.state(jit).unwrap(), IcState::Empty);
        assert_eq!((f.send(CLASS_A), f.send(CLASS_B)), (MISS, MISS));
        assert!(matches!(
            ic.set(jit, CLASS_A, f.ta).unwrap(),
            IcUpdate::Pending(_)
        ));
        assert_eq!(jit.reclaim_retired().unwrap().ics_completed, 1);
        assert_eq!((f.send(CLASS_A), f.send(CLASS_B)), (CLASS_A, MISS));
        // Cleared, then an epoch passes: quiet again, a set is immediate.
        ic.clear(jit).unwrap();
        jit.reclaim_retired().unwrap();
        assert_eq!(ic.set(jit, CLASS_B, f.tb).unwrap(), IcUpdate::Done);
        assert_eq!((f.send(CLASS_A), f.send(CLASS_B)), (MISS, CLASS_B));
        // A 64-bit guard takes 64-bit keys; a 32-bit one refuses them.
        let big = 0x1_0000_1111;
        if wide {
            jit.reclaim_retired().unwrap();
            ic.clear(jit).unwrap();
            jit.reclaim_retired().unwrap();
            assert_eq!(ic.set(jit, big, f.ta).unwrap(), IcUpdate::Done);
            assert_eq!((f.send(big), f.send(CLASS_A)), (CLASS_A, MISS));
        } else {
            assert!(ic.set(jit, big, f.ta).is_err());
        }
    }
}

#[test]
fn inline_caches_change_under_concurrent_callers() {
    for wide in [false, true] {
        // The guarded sites spin between guard and call: every thread that hits stays in that
        // window long enough for a careless protocol to retarget the call under it.
        let f = Arc::new(fixture(wide, true));
        let runners = {
            let f = f.clone();
            Runners::spawn(2, move |i, n| {
                let class = if (i as u64 + n).is_multiple_of(2) {
                    CLASS_A
                } else {
                    CLASS_B
                };
                let r = f.send(class);
                // The target cached for this class, or the miss path: never the target of the
                // other class.
                if r != MISS && r != class {
                    return Err(format!("class {class:#x} reached {r:#x}"));
                }
                Ok(u64::from(r != MISS))
            })
        };
        let (jit, ic) = (&f.jit, f.ic);
        for round in 0..100 {
            let (class, target) = if round % 2 == 0 {
                (CLASS_A, f.ta)
            } else {
                (CLASS_B, f.tb)
            };
            if round % 7 == 3 {
                ic.clear(jit).unwrap();
            }
            if let IcUpdate::Pending(_) = ic.set(jit, class, target).unwrap() {
                let e = runners.quiesce(jit);
                assert_eq!(jit.reclaim(e).unwrap().ics_completed, 1);
            }
            assert_eq!(ic.state(jit).unwrap(), IcState::Set { key: class, target });
            assert_eq!(f.send(class), class);
            // Let the runners hit it for a while.
            runners.quiesce(jit);
        }
        assert!(runners.finish() > 0, "the runners never hit the cache");
    }
}

#[test]
fn misused_inline_caches_give_errors() {
    let f = fixture(false, false);
    let (jit, ic) = (&f.jit, f.ic);
    // Wrong kinds of sites.
    assert!(jit.mono_ic(ic.target, ic.target, EMPTY).is_err());
    assert!(jit.mono_ic(ic.key, ic.key, EMPTY).is_err());
    // An empty key that does not fit the guard.
    assert!(jit.mono_ic(ic.key, ic.target, 1 << 40).is_err());
    // The empty key is not a key.
    assert!(ic.set(jit, EMPTY, f.ta).is_err());
    // A site that is no IC's.
    let other = jit
        .link(
            RegionKind::Method,
            &guarded32("other", "miss", "miss", false),
        )
        .unwrap();
    let not_made = MonoIc {
        key: other.sites[0],
        target: other.sites[1],
        empty: EMPTY,
    };
    assert!(not_made.set(jit, CLASS_A, f.ta).is_err());
    assert!(not_made.state(jit).is_err());
    // Out of reach of the call.
    assert!(ic.set(jit, CLASS_A, ExecutorAddr(8)).is_err());
    assert_eq!(f.send(CLASS_A), MISS);
    // Stale: the unit is gone.
    jit.remove(other.unit).unwrap();
    assert!(not_made.clear(jit).is_err());
    assert!(jit.mono_ic(other.sites[0], other.sites[1], EMPTY).is_err());
    // A reclaim of an epoch that has not begun.
    let next = kiln_jit::Epoch(jit.epoch().0 + 1);
    assert!(jit.reclaim(next).is_err());
}
