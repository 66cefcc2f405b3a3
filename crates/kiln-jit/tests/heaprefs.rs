//! References from compiled code to the VM's heap: enumerated through a read-only view, updated
//! after a moving GC in one write window while code runs, carried along by compaction; never a
//! writable and executable mapping.

use kiln::graph::InMemoryGraph;
use kiln::{DebugOptions, ExecutorAddr, Session};
use kiln_jit::{HeapRef, Jit, JitGraph, RegionKind, Verdict, ZoneConfig};
use kiln_target::RawMemory;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Object size in the test heap: a value word and a padding word.
const OBJ: usize = 16;
/// The heap's two halves (semispaces): objects are copied from one to the other.
const HALF: usize = 32 << 10;

fn session() -> Arc<Session> {
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    Arc::new(s)
}

/// `u64 NAME(void) { return obj->value; }` with `obj` an absolute 64-bit reference at 8.
fn load64(name: &str, obj: u64) -> JitGraph {
    let mut code = vec![0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x48, 0xb8];
    code.extend(obj.to_le_bytes());
    code.extend([0x48, 0x8b, 0x00, 0xc3]); // mov (%rax), %rax; ret
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    let mut g = JitGraph::new(g);
    g.heap_ref(name, 8, 8);
    g
}

/// `u64 NAME(void) { return a->value + b->value; }`, two 64-bit references (at 8 and 24).
fn sum64(name: &str, a: u64, b: u64) -> JitGraph {
    let mut code = vec![0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x48, 0xb8];
    code.extend(a.to_le_bytes());
    code.extend([0x48, 0x8b, 0x10, 0x0f, 0x1f, 0x00, 0x48, 0xb8]); // mov (%rax),%rdx; nop3
    code.extend(b.to_le_bytes());
    code.extend([0x48, 0x8b, 0x00, 0x48, 0x01, 0xd0, 0xc3]); // mov (%rax),%rax; add %rdx,%rax
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    let mut g = JitGraph::new(g);
    g.heap_ref(name, 8, 8).heap_ref(name, 24, 8);
    g
}

/// `u64 NAME(void) { return heap[offset].value; }` with `offset` a compressed 32-bit reference
/// (an offset from the heap's base) at 4: `mov $offset, %eax; movabs $base, %rcx;
/// mov (%rcx,%rax), %rax; ret`.
fn load32(name: &str, base: u64, offset: u32) -> JitGraph {
    let mut code = vec![0x0f, 0x1f, 0x00, 0xb8];
    code.extend(offset.to_le_bytes());
    code.extend([0x48, 0xb9]);
    code.extend(base.to_le_bytes());
    code.extend([0x48, 0x8b, 0x04, 0x01, 0xc3]);
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    let mut g = JitGraph::new(g);
    g.heap_ref(name, 4, 4);
    g
}

fn filler(name: &str) -> JitGraph {
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, vec![0xcc; 96], vec![], None);
    JitGraph::new(g)
}

fn call(s: &Session, name: &str) -> u64 {
    s.executor().call(s.lookup(name).unwrap(), &[]).unwrap()
}

/// Lines of /proc/self/maps that are writable and executable.
fn wx_mappings() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| {
            let perms = l.split_whitespace().nth(1).unwrap_or("");
            perms.contains('w') && perms.contains('x')
        })
        .map(str::to_string)
        .collect()
}

/// A thread that reads /proc/self/maps until stopped and collects every W+X line it saw.
struct MapsWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, u64)>,
}

impl MapsWatch {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut seen, mut scans) = (Vec::new(), 0u64);
            while !s.load(Ordering::Relaxed) {
                seen.extend(wx_mappings());
                scans += 1;
            }
            seen.extend(wx_mappings());
            (seen, scans + 1)
        });
        MapsWatch { stop, thread }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (seen, scans) = self.thread.join().unwrap();
        assert!(scans > 1, "the maps were scanned");
        assert!(
            seen.is_empty(),
            "writable and executable mappings: {seen:?}"
        );
    }
}

