//! Compaction of the method region: dropped units go, survivors slide down with their callers
//! relinked, pinned units stay, sites kiln-jit retargeted keep their targets, and the VM
//! rewrites the return addresses on its stacks from the move map. Each scenario runs in process
//! and with the code in a spawned executor, in shared and in copied memory, but the VM-stack
//! one: its runtime callback is a function of this process, and its VM stack memory of this
//! process (in process only).
//!
//! This test program has a main of its own (`harness = false`): started with `--kiln-executor`
//! it serves as the executor the remote cases spawn (`tests/support`). Arguments: a substring of
//! the test names to run only those.

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{ExecutorAddr, Session, UnitId};
use kiln_jit::{
    CompactionReport, Error, Jit, JitGraph, PinReason, RegionKind, SiteKind, Verdict, ZoneConfig,
};
use kiln_target::{MemProt, RawMemory};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use support::{session, Scenario, Where};

mod support;

fn zone(s: &Arc<Session>) -> Jit {
    Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap()
}

/// `u32 NAME(void) { return value; }`, padded to `size` bytes of code (int3 after the ret).
fn constant(name: &str, value: u32, size: usize) -> JitGraph {
    let mut code = vec![0xb8];
    code.extend(value.to_le_bytes());
    code.push(0xc3);
    code.resize(size.max(6), 0xcc);
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    JitGraph::new(g)
}

/// `u32 NAME(void) { return add + CALLEE0() + CALLEE1() + …; }` (wrapping), each call's rel32 a
/// `Rel32` site, 4-aligned at `12 + 8 * i` (functions start 16-aligned).
fn calls(name: &str, callees: &[&str], add: u32) -> JitGraph {
    // push %rbx; mov $add, %ebx; a 4-byte nop; then per call `nop; call rel32; add %eax,%ebx`
    // (8 bytes, the rel32 at 2 into it); then mov %ebx,%eax; pop %rbx; ret.
    let mut code = vec![0x53, 0xbb];
    code.extend(add.to_le_bytes());
    code.extend([0x0f, 0x1f, 0x40, 0x00]);
    let mut edges = Vec::new();
    for c in callees {
        let at = code.len();
        code.extend([0x90, 0xe8, 0, 0, 0, 0, 0x01, 0xc3]);
        edges.push(InMemoryEdge::new(
            (at + 2) as u32,
            EdgeKind::BranchPCRel32,
            c,
            -4,
        ));
    }
    code.extend([0x89, 0xd8, 0x5b, 0xc3]); // mov %ebx,%eax; pop %rbx; ret
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, edges, None);
    let mut g = JitGraph::new(g);
    for i in 0..callees.len() {
        g.site(name, 12 + 8 * i as u64, SiteKind::Rel32);
    }
    g
}

fn call(s: &Session, name: &str) -> u32 {
    let f = s
        .lookup(name)
        .unwrap_or_else(|| panic!("{name} not defined"));
    s.executor().call(f, &[]).unwrap() as u32
}

fn unit_of(s: &Session, name: &str) -> UnitId {
    s.unit_at(s.lookup(name).unwrap()).unwrap().0
}

/// Drop the units whose names start with "drop", keep the rest.
fn drop_fillers(s: &Session) -> impl FnMut(UnitId) -> Verdict + '_ {
    move |u| {
        let names = s.unit_symbols(u).unwrap();
        if names.iter().any(|(n, _)| n.starts_with("drop")) {
            Verdict::Drop
        } else {
            Verdict::Keep
        }
    }
}

