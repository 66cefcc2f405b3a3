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

fn per_op(total: Duration, n: usize) -> f64 {
    total.as_nanos() as f64 / n as f64
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
    let start = Instant::now();
    for i in 0..n {
        jit.write(|w| w.write_rel32(site.addr, t[i % 2]).map(drop))?;
    }
    println!(
        "  write window, one rel32      {:>9.0} ns",
        per_op(start.elapsed(), n)
    );

    // Retarget a site (remembered, its relink edge updated).
    let start = Instant::now();
    for i in 0..n {
        jit.retarget(&site, t[i % 2])?;
    }
    println!(
        "  retarget a site              {:>9.0} ns",
        per_op(start.elapsed(), n)
    );

    // Monomorphic inline cache.
    let g = jit.link(RegionKind::Method, &guarded("guarded", "miss"))?;
    let ic = jit.mono_ic(g.sites[0], g.sites[1], 0)?;
    let (mut fill, mut rekey, mut change) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let m = n / 4;
    for i in 0..m {
        // From empty and quiet: call, then key (2 stores).
        ic.clear(&jit)?;
        jit.reclaim_retired()?;
        let at = Instant::now();
        assert_eq!(ic.set(&jit, 0x1000 + i as u64, t[0])?, IcUpdate::Done);
        fill += at.elapsed();
        // Same target, another key (1 store).
        let at = Instant::now();
        ic.set(&jit, 0x2000 + i as u64, t[0])?;
        rekey += at.elapsed();
        // Another target: empty key now, the rest at the next reclaim (3 stores + reclaim).
        let at = Instant::now();
        ic.set(&jit, 0x3000 + i as u64, t[1])?;
        jit.reclaim_retired()?;
        change += at.elapsed();
    }
    println!("  set an IC, empty -> set      {:>9.0} ns", per_op(fill, m));
    println!(
        "  set an IC, new key same call {:>9.0} ns",
        per_op(rekey, m)
    );
    println!(
        "  set an IC, new target +reclaim {:>7.0} ns",
        per_op(change, m)
    );

    // PICs: build one of 4 cases (link + retarget + retire the previous one).
    let config = PicConfig {
        max_cases: 8,
        ..PicConfig::new("miss")
    };
    let four: Vec<(u64, PicTarget)> = (1..=4u64)
        .map(|k| (k, PicTarget::Name(format!("t{k}"))))
        .collect();
    let builds = n / 10;
    let (mut build, mut reclaim, mut freed) = (Duration::ZERO, Duration::ZERO, 0);
    for i in 0..builds {
        let at = Instant::now();
        jit.build_pic(&site, &config, &four)?;
        build += at.elapsed();
        if i % 100 == 99 {
            let at = Instant::now();
            freed += jit.reclaim_retired()?.freed.len();
            reclaim += at.elapsed();
        }
    }
    println!(
        "  build a 4-case PIC           {:>9.0} ns",
        per_op(build, builds)
    );
    println!(
        "  reclaim, per PIC freed       {:>9.0} ns",
        per_op(reclaim, freed.max(1))
    );
    // Grow 3 -> 4 cases.
    let mut grow = Duration::ZERO;
    for i in 0..builds {
        let pic = jit.build_pic(&site, &config, &four[..3])?;
        let at = Instant::now();
        pic.grow(&jit, 4, "t4")?;
        grow += at.elapsed();
        if i % 100 == 99 {
            jit.reclaim_retired()?;
        }
    }
    jit.reclaim_retired()?;
    println!(
        "  grow a PIC from 3 to 4 cases {:>9.0} ns",
        per_op(grow, builds)
    );

    // Redefine a function called through a PIC and a retargeted site.
    jit.retarget(&site, t[4])?;
    let redefs = n / 20;
    let start = Instant::now();
    for i in 0..redefs {
        jit.redefine("t5", &returns("t5", i as u32))?;
    }
    let redefine = start.elapsed();
    jit.reclaim_retired()?;
    println!(
        "  redefine a function          {:>9.0} ns",
        per_op(redefine, redefs)
    );
    Ok(())
}
