//! What patching costs, per operation, in process: retargeting a site, setting a monomorphic
//! inline cache (each way it can go), building and growing a 4-case PIC, redefining a function,
//! and reclaiming what was retired. Every patch of code ends with the cores serialized
//! (`membarrier` SYNC_CORE), which is most of the cost. Prints; asserts nothing.
//!
//! `cargo run --release -p kiln-jit --example ic_bench [N]`

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, ExecutorAddr, Session};
use kiln_jit::{IcUpdate, Jit, JitGraph, PicConfig, PicTarget, RegionKind, SiteKind, ZoneConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn returns(name: &str, value: u32) -> JitGraph {
    let mut code = vec![0xb8];
    code.extend(value.to_le_bytes());
    code.push(0xc3);
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    JitGraph::new(g)
}

/// `mov %rdi, %rax; call SITE; ret`, the site a `Rel32` at 4.
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

/// Durations of one kind of operation: the median (what one costs on a quiet core) and the
/// mean (with whatever else the machine was doing).
#[derive(Default)]
struct Times(Vec<Duration>);

impl Times {
    fn time<R>(&mut self, op: impl FnOnce() -> R) -> R {
        let at = Instant::now();
        let r = op();
        self.0.push(at.elapsed());
        r
    }

    fn print(&mut self, what: &str) {
        self.0.sort_unstable();
        let n = self.0.len().max(1);
        let mean = self.0.iter().sum::<Duration>().as_nanos() / n as u128;
        let median = self.0.get(n / 2).map_or(0, |d| d.as_nanos());
        println!("  {what:<34} {median:>8} ns median {mean:>8} ns mean  ({n} ops)");
    }
}

fn main() -> kiln_jit::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let s = Arc::new(Session::in_process());
    s.set_debug(DebugOptions::none());
    let jit = Jit::new(s.clone(), &ZoneConfig::new(64 << 20))?;
    jit.link(RegionKind::Fixed, &returns("miss", 0))?;
    for k in 1..=5 {
        jit.link(RegionKind::Method, &returns(&format!("t{k}"), k))?;
    }
    let t: Vec<ExecutorAddr> = (1..=5)
        .map(|k| s.lookup(&format!("t{k}")).expect("linked"))
        .collect();
    println!(
        "kiln-jit patching, in process, {n} operations each (cores serialized with {})",
        kiln_target::sync_cores_method()
    );

    // A window with one aligned 4-byte store: the floor of every patch below.
    let site = jit
        .link(RegionKind::Method, &send_site("send", "miss"))?
        .sites[0];
    let mut t_window = Times::default();
    for i in 0..n {
        t_window.time(|| jit.write(|w| w.write_rel32(site.addr, t[i % 2]).map(drop)))?;
    }
    t_window.print("write window, one rel32");

    // Retarget a site (remembered, its relink edge updated).
    let mut t_retarget = Times::default();
    for i in 0..n {
        t_retarget.time(|| jit.retarget(&site, t[i % 2]))?;
    }
    t_retarget.print("retarget a site");

    // Monomorphic inline cache.
    let g = jit.link(RegionKind::Method, &guarded("guarded", "miss"))?;
    let ic = jit.mono_ic(g.sites[0], g.sites[1], 0)?;
    let (mut fill, mut rekey, mut change) = (Times::default(), Times::default(), Times::default());
    for i in 0..n / 4 {
        let k = i as u64;
        // From empty and quiet: call, then key (2 stores).
        ic.clear(&jit)?;
        jit.reclaim_retired()?;
        let done = fill.time(|| ic.set(&jit, 0x1000 + k, t[0]))?;
        assert_eq!(done, IcUpdate::Done);
        // Same target, another key (1 store).
        rekey.time(|| ic.set(&jit, 0x2000 + k, t[0]))?;
        // Another target: the empty key now, the rest at the next reclaim (3 stores).
        change.time(|| {
            ic.set(&jit, 0x3000 + k, t[1])?;
            jit.reclaim_retired()
        })?;
    }
    fill.print("set an IC: empty -> set");
    rekey.print("set an IC: new key, same target");
    change.print("set an IC: new target, + reclaim");

    // PICs: build one of 4 cases (link + retarget + retire the previous one).
    let config = PicConfig {
        max_cases: 8,
        ..PicConfig::new("miss")
    };
    let four: Vec<(u64, PicTarget)> = (1..=4u64)
        .map(|k| (k, PicTarget::Name(format!("t{k}"))))
        .collect();
    let (mut build, mut grow, mut reclaim) = (Times::default(), Times::default(), Times::default());
    for i in 0..n / 10 {
        build.time(|| jit.build_pic(&site, &config, &four))?;
        let pic = jit.build_pic(&site, &config, &four[..3])?;
        grow.time(|| pic.grow(&jit, 4, "t4"))?;
        if i % 100 == 99 {
            // 300 PICs retired since the last reclaim: the time per PIC freed.
            let at = Instant::now();
            let freed = jit.reclaim_retired()?.freed.len().max(1) as u32;
            reclaim.0.push(at.elapsed() / freed);
        }
    }
    build.print("build a 4-case PIC");
    grow.print("grow a PIC from 3 to 4 cases");
    reclaim.print("reclaim, per retired PIC");

    // Redefine a function a site was retargeted to (kiln-jit retargets the site).
    jit.retarget(&site, t[4])?;
    let mut redefine = Times::default();
    for i in 0..n / 20 {
        redefine.time(|| jit.redefine("t5", &returns("t5", i as u32)))?;
        if i % 100 == 99 {
            jit.reclaim_retired()?;
        }
    }
    redefine.print("redefine a function");
    Ok(())
}