fn survivors_slide_down_and_callers_follow(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    jit.link(RegionKind::Method, &constant("drop0", 0, 200))
        .unwrap();
    jit.link(RegionKind::Method, &constant("a", 1, 40)).unwrap();
    jit.link(RegionKind::Method, &constant("drop1", 0, 300))
        .unwrap();
    jit.link(RegionKind::Method, &calls("b", &["a"], 10))
        .unwrap();
    jit.link(RegionKind::Method, &constant("drop2", 0, 100))
        .unwrap();
    jit.link(RegionKind::Method, &calls("c", &["a", "b"], 100))
        .unwrap();
    assert_eq!(call(&s, "c"), 112);
    let before: BTreeMap<&str, u64> = ["a", "b", "c"]
        .into_iter()
        .map(|n| (n, s.lookup(n).unwrap().0))
        .collect();
    let drop1 = s.lookup("drop1").unwrap();
    let report = jit.compact(drop_fillers(&s)).unwrap();
    assert_eq!(report.dropped.len(), 3);
    assert_eq!(report.moved.len(), 3, "{report:?}");
    assert!(report.pinned.is_empty());
    for (name, old) in &before {
        let new = s.lookup(name).unwrap();
        assert!(new.0 < *old, "{name} slid down: {old:#x} -> {new}");
        assert_eq!(report.translate(ExecutorAddr(*old)), Some(new));
        assert_eq!(
            report.translate(ExecutorAddr(old + 3)),
            Some(ExecutorAddr(new.0 + 3)),
            "a pc inside {name}"
        );
    }
    assert_eq!(report.translate(drop1), None, "drop1's code is gone");
    let host = ExecutorAddr(call as *const () as u64);
    assert_eq!(
        report.translate(host),
        Some(host),
        "host code does not move"
    );
    assert_eq!((call(&s, "a"), call(&s, "b"), call(&s, "c")), (1, 11, 112));
    assert!(report.used_after[0] < report.used_before[0]);
    assert!(
        s.lookup("a").unwrap() < s.lookup("b").unwrap()
            && s.lookup("b").unwrap() < s.lookup("c").unwrap()
    );
    // The space freed is reused at once: a new unit lands below where c was.
    jit.link(RegionKind::Method, &constant("fresh", 5, 64))
        .unwrap();
    assert!(s.lookup("fresh").unwrap().0 < before["c"]);
    assert_eq!(call(&s, "fresh"), 5);
    // Nothing left to do: a second compaction moves nothing.
    let again = jit.compact(|_| Verdict::Keep).unwrap();
    assert!(
        again.moved.is_empty() && again.dropped.is_empty(),
        "{again:?}"
    );
}

fn pinned_units_stay_and_others_pack_around_them(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    jit.link(RegionKind::Method, &constant("drop0", 0, 32))
        .unwrap();
    jit.link(RegionKind::Method, &constant("pinned", 7, 32))
        .unwrap();
    jit.link(RegionKind::Method, &constant("drop1", 0, 500))
        .unwrap();
    jit.link(RegionKind::Method, &calls("x", &["pinned"], 1))
        .unwrap();
    jit.link(RegionKind::Method, &constant("y", 9, 16)).unwrap();
    let (d0, p) = (s.lookup("drop0").unwrap(), s.lookup("pinned").unwrap());
    let pinned = unit_of(&s, "pinned");
    let mut fillers = drop_fillers(&s);
    let report = jit
        .compact(|u| {
            if u == pinned {
                Verdict::Pin
            } else {
                fillers(u)
            }
        })
        .unwrap();
    assert_eq!(report.pinned, [(pinned, PinReason::Verdict)]);
    assert_eq!(s.lookup("pinned"), Some(p), "a pinned unit stays");
    assert_eq!(report.translate(p), Some(p));
    // x (26 bytes) fits in front of the pinned unit, where drop0 was; y (16) no longer does
    // and goes right after it.
    assert_eq!(s.lookup("x"), Some(d0));
    assert_eq!(s.lookup("y"), Some(ExecutorAddr(p.0 + 32)));
    assert_eq!((call(&s, "x"), call(&s, "y")), (8, 9));
}