/// The test VM's heap: objects in one half, copied to the other by `gc`.
struct Heap {
    mem: RawMemory,
    /// Offset of each live object, by its number.
    at: BTreeMap<usize, usize>,
    /// Which half the objects are in.
    half: usize,
}

impl Heap {
    fn new(objects: usize) -> Self {
        let mem = RawMemory::new(2 * HALF).unwrap();
        let mut at = BTreeMap::new();
        for i in 0..objects {
            let off = i * OBJ;
            mem.store_u64(off, 1000 + i as u64);
            at.insert(i, off);
        }
        Heap { mem, at, half: 0 }
    }

    fn base(&self) -> u64 {
        self.mem.base().0
    }

    fn addr(&self, i: usize) -> u64 {
        self.base() + self.at[&i] as u64
    }

    /// Copy every object to the other half (in reverse order, so that every offset changes),
    /// leaving the old copies as they are. Returns old offset → new offset.
    fn copy_all(&mut self) -> BTreeMap<u64, u64> {
        let to = (1 - self.half) * HALF;
        let n = self.at.len();
        let mut forward = BTreeMap::new();
        for (k, (_, off)) in self.at.iter_mut().enumerate() {
            let new = to + (n - 1 - k) * OBJ;
            self.mem.copy_words(*off, new, OBJ / 8).unwrap();
            forward.insert(*off as u64, new as u64);
            *off = new;
        }
        self.half = 1 - self.half;
        forward
    }

    /// Overwrite the half the objects left.
    fn poison_old_half(&self) {
        let from = (1 - self.half) * HALF;
        for off in (from..from + HALF).step_by(8) {
            self.mem.store_u64(off, 0xdead_0000 + off as u64);
        }
    }

    /// The new value of a reference after `copy_all` gave `forward`.
    fn forwarded(&self, r: &HeapRef, old: u64, forward: &BTreeMap<u64, u64>) -> u64 {
        if r.width == 8 {
            self.base() + forward[&(old - self.base())]
        } else {
            forward[&old]
        }
    }
}

