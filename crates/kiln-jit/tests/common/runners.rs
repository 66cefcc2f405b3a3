//! Threads running JIT'd code in a loop with a VM's safepoint handshake, shared by the
//! inline-cache, PIC and redefinition tests.

use kiln_jit::{Epoch, Jit};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Threads calling JIT'd code in a loop, with a VM's safepoint handshake: each counts the
/// iterations it finished (at which point it runs no JIT'd code), and what an iteration finds
/// wrong is recorded, not panicked on (a stopped runner would stall the handshake).
pub struct Runners {
    stop: Arc<AtomicBool>,
    progress: Vec<Arc<AtomicU64>>,
    failures: Arc<Mutex<Vec<String>>>,
    handles: Vec<std::thread::JoinHandle<u64>>,
}

impl Runners {
    /// `n` threads running `iteration(thread, count)`: `Ok(hits)`, or what went wrong.
    pub fn spawn<F>(n: usize, iteration: F) -> Runners
    where
        F: Fn(usize, u64) -> Result<u64, String> + Send + Sync + 'static,
    {
        let iteration = Arc::new(iteration);
        let stop = Arc::new(AtomicBool::new(false));
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let progress: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::default()).collect();
        let handles = progress
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (stop, p, failures, iteration) =
                    (stop.clone(), p.clone(), failures.clone(), iteration.clone());
                std::thread::spawn(move || {
                    let mut hits = 0;
                    let mut count = 0;
                    while !stop.load(Ordering::Relaxed) {
                        match iteration(i, count) {
                            Ok(h) => hits += h,
                            Err(e) => {
                                let mut f = failures.lock().unwrap();
                                if f.len() < 10 {
                                    f.push(e);
                                }
                            }
                        }
                        count += 1;
                        p.fetch_add(1, Ordering::SeqCst);
                    }
                    hits
                })
            })
            .collect();
        Runners {
            stop,
            progress,
            failures,
            handles,
        }
    }

    /// Panic with what the runners found wrong, if anything.
    pub fn check(&self) {
        let f = self.failures.lock().unwrap();
        assert!(f.is_empty(), "{f:#?}");
    }

    /// The VM's handshake: begin an epoch, wait until every runner has finished an iteration
    /// since, return the epoch (now safe to reclaim).
    pub fn quiesce(&self, jit: &Jit) -> Epoch {
        let e = jit.grace_start();
        let seen: Vec<u64> = self
            .progress
            .iter()
            .map(|p| p.load(Ordering::SeqCst))
            .collect();
        for (p, s) in self.progress.iter().zip(seen) {
            while p.load(Ordering::SeqCst) == s {
                std::thread::yield_now();
            }
        }
        self.check();
        e
    }

    /// Stop the runners; the hits they counted.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let hits = self.handles.drain(..).map(|h| h.join().unwrap()).sum();
        self.check();
        hits
    }
}