fn a_dropped_unit_still_used_is_refused(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    jit.link(RegionKind::Method, &constant("a", 1, 16)).unwrap();
    let b = jit
        .link(RegionKind::Method, &calls("b", &["a"], 1))
        .unwrap();
    let a = unit_of(&s, "a");
    let at = s.lookup("a").unwrap();
    let e = jit
        .compact(|u| if u == a { Verdict::Drop } else { Verdict::Keep })
        .unwrap_err();
    assert!(
        matches!(&e, Error::InUse { unit, users } if *unit == a && users[..] == [b.unit]),
        "{e}"
    );
    assert_eq!(s.lookup("a"), Some(at), "nothing changed");
    assert_eq!(call(&s, "b"), 2);
    // A site kiln-jit pointed into a unit counts as a use too.
    jit.link(RegionKind::Method, &constant("t", 5, 16)).unwrap();
    let c = jit
        .link(RegionKind::Method, &calls("c", &["b"], 0))
        .unwrap();
    jit.retarget(&c.sites[0], s.lookup("t").unwrap()).unwrap();
    assert_eq!(call(&s, "c"), 5);
    let t = unit_of(&s, "t");
    let e = jit
        .compact(|u| if u == t { Verdict::Drop } else { Verdict::Keep })
        .unwrap_err();
    assert!(
        matches!(&e, Error::InUse { unit, users } if *unit == t && users[..] == [c.unit]),
        "{e}"
    );
    // Dropping the users too is fine.
    let report = jit
        .compact(|u| {
            if u == t || u == c.unit {
                Verdict::Drop
            } else {
                Verdict::Keep
            }
        })
        .unwrap();
    assert_eq!(report.dropped, [t, c.unit]);
    assert_eq!(call(&s, "b"), 2);
}

fn sites_keep_what_kiln_jit_wrote_into_them(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    for (name, value) in [
        ("drop0", 0),
        ("one", 1),
        ("later", 0),
        ("drop1", 0),
        ("two", 2),
    ] {
        jit.link(RegionKind::Method, &constant(name, value, 64))
            .unwrap();
    }
    let via = jit
        .link(RegionKind::Method, &calls("via", &["one", "one"], 0))
        .unwrap();
    // A guard-like immediate: a 7-byte nop, then `mov $imm32, %eax` with its imm32 at 8; ret.
    let mut code = vec![0x0f, 0x1f, 0x80, 0, 0, 0, 0, 0xb8];
    code.extend(3u32.to_le_bytes());
    code.push(0xc3);
    let mut g = JitGraph::new({
        let mut g = InMemoryGraph::new("key");
        g.add_function("key", code, vec![], None);
        g
    });
    g.site("key", 8, SiteKind::Imm32);
    let key = jit.link(RegionKind::Method, &g).unwrap();
    assert_eq!(call(&s, "key"), 3);
    jit.set_value(&key.sites[0], 4).unwrap();
    // The second call of `via` goes to `two` now; its first still reaches `one` by its edge.
    jit.retarget(&via.sites[1], s.lookup("two").unwrap())
        .unwrap();
    assert_eq!((call(&s, "via"), call(&s, "key")), (3, 4));
    let old_site = via.sites[1];
    let report = jit.compact(drop_fillers(&s)).unwrap();
    assert!(report.moved.contains(&via.unit) && report.moved.contains(&key.unit));
    assert_eq!(
        (call(&s, "via"), call(&s, "key")),
        (3, 4),
        "the retargeted call and the set key survive the move (not the edges as linked)"
    );
    // Handles taken before are stale; the report (or Jit::unit) gives the new ones.
    assert!(jit.retarget(&old_site, s.lookup("one").unwrap()).is_err());
    let site = report.site(&old_site);
    assert_eq!(jit.unit(via.unit).unwrap().sites[1], site);
    jit.retarget(&site, s.lookup("one").unwrap()).unwrap();
    assert_eq!(call(&s, "via"), 2);
    // Again, with `two` moving under the retargeted site while `via` moves too.
    jit.retarget(&site, s.lookup("two").unwrap()).unwrap();
    let later = unit_of(&s, "later");
    let two = s.lookup("two").unwrap();
    let report = jit
        .compact(|u| {
            if u == later {
                Verdict::Drop
            } else {
                Verdict::Keep
            }
        })
        .unwrap();
    assert!(s.lookup("two").unwrap() < two);
    assert!(report.moved.contains(&via.unit));
    assert_eq!((call(&s, "via"), call(&s, "key")), (3, 4));
}

fn code_used_from_the_fixed_region_is_pinned(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    jit.link(RegionKind::Method, &constant("drop0", 0, 64))
        .unwrap();
    jit.link(RegionKind::Method, &constant("callee", 4, 16))
        .unwrap();
    let fixed = jit
        .link(RegionKind::Fixed, &calls("bridge", &["callee"], 1))
        .unwrap();
    let at = s.lookup("callee").unwrap();
    let report = jit.compact(drop_fillers(&s)).unwrap();
    assert_eq!(
        report.pinned,
        [(
            unit_of(&s, "callee"),
            PinReason::UsedWithoutRelink(fixed.unit)
        )]
    );
    assert_eq!(s.lookup("callee"), Some(at));
    assert_eq!(call(&s, "bridge"), 5);
}

