//! Write windows: the VM's own patches land, are checked to lie in the zone, and never need a
//! writable and executable mapping.

use kiln::graph::InMemoryGraph;
use kiln::{DebugOptions, ExecutorAddr, Session};
use kiln_jit::{Jit, JitGraph, RegionKind, SiteKind, ZoneConfig};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn session() -> Arc<Session> {
    let s = Session::in_process();
    s.set_debug(DebugOptions::none());
    Arc::new(s)
}

/// `u64 NAME(void) { return value; }` with the imm64 of its `movabs` 8-aligned (offset 8).
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

/// `u32 NAME(void) { return value; }` as `nop3; mov $imm32, %eax; ret`: the imm32 at offset 4.
fn constant32(name: &str, value: u32) -> JitGraph {
    let mut code = vec![0x0f, 0x1f, 0x00, 0xb8];
    code.extend(value.to_le_bytes());
    code.push(0xc3);
    let mut g = InMemoryGraph::new(name);
    g.add_function(name, code, vec![], None);
    let mut g = JitGraph::new(g);
    g.site(name, 4, SiteKind::Imm32);
    g
}

fn call(s: &Session, name: &str) -> u64 {
    let f = s.lookup(name).unwrap();
    s.executor().call(f, &[]).unwrap()
}

/// The lines of /proc/self/maps whose permissions include both `w` and `x`.
fn writable_and_executable() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| {
            let perms = l.split_whitespace().nth(1).unwrap_or("");
            perms.contains('w') && perms.contains('x')
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn windows_write_and_no_mapping_is_ever_writable_and_executable() {
    assert_eq!(writable_and_executable(), Vec::<String>::new(), "before");
    let s = session();
    let jit = Jit::new(s.clone(), &ZoneConfig::new(4 << 20)).unwrap();
    let wide = jit.link(RegionKind::Method, &constant("wide", 1)).unwrap();
    let narrow = jit
        .link(RegionKind::Fixed, &constant32("narrow", 1))
        .unwrap();
    let (w_at, n_at) = (wide.sites[0].addr, narrow.sites[0].addr);

    // A sampler scans the maps while windows open and close.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, samples, seen) = (stop.clone(), samples.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let bad = writable_and_executable();
                if !bad.is_empty() {
                    seen.lock().unwrap().extend(bad);
                }
                samples.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut i = 0u64;
    while i < 2000 || samples.load(Ordering::Relaxed) < 20 {
        jit.write(|w| {
            w.write_u64(w_at, i)?.write_u32(n_at, i as u32 ^ 0x5a5a)?;
            Ok(())
        })
        .unwrap();
        if i.is_multiple_of(100) {
            assert_eq!(call(&s, "wide"), i);
            assert_eq!(call(&s, "narrow"), (i as u32 ^ 0x5a5a) as u64);
        }
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(samples.load(Ordering::Relaxed) >= 20);
    assert_eq!(*seen.lock().unwrap(), Vec::<String>::new(), "during");
    assert_eq!(writable_and_executable(), Vec::<String>::new(), "after");

    // The closure's value comes back; `read` sees memory as it is.
    let before = jit
        .write(|w| w.read(w_at, 8))
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap();
    assert_eq!(before, call(&s, "wide"));
}

#[test]
fn windows_refuse_what_is_not_the_zones_and_write_nothing_on_failure() {
    let s = session();
    let jit = Jit::new(s.clone(), &ZoneConfig::new(1 << 20)).unwrap();
    let a = jit.link(RegionKind::Method, &constant("a", 7)).unwrap();
    let imm = a.sites[0].addr;
    let local = 0u64;
    let stack = ExecutorAddr(&local as *const u64 as u64);
    let libc_abs = s.executor().lookup(&[b"abs"], &[], true).unwrap()[0].unwrap();
    for foreign in [ExecutorAddr(0), ExecutorAddr(0x1000), stack, libc_abs] {
        let e = jit
            .write(|w| w.write_u32(foreign, 0).map(drop))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not inside one part"), "{e}");
    }
    assert!(jit
        .write(|w| w.write(ExecutorAddr(u64::MAX - 2), &[0; 8]).map(drop))
        .is_err());
    // Past the end of the unit's code segment (17 bytes of code): refused.
    let (seg, size) = s.unit_segments(a.unit).unwrap()[0];
    let e = jit
        .write(|w| {
            w.write(ExecutorAddr(seg.0 + size - 2), &[0x90; 4])
                .map(drop)
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("past the end") || e.contains("free space"),
        "{e}"
    );
    // Free space of the zone is writable; free space and a unit at once is not.
    let (method_code, method_size) = jit.zone().method().code();
    let free = ExecutorAddr(method_code.0 + method_size - 64);
    jit.write(|w| w.write(free, &[0xcc; 16]).map(drop)).unwrap();
    let x = jit.link(RegionKind::Method, &constant("x", 1)).unwrap();
    jit.link(RegionKind::Method, &constant("y", 2)).unwrap();
    let (x_at, y_at) = (s.lookup("x").unwrap(), s.lookup("y").unwrap());
    assert!(x_at < y_at);
    jit.remove(x.unit).unwrap();
    let e = jit
        .write(|w| {
            w.write(x_at, &vec![0xcc; (y_at.0 - x_at.0 + 1) as usize])
                .map(drop)
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("covers free space and part of"), "{e}");
    assert_eq!(call(&s, "y"), 2);
    // A failing window writes nothing, even what it added before failing.
    let r = jit.write(|w| {
        w.write_u64(imm, 99)?;
        w.write_u32(ExecutorAddr(0x1000), 1)?;
        Ok(())
    });
    assert!(r.is_err());
    assert_eq!(call(&s, "a"), 7);
    let r: kiln_jit::Result<()> = jit.write(|w| {
        w.write_u64(imm, 99)?;
        Err(kiln_jit::Error::Config("the VM changed its mind".into()))
    });
    assert!(r.is_err());
    assert_eq!(call(&s, "a"), 7);
    // A removed unit's bytes are free space again (poisoned): a window may write them, a
    // site of it may not be retargeted.
    jit.remove(a.unit).unwrap();
    assert!(jit.set_value(&a.sites[0], 1).is_err());
}
