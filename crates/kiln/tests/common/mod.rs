//! Helpers shared by the in-process tests: what /proc/self says about this process's memory.
#![allow(dead_code)] // each test file uses a subset

pub mod jit;

/// Mappings that are writable and executable at once.
pub fn wx_mappings() -> Vec<String> {
    maps()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.contains('w') && p.contains('x'))
        })
        .map(str::to_string)
        .collect()
}

/// Whether `addr` lies in any mapping.
pub fn mapped(addr: u64) -> bool {
    maps().lines().any(|l| {
        let r = l.split_whitespace().next().unwrap();
        let (a, b) = r.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        a <= addr && addr < b
    })
}

/// The number of mappings.
pub fn mappings() -> usize {
    maps().lines().count()
}

/// A field of /proc/self/status in KiB (`VmRSS:`).
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn maps() -> String {
    std::fs::read_to_string("/proc/self/maps").unwrap()
}