/// `u64 NAME(void) { return ++NAME_count + NAME_k; }` with the counter in data and the
/// constant in read-only data: three segments that move by different distances.
fn counter(name: &str, k: u64) -> JitGraph {
    let (count, konst) = (format!("{name}_count"), format!("{name}_k"));
    let code = vec![
        0x48, 0x8b, 0x05, 0, 0, 0, 0, // mov count(%rip), %rax
        0x48, 0x83, 0xc0, 0x01, // add $1, %rax
        0x48, 0x89, 0x05, 0, 0, 0, 0, // mov %rax, count(%rip)
        0x48, 0x03, 0x05, 0, 0, 0, 0, // add k(%rip), %rax
        0xc3,
    ];
    let mut g = InMemoryGraph::new(name);
    g.add_function(
        name,
        code,
        vec![
            InMemoryEdge::new(3, EdgeKind::Delta32, &count, -4),
            InMemoryEdge::new(14, EdgeKind::Delta32, &count, -4),
            InMemoryEdge::new(21, EdgeKind::Delta32, &konst, -4),
        ],
        None,
    );
    g.add_data(&count, vec![0; 8], 8, MemProt::ReadWrite);
    g.add_data(&konst, k.to_le_bytes().to_vec(), 8, MemProt::Read);
    JitGraph::new(g)
}