#[test]
fn a_moving_gc_updates_the_code_and_the_code_sees_the_new_objects() {
    let watch = MapsWatch::start();
    let s = session();
    let jit = Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap();
    let mut heap = Heap::new(64);
    // Functions referencing objects: 64-bit, two 64-bit, compressed 32-bit; in both regions.
    let mut expect: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for i in 0..20 {
        jit.link(RegionKind::Method, &filler(&format!("drop{i}")))
            .unwrap();
        let (name, g, objs) = match i % 3 {
            0 => (
                format!("l64_{i}"),
                load64(&format!("l64_{i}"), heap.addr(i)),
                vec![i],
            ),
            1 => {
                let name = format!("sum_{i}");
                let g = sum64(&name, heap.addr(i), heap.addr(i + 30));
                (name, g, vec![i, i + 30])
            }
            _ => {
                let name = format!("l32_{i}");
                let g = load32(&name, heap.base(), heap.at[&(i + 10)] as u32);
                (name, g, vec![i + 10])
            }
        };
        let region = if i == 5 {
            RegionKind::Fixed
        } else {
            RegionKind::Method
        };
        jit.link(region, &g).unwrap();
        expect.insert(name, objs);
    }
    let check = |heap: &Heap| {
        for (name, objs) in &expect {
            let want: u64 = objs.iter().map(|&i| heap.mem.load_u64(heap.at[&i])).sum();
            assert_eq!(call(&s, name), want, "{name}");
        }
    };
    check(&heap);
    // The GC's marking: every reference with the object it names.
    let refs = jit.heap_refs().unwrap();
    assert_eq!(refs.len(), 7 + 2 * 7 + 6, "one per declared reference");
    for (r, v) in &refs {
        let valid = if r.width == 8 {
            heap.at.values().any(|&off| heap.base() + off as u64 == *v)
        } else {
            heap.at.values().any(|&off| off as u64 == *v)
        };
        assert!(valid, "{r:?} holds {v:#x}, which is no object");
    }
    // Mutators run the code while the GC moves every object and updates the references: they
    // see the old or the new objects (the same values), never a torn reference.
    let stop = Arc::new(AtomicBool::new(false));
    let mutators: Vec<_> = (0..2)
        .map(|t| {
            let (s, stop) = (s.clone(), stop.clone());
            let names: Vec<(String, u64)> = expect
                .iter()
                .map(|(n, objs)| (n.clone(), objs.iter().map(|&i| 1000 + i as u64).sum()))
                .collect();
            std::thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) || calls < 100 {
                    let (name, want) = &names[(calls as usize + t) % names.len()];
                    assert_eq!(call(&s, name), *want, "{name} mid-GC");
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for _ in 0..20 {
        let forward = heap.copy_all();
        let changed = jit
            .update_heap_refs(|r, old| heap.forwarded(r, old, &forward))
            .unwrap();
        assert_eq!(changed, refs.len());
    }
    stop.store(true, Ordering::Relaxed);
    for m in mutators {
        assert!(m.join().unwrap() >= 100);
    }
    // Stopped: the old half is garbage now, and the code reads only the new objects.
    heap.poison_old_half();
    check(&heap);
    let values: BTreeMap<u64, u64> = jit
        .heap_refs()
        .unwrap()
        .into_iter()
        .map(|(r, v)| (r.addr.0, v))
        .collect();
    // Compaction carries the references along: same values, new places.
    let report = jit
        .compact(|u| {
            let names = s.unit_symbols(u).unwrap();
            if names.iter().any(|(n, _)| n.starts_with("drop")) {
                Verdict::Drop
            } else {
                Verdict::Keep
            }
        })
        .unwrap();
    assert!(!report.moved.is_empty());
    let after = jit.heap_refs().unwrap();
    assert_eq!(after.len(), values.len());
    let mut moved = 0;
    for (r, v) in &after {
        let old = values
            .iter()
            .find(|(a, _)| report.translate(ExecutorAddr(**a)) == Some(r.addr))
            .unwrap_or_else(|| panic!("{r:?} is not where a reference was before"));
        assert_eq!(old.1, v, "the value moved with the code");
        moved += usize::from(*old.0 != r.addr.0);
    }
    assert!(moved > 0);
    check(&heap);
    // And the GC keeps working on the moved code.
    let forward = heap.copy_all();
    jit.update_heap_refs(|r, old| heap.forwarded(r, old, &forward))
        .unwrap();
    heap.poison_old_half();
    check(&heap);
    watch.finish();
}

#[test]
fn bad_heap_reference_writes_are_refused_whole() {
    let s = session();
    let jit = Jit::new(s.clone(), &ZoneConfig::new(1 << 20)).unwrap();
    let heap = Heap::new(4);
    let a = jit
        .link(RegionKind::Method, &load64("a64", heap.addr(0)))
        .unwrap();
    let b = jit
        .link(
            RegionKind::Method,
            &load32("b32", heap.base(), heap.at[&1] as u32),
        )
        .unwrap();
    let (ra, rb) = (a.heap_refs[0], b.heap_refs[0]);
    // A 32-bit reference cannot take a value wider than 32 bits: nothing is written, not even
    // the valid first change.
    let e = jit
        .write_heap_refs(&[(ra, heap.addr(2)), (rb, 1 << 32)])
        .unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
    assert_eq!(call(&s, "a64"), 1000);
    // A reference of no live unit is refused.
    jit.remove(b.unit).unwrap();
    let e = jit.write_heap_refs(&[(rb, 0)]).unwrap_err();
    assert!(e.to_string().contains("no live unit"), "{e}");
    // A good write lands.
    jit.write_heap_refs(&[(ra, heap.addr(3))]).unwrap();
    assert_eq!(call(&s, "a64"), 1003);
    assert_eq!(jit.heap_refs().unwrap(), [(ra, heap.addr(3))]);
}
