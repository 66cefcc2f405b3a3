//! This process's memory, as the kernel counts it (`/proc/self/status` and `/proc/self/smaps`):
//! the same reading for every linker under test.

use std::io::{BufRead, BufReader};

/// One reading of `/proc/self/status` and `/proc/self/smaps`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemSnapshot {
    /// VmSize: all mapped address space, including PROT_NONE reservations.
    pub vm_size: u64,
    /// VmRSS: resident memory.
    pub vm_rss: u64,
    /// Total size of the executable mappings not backed by a file (anonymous, shared anonymous
    /// or memfd): where JIT'd code lives.
    pub exec_mapped: u64,
    /// Resident part of those (`Rss` in `/proc/self/smaps`): code pages actually backed by
    /// memory, whatever address space was reserved around them.
    pub exec_rss: u64,
    /// Number of mappings (the kernel allows `vm.max_map_count`, 65,530 by default).
    pub mappings: u64,
}

impl MemSnapshot {
    pub fn now() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kb = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        // Read line by line: with tens of thousands of mappings smaps is tens of megabytes, and
        // a process that has used up its mappings (vm.max_map_count) cannot allocate that much.
        let smaps = match std::fs::File::open("/proc/self/smaps") {
            Ok(f) => BufReader::with_capacity(64 * 1024, f),
            Err(e) => {
                eprintln!("warning: /proc/self/smaps: {e}");
                return MemSnapshot::default();
            }
        };
        let mut exec_mapped = 0;
        let mut exec_rss = 0;
        let mut mappings = 0;
        let mut in_exec = false;
        for line in smaps.lines() {
            let Ok(line) = line else {
                eprintln!("warning: reading /proc/self/smaps failed");
                break;
            };
            let mut f = line.split_whitespace();
            let Some(first) = f.next() else { continue };
            if first.ends_with(':') {
                // A field of the current mapping ("Rss:  12 kB").
                if in_exec && first == "Rss:" {
                    exec_rss += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
                }
                continue;
            }
            // A mapping's header: "START-END PERMS OFFSET DEV INODE [PATH]".
            let Some((a, b)) = first.split_once('-') else {
                continue;
            };
            let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
                continue;
            };
            mappings += 1;
            let exec = f.next().is_some_and(|p| p.as_bytes().get(2) == Some(&b'x'));
            // JIT code lives in anonymous memory (private, or shared: the kernel names that
            // `/dev/zero`) or in a memfd; the executable's own text and the shared libraries'
            // (faulted in as new code paths run) are files.
            let path = f.nth(3);
            let jit = path.is_none_or(|p| {
                p.starts_with("/dev/zero") || p.starts_with("/memfd:") || p.starts_with("[anon")
            });
            in_exec = exec && jit;
            if in_exec {
                exec_mapped += b - a;
            }
        }
        MemSnapshot {
            vm_size: kb("VmSize:"),
            vm_rss: kb("VmRSS:"),
            exec_mapped,
            exec_rss,
            mappings,
        }
    }

    /// Growth from `before` to `self` (negative growth reads as a negative number).
    pub fn growth(&self, before: &MemSnapshot) -> MemGrowth {
        let d = |a: u64, b: u64| a as i64 - b as i64;
        MemGrowth {
            vm_size: d(self.vm_size, before.vm_size),
            vm_rss: d(self.vm_rss, before.vm_rss),
            exec_mapped: d(self.exec_mapped, before.exec_mapped),
            exec_rss: d(self.exec_rss, before.exec_rss),
            mappings: d(self.mappings, before.mappings),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct MemGrowth {
    pub vm_size: i64,
    pub vm_rss: i64,
    pub exec_mapped: i64,
    pub exec_rss: i64,
    pub mappings: i64,
}