fn data_and_read_only_data_move_with_their_code(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    jit.link(RegionKind::Method, &counter("drop_a", 0)).unwrap();
    jit.link(RegionKind::Method, &counter("c1", 100)).unwrap();
    jit.link(RegionKind::Method, &counter("drop_b", 0)).unwrap();
    jit.link(RegionKind::Method, &counter("c2", 200)).unwrap();
    assert_eq!(call(&s, "c1"), 101);
    assert_eq!(call(&s, "c1"), 102);
    assert_eq!(call(&s, "c2"), 201);
    let c2 = unit_of(&s, "c2");
    let old = s.unit_segments(c2).unwrap();
    assert_eq!(old.len(), 3, "code, read-only data, data");
    let report = jit.compact(drop_fillers(&s)).unwrap();
    let new = s.unit_segments(c2).unwrap();
    for (o, n) in old.iter().zip(&new) {
        assert!(n.0 < o.0, "every segment slid down: {o:?} -> {n:?}");
        assert_eq!(report.translate(o.0), Some(n.0));
    }
    assert_eq!(s.lookup("c2_count"), Some(new[2].0));
    assert_eq!(call(&s, "c1"), 103, "the counter's value moved with it");
    assert_eq!(call(&s, "c2"), 202);
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the test knows of a unit: its calls (current targets, by name) and constant.
struct Model {
    add: u32,
    calls: Vec<String>,
}

fn expected(models: &BTreeMap<String, Model>, name: &str) -> u32 {
    let m = &models[name];
    m.calls
        .iter()
        .fold(m.add, |acc, c| acc.wrapping_add(expected(models, c)))
}

fn random_drops_keep_every_survivor_callable_and_correct(at: Where) {
    let s = session(at);
    let jit = zone(&s);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut models: BTreeMap<String, Model> = BTreeMap::new();
    // Level of each unit (callees have lower levels, so calls stay few).
    let mut level: BTreeMap<String, u32> = BTreeMap::new();
    let mut sites: BTreeMap<String, Vec<kiln_jit::Site>> = BTreeMap::new();
    let mut next = 0;
    for round in 0..6 {
        for _ in 0..150 {
            let name = format!("u{next}");
            next += 1;
            let add = rng.next() as u32;
            let low: Vec<&String> = level
                .iter()
                .filter(|(_, l)| **l < 3)
                .map(|(n, _)| n)
                .collect();
            let n_calls = if low.is_empty() {
                0
            } else {
                rng.below(3) as usize
            };
            let callees: Vec<String> = (0..n_calls)
                .map(|_| low[rng.below(low.len() as u64) as usize].clone())
                .collect();
            let lvl = callees.iter().map(|c| level[c] + 1).max().unwrap_or(0);
            let refs: Vec<&str> = callees.iter().map(String::as_str).collect();
            let g = if callees.is_empty() {
                constant(&name, add, 6 + rng.below(80) as usize)
            } else {
                calls(&name, &refs, add)
            };
            let linked = jit.link(RegionKind::Method, &g).unwrap();
            sites.insert(name.clone(), linked.sites);
            level.insert(name.clone(), lvl);
            models.insert(
                name,
                Model {
                    add,
                    calls: callees,
                },
            );
        }
        // Retarget a few sites to other low units (the test's model follows).
        for _ in 0..20 {
            let with_sites: Vec<&String> = models
                .iter()
                .filter(|(_, m)| !m.calls.is_empty())
                .map(|(n, _)| n)
                .collect();
            let from = with_sites[rng.below(with_sites.len() as u64) as usize].clone();
            let k = rng.below(models[&from].calls.len() as u64) as usize;
            let low: Vec<String> = level
                .iter()
                .filter(|(n, l)| **l < level[&from] && models.contains_key(*n))
                .map(|(n, _)| n.clone())
                .collect();
            let to = low[rng.below(low.len() as u64) as usize].clone();
            jit.retarget(&sites[&from][k], s.lookup(&to).unwrap())
                .unwrap();
            models.get_mut(&from).unwrap().calls[k] = to;
        }
        // Drop a random third, and whatever uses a dropped unit, by edge or by retargeted site.
        let mut dropped: BTreeSet<String> = BTreeSet::new();
        let mut order: Vec<(u64, String)> = models
            .keys()
            .map(|n| (n[1..].parse::<u64>().unwrap(), n.clone()))
            .collect();
        order.sort();
        let linked_callees: BTreeMap<String, BTreeSet<String>> = models
            .keys()
            .map(|n| {
                let deps = s
                    .dependencies(unit_of(&s, n))
                    .unwrap()
                    .into_iter()
                    .filter_map(|d| {
                        s.unit_symbols(d)
                            .unwrap()
                            .into_iter()
                            .map(|(n, _)| n)
                            .next()
                    })
                    .collect();
                (n.clone(), deps)
            })
            .collect();
        for (_, n) in &order {
            if rng.below(3) == 0 {
                dropped.insert(n.clone());
            }
        }
        // A retargeted site may point to a newer unit: close until nothing changes.
        loop {
            let users: Vec<String> = models
                .keys()
                .filter(|n| !dropped.contains(*n))
                .filter(|n| {
                    models[*n].calls.iter().any(|c| dropped.contains(c))
                        || linked_callees[*n].iter().any(|c| dropped.contains(c))
                })
                .cloned()
                .collect();
            if users.is_empty() {
                break;
            }
            dropped.extend(users);
        }
        let by_unit: BTreeMap<UnitId, String> =
            models.keys().map(|n| (unit_of(&s, n), n.clone())).collect();
        let report = jit
            .compact(|u| {
                if dropped.contains(&by_unit[&u]) {
                    Verdict::Drop
                } else {
                    Verdict::Keep
                }
            })
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(report.dropped.len(), dropped.len());
        assert!(!report.moved.is_empty(), "round {round} moved nothing");
        for n in &dropped {
            models.remove(n);
            level.remove(n);
            sites.remove(n);
            assert!(s.lookup(n).is_none());
        }
        for (n, list) in sites.iter_mut() {
            let u = unit_of(&s, n);
            *list = jit.unit(u).unwrap().sites;
        }
        for n in models.keys() {
            assert_eq!(
                call(&s, n),
                expected(&models, n),
                "round {round}: {n} after a compaction that moved {} units",
                report.moved.len()
            );
        }
    }
}

// ---- return addresses on the VM's stack ----------------------------------------------------

/// What the callback needs: the zone, the VM's stack, and what it saw.
struct VmState {
    jit: Arc<Jit>,
    stack: Arc<RawMemory>,
    /// The continuations on the VM stack before and after the compaction.
    seen: Vec<(u64, u64)>,
    report: Option<CompactionReport>,
}

static VM: Mutex<Option<VmState>> = Mutex::new(None);

/// Called by JIT'd code with two continuations into method code on the VM stack: compacts the
/// method region (moving that code) and rewrites the continuations from the move map, as a VM
/// rewrites the return addresses of its frames.
extern "C" fn vm_callback() -> u64 {
    let mut guard = VM.lock().unwrap();
    let vm = guard.as_mut().unwrap();
    let s = vm.jit.session().clone();
    let report = vm.jit.compact(drop_fillers(&s)).unwrap();
    let top = vm.stack.load_u64(0) - vm.stack.base().0;
    for off in (8..top as usize).step_by(8) {
        let old = vm.stack.load_u64(off);
        let new = report
            .translate(ExecutorAddr(old))
            .expect("no continuation points into dropped code");
        vm.stack.store_u64(off, new.0);
        vm.seen.push((old, new.0));
    }
    vm.report = Some(report);
    7
}

/// `movabs $vm, %r10; mov (%r10), %r11`: r10 = &vsp, r11 = vsp.
fn load_vsp(vm: u64) -> Vec<u8> {
    let mut c = vec![0x49, 0xba];
    c.extend(vm.to_le_bytes());
    c.extend([0x4d, 0x8b, 0x1a]);
    c
}

/// Push the address `disp` bytes after the end of this 20-byte sequence's `lea` onto the VM
/// stack: `lea disp(%rip), %rax; mov %rax, (%r11); add $8, %r11; mov %r11, (%r10)`, after
/// [`load_vsp`].
fn push_continuation(vm: u64, disp: i32) -> Vec<u8> {
    let mut c = load_vsp(vm);
    c.extend([0x48, 0x8d, 0x05]);
    c.extend(disp.to_le_bytes());
    c.extend([0x49, 0x89, 0x03, 0x49, 0x83, 0xc3, 0x08, 0x4d, 0x89, 0x1a]);
    c
}

/// Pop a continuation off the VM stack and go there: `sub $8, %r11; mov %r11, (%r10);
/// jmp *(%r11)`, after [`load_vsp`].
fn pop_continuation(vm: u64) -> Vec<u8> {
    let mut c = load_vsp(vm);
    c.extend([0x49, 0x83, 0xeb, 0x08, 0x4d, 0x89, 0x1a, 0x41, 0xff, 0x23]);
    c
}

fn function(name: &str, code: Vec<u8>, edges: Vec<InMemoryEdge>) -> JitGraph {
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, edges, None);
    JitGraph::new(g)
}

