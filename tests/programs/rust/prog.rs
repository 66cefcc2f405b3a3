// A Rust program for kiln: threads, thread-locals, a panic caught with catch_unwind through
// JIT'd frames, collections and formatting. Built natively as a binary, and for kiln as a
// staticlib (which carries the whole std and rustc's allocator shim) with `main` exported as
// `rust_main` (see crates/kiln-cli/tests/rust.rs).
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
thread_local! { static COUNTER: Cell<u32> = const { Cell::new(5) }; }
fn main() {
    let shared = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..4).map(|i| {
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            COUNTER.with(|c| c.set(c.get() + i));
            let v = COUNTER.with(|c| c.get());
            s.lock().unwrap().push((i, v));
        })
    }).collect();
    for h in handles { h.join().unwrap(); }
    let mut v = shared.lock().unwrap().clone(); v.sort();
    println!("threads: {:?}, main counter {}", v, COUNTER.with(|c| c.get()));
    let r = std::panic::catch_unwind(|| { if v.len() == 4 { panic!("boom {}", v.len()); } 1 });
    println!("caught panic: {}", r.is_err());
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for w in "the quick brown fox jumps over the lazy dog the end".split(' ') { *m.entry(w.to_string()).or_default() += 1; }
    let h: HashMap<_, _> = m.iter().map(|(k, v)| (k.len(), *v)).collect();
    println!("{:?} {} {:.3}", m, h.len(), std::f64::consts::PI.sqrt());
    std::process::exit(3);
}