/// The VM's calling convention here: JIT'd methods keep their continuations on the VM's
/// stack (RawMemory), not on the machine stack, and call the runtime through a trampoline of
/// the fixed region that returns to the continuation on top of it (Cog's frames and
/// `ceReturnToInterpreter` in miniature). The machine stack holds only a return address into
/// the fixed region's entry trampoline.
///
/// `vm_enter(m1)` calls m1, which pushes its continuation and jumps to m2, which pushes its own
/// and calls the runtime (`vm_callback`) with `vm_resume` as the return address. The callback
/// compacts the method region — m1, m2 and add5 move down over dropped fillers — and rewrites
/// both continuations from the move map. `vm_resume` then pops m2's continuation (in its new
/// place), which calls add5 (a relinked edge) and pops m1's, which returns.
fn return_addresses_on_the_vm_stack_follow_the_code(at: Where) {
    let s = session(at);
    let jit = Arc::new(zone(&s));
    let stack = Arc::new(RawMemory::new(4096).unwrap());
    let vm = stack.base().0;
    stack.store_u64(0, vm + 8);
    s.define("vm_callback", vm_callback as *const () as u64);
    // vm_enter(f): sub $8,%rsp; call *%rdi; add $8,%rsp; ret
    jit.link(
        RegionKind::Fixed,
        &function(
            "vm_enter",
            vec![
                0x48, 0x83, 0xec, 0x08, 0xff, 0xd7, 0x48, 0x83, 0xc4, 0x08, 0xc3,
            ],
            vec![],
        ),
    )
    .unwrap();
    // vm_resume: add $8,%rsp (the padding m2 pushed); pop a continuation and go there.
    let mut resume = vec![0x48, 0x83, 0xc4, 0x08];
    resume.extend(pop_continuation(vm));
    jit.link(RegionKind::Fixed, &function("vm_resume", resume, vec![]))
        .unwrap();
    jit.link(RegionKind::Method, &constant("drop0", 0, 96))
        .unwrap();
    // add5(x) = x + 5: lea 5(%rdi), %rax; ret
    jit.link(
        RegionKind::Method,
        &function("add5", vec![0x48, 0x8d, 0x47, 0x05, 0xc3], vec![]),
    )
    .unwrap();
    jit.link(RegionKind::Method, &constant("drop1", 0, 160))
        .unwrap();
    // m2: push continuation (cont2 at 47); sub $8,%rsp; lea vm_resume(%rip),%rax; push %rax;
    // jmp vm_callback. cont2: rdi = 3*rax+1; call add5 (aligned); pop continuation.
    let mut m2 = push_continuation(vm, 47 - 20);
    m2.extend([0x48, 0x83, 0xec, 0x08]); // 30
    m2.extend([0x48, 0x8d, 0x05, 0, 0, 0, 0]); // 34: lea vm_resume(%rip), %rax
    m2.push(0x50); // 41: push %rax
    m2.extend([0xe9, 0, 0, 0, 0]); // 42: jmp vm_callback
    assert_eq!(m2.len(), 47);
    m2.extend([0x48, 0x8d, 0x7c, 0x40, 0x01]); // lea 1(%rax,%rax,2), %rdi
    m2.extend([
        0x48, 0x83, 0xec, 0x08, 0xe8, 0, 0, 0, 0, 0x48, 0x83, 0xc4, 0x08,
    ]); // call add5 at 57
    m2.extend(pop_continuation(vm));
    jit.link(
        RegionKind::Method,
        &function(
            "m2",
            m2,
            vec![
                InMemoryEdge::new(37, EdgeKind::Delta32, "vm_resume", -4),
                InMemoryEdge::new(43, EdgeKind::BranchPCRel32, "vm_callback", -4),
                InMemoryEdge::new(57, EdgeKind::BranchPCRel32, "add5", -4),
            ],
        ),
    )
    .unwrap();
    jit.link(RegionKind::Method, &constant("drop2", 0, 64))
        .unwrap();
    // m1: push continuation (cont1 at 35); jmp m2. cont1: add $100, %rax; ret.
    let mut m1 = push_continuation(vm, 35 - 20);
    m1.extend([0xe9, 0, 0, 0, 0]); // 30: jmp m2
    assert_eq!(m1.len(), 35);
    m1.extend([0x48, 0x83, 0xc0, 0x64, 0xc3]);
    jit.link(
        RegionKind::Method,
        &function(
            "m1",
            m1,
            vec![InMemoryEdge::new(31, EdgeKind::BranchPCRel32, "m2", -4)],
        ),
    )
    .unwrap();
    let (m1_at, m2_at) = (s.lookup("m1").unwrap(), s.lookup("m2").unwrap());
    *VM.lock().unwrap() = Some(VmState {
        jit: jit.clone(),
        stack: stack.clone(),
        seen: Vec::new(),
        report: None,
    });
    let enter = s.lookup("vm_enter").unwrap();
    let r = s.executor().call(enter, &[m1_at.0]).unwrap();
    let state = VM.lock().unwrap().take().unwrap();
    // 7 from the runtime, then m2's continuation (3*7+1, +5 in add5), then m1's (+100).
    assert_eq!(r, 127);
    assert_eq!(stack.load_u64(0), vm + 8, "the VM stack is empty again");
    let report = state.report.unwrap();
    assert_eq!(report.dropped.len(), 3);
    // Both continuations were into code that moved, and were rewritten to the new places.
    assert_eq!(state.seen.len(), 2);
    let (m1_now, m2_now) = (s.lookup("m1").unwrap(), s.lookup("m2").unwrap());
    assert!(m1_now < m1_at && m2_now < m2_at);
    assert_eq!(state.seen[0], (m1_at.0 + 35, m1_now.0 + 35));
    assert_eq!(state.seen[1], (m2_at.0 + 47, m2_now.0 + 47));
    // The old continuation of m1 no longer lies in m1.
    assert!(s
        .unit_at(ExecutorAddr(state.seen[0].0))
        .is_none_or(|(u, _, _)| u != unit_of(&s, "m1")));
    // The code runs again at its new place; nothing is left to drop, so nothing moves.
    *VM.lock().unwrap() = Some(VmState {
        jit: jit.clone(),
        stack: stack.clone(),
        seen: Vec::new(),
        report: None,
    });
    assert_eq!(s.executor().call(enter, &[m1_now.0]).unwrap(), 127);
    let state = VM.lock().unwrap().take().unwrap();
    assert!(state.report.unwrap().moved.is_empty());
    assert_eq!(state.seen[0], (m1_now.0 + 35, m1_now.0 + 35));
}

/// Compactions while another thread links units that call the ones that move: ranges of links
/// in progress stay where they are, units a link in progress binds to stay too, and every unit
/// computes the right thing afterwards. The linking thread calls what it linked only between
/// compactions, at a safepoint (a read lock the compacting thread takes for writing): no thread
/// may run method-region code while a compaction moves it (`Jit::compact`'s contract), and a VM
/// stops its mutators the same way.
fn compaction_while_another_thread_links(at: Where) {
    const LINKS: u32 = 2000;
    let s = session(at);
    let jit = Arc::new(zone(&s));
    for k in 0..10 {
        jit.link(RegionKind::Method, &constant(&format!("drop_k{k}"), 0, 48))
            .unwrap();
        jit.link(RegionKind::Method, &constant(&format!("k{k}"), k, 32))
            .unwrap();
    }
    let safepoint = Arc::new(std::sync::RwLock::new(()));
    let linker = {
        let (s, jit, safepoint) = (s.clone(), jit.clone(), safepoint.clone());
        std::thread::spawn(move || {
            for i in 0..LINKS {
                let k = i % 10;
                jit.link(
                    RegionKind::Method,
                    &calls(&format!("t{i}"), &[&format!("k{k}")], 1000 * i),
                )
                .unwrap();
                let _running = safepoint.read().unwrap();
                assert_eq!(call(&s, &format!("t{i}")), 1000 * i + k, "t{i} as linked");
            }
        })
    };
    let mut rounds = 0;
    let mut pinned_for_links = 0;
    while !linker.is_finished() || rounds < 3 {
        jit.link(
            RegionKind::Method,
            &constant(&format!("drop_r{rounds}"), 0, 64),
        )
        .unwrap();
        let report = {
            let _stopped = safepoint.write().unwrap();
            jit.compact(drop_fillers(&s)).unwrap()
        };
        pinned_for_links += report
            .pinned
            .iter()
            .filter(|(_, why)| *why == PinReason::Linking)
            .count();
        rounds += 1;
    }
    linker.join().unwrap();
    for k in 0..10 {
        assert_eq!(call(&s, &format!("k{k}")), k);
    }
    for i in 0..LINKS {
        assert_eq!(call(&s, &format!("t{i}")), 1000 * i + i % 10, "t{i}");
    }
    println!("{rounds} compactions; units pinned for a link in progress: {pinned_for_links}");
}

fn main() {
    support::main(|| {
        let everywhere: [(&str, Scenario); 8] = [
            (
                "survivors_slide_down_and_callers_follow",
                survivors_slide_down_and_callers_follow,
            ),
            (
                "pinned_units_stay_and_others_pack_around_them",
                pinned_units_stay_and_others_pack_around_them,
            ),
            (
                "a_dropped_unit_still_used_is_refused",
                a_dropped_unit_still_used_is_refused,
            ),
            (
                "sites_keep_what_kiln_jit_wrote_into_them",
                sites_keep_what_kiln_jit_wrote_into_them,
            ),
            (
                "code_used_from_the_fixed_region_is_pinned",
                code_used_from_the_fixed_region_is_pinned,
            ),
            (
                "data_and_read_only_data_move_with_their_code",
                data_and_read_only_data_move_with_their_code,
            ),
            (
                "random_drops_keep_every_survivor_callable_and_correct",
                random_drops_keep_every_survivor_callable_and_correct,
            ),
            (
                "compaction_while_another_thread_links",
                compaction_while_another_thread_links,
            ),
        ];
        let in_process: [(&str, Scenario); 1] = [(
            "return_addresses_on_the_vm_stack_follow_the_code",
            return_addresses_on_the_vm_stack_follow_the_code,
        )];
        let mut tests = support::in_places(&everywhere, &support::EVERYWHERE);
        tests.extend(support::in_places(&in_process, &support::EVERYWHERE[..1]));
        tests
    });
}
