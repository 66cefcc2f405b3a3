//! Making JIT'd code known to debuggers and profilers: one registry of sinks, each a pair of alloc
//! actions that the executor runs when the unit is finalized and when it is freed.
//!
//! | sink | finalize | dealloc |
//! |---|---|---|
//! | gdb | register an in-memory ELF copy of each input, section addresses patched (`gdb`) | unregister |
//! | perf map | append `START SIZE NAME` lines to `/tmp/perf-PID.map` | — (perf reads the map after the process ended) |
//! | jitdump | append `JIT_CODE_DEBUG_INFO` + `JIT_CODE_UNWINDING_INFO` + `JIT_CODE_LOAD` records (`jitdump`) | — (records are time stamped) |
//! | valgrind | discard translations of the code segments | discard them again |
//!
//! The controller builds everything (objects, names, line tables, records) from the graph, the
//! layout and the final bytes; the executor only stores or writes it, so every sink works the
//! same out of process. Debug information never fails a link: what cannot be read is left out,
//! with a warning.

mod dwarf;
pub(crate) mod gdb;
mod jitdump;

use crate::graph::*;
use crate::link::layout::Layout;
use kiln_target::{Action, ActionPair, Bytes, ExecutorAddr, MemProt, PerfMapEntry};
use rustc_hash::FxHashMap;
use std::path::PathBuf;

/// ```
/// let s = kiln::Session::in_process();
/// // perf map and gdb on, the rest off:
/// s.set_debug(kiln::DebugOptions { perf_map: true, gdb: true, ..kiln::DebugOptions::none() });
/// ```
///
/// Which sinks a session feeds. `KILN_DEBUG` (see [`DebugOptions::apply`]) changes the defaults
/// of every session; the `kiln` command also has `--gdb`, `--perf-map`, `--jitdump[=DIR]` and
/// `--valgrind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugOptions {
    /// Register each linked object with the GDB JIT interface.
    pub gdb: bool,
    /// Write `/tmp/perf-PID.map`.
    pub perf_map: bool,
    /// Write `DIR/jit-PID.dump` into this directory.
    pub jitdump: Option<PathBuf>,
    /// Tell valgrind when code is freed.
    pub valgrind: bool,
}

impl Default for DebugOptions {
    /// gdb and valgrind on, perf map and jitdump off.
    ///
    /// gdb is on by default because it costs little: building the objects copies each input's
    /// headers, symbol table and DWARF (not its code), and registering is a list insertion and
    /// a call of an empty function. Measured (docs/debugging.md): about 5 µs per small unit in
    /// a long-running process, and 1 ms for the SQLite driver (88 inputs, a 5 ms link), with
    /// 600 KB held while the code lives. Only a process that runs under gdb pays more, and
    /// there gdb reading the objects is the point.
    ///
    /// valgrind is on because it costs nothing outside valgrind (a few instructions per code
    /// segment). perf map and jitdump write files, so they wait to be asked for.
    fn default() -> Self {
        DebugOptions {
            gdb: true,
            perf_map: false,
            jitdump: None,
            valgrind: true,
        }
    }
}

impl DebugOptions {
    /// The environment variable read by [`DebugOptions::from_env`].
    pub const ENV: &'static str = "KILN_DEBUG";

    /// Every sink off.
    pub fn none() -> Self {
        DebugOptions {
            gdb: false,
            perf_map: false,
            jitdump: None,
            valgrind: false,
        }
    }

    /// Every sink on; jitdump into the current directory.
    pub fn all() -> Self {
        DebugOptions {
            gdb: true,
            perf_map: true,
            jitdump: Some(PathBuf::from(".")),
            valgrind: true,
        }
    }

    /// The defaults changed by `KILN_DEBUG` (if set).
    pub fn from_env() -> Result<Self, String> {
        let mut o = DebugOptions::default();
        if let Some(v) = std::env::var_os(Self::ENV) {
            let v = v
                .into_string()
                .map_err(|v| format!("{}={v:?} is not UTF-8", Self::ENV))?;
            o.apply(&v)
                .map_err(|e| format!("{}={v:?}: {e}", Self::ENV))?;
        }
        Ok(o)
    }

    /// Apply a comma-separated list, in order: `all`, `none`, `gdb`, `perfmap`, `jitdump` or
    /// `jitdump=DIR`, `valgrind`; `no-NAME` turns a sink off.
    pub fn apply(&mut self, spec: &str) -> Result<(), String> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (off, name) = match item.strip_prefix("no-") {
                Some(n) => (true, n),
                None => (false, item),
            };
            let (name, dir) = match name.split_once('=') {
                Some((n, d)) => (n, Some(d)),
                None => (name, None),
            };
            if dir.is_some() && (name != "jitdump" || off) {
                return Err(format!(
                    "{item:?}: only jitdump takes a value (jitdump=DIR)"
                ));
            }
            match name {
                "all" if !off => *self = DebugOptions::all(),
                "none" if !off => *self = DebugOptions::none(),
                "gdb" => self.gdb = !off,
                "perfmap" | "perf-map" | "perf" => self.perf_map = !off,
                "jitdump" => {
                    self.jitdump = (!off).then(|| PathBuf::from(dir.unwrap_or(".")));
                }
                "valgrind" => self.valgrind = !off,
                _ => {
                    return Err(format!(
                        "unknown sink {item:?} (expected all, none, gdb, perfmap, jitdump[=DIR], \
                         valgrind, or no-NAME)"
                    ))
                }
            }
        }
        Ok(())
    }
}

/// What the sinks need to know about a laid-out, fixed-up unit.
pub(crate) struct Unit<'g, 'a> {
    pub g: &'g LinkGraph<'a>,
    pub layout: &'g Layout,
    /// Final bytes of each segment of `layout`.
    pub work: &'g [&'g [u8]],
    /// (call target, its stub) for every stub.
    pub stubs: &'g [(SymbolId, SymbolId)],
}

impl Unit<'_, '_> {
    /// Final bytes of `[addr, addr + len)` (None where there is zero fill or nothing).
    fn bytes(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let (i, seg) = self
            .layout
            .segments
            .iter()
            .enumerate()
            .find(|(_, s)| s.addr <= addr && addr < s.addr + s.content_size)?;
        let start = usize::try_from(addr - seg.addr).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.work.get(i)?.get(start..end)
    }

    /// Address range of the live blocks of every ELF section of every input:
    /// (input, section index) → (lowest address, end).
    fn section_ranges(&self) -> FxHashMap<(InputId, u32), (u64, u64)> {
        let mut m: FxHashMap<(InputId, u32), (u64, u64)> = FxHashMap::default();
        for b in self.g.blocks.iter().filter(|b| b.live) {
            let sec = &self.g.sections[b.section.idx()];
            // `.tbss` blocks have no address (each thread has its own copy).
            if sec.elf_index == 0 || (sec.kind == SectionKind::Tls && b.is_zero_fill()) {
                continue;
            }
            let e = m.entry((sec.input, sec.elf_index)).or_insert((u64::MAX, 0));
            e.0 = e.0.min(b.addr);
            e.1 = e.1.max(b.addr + b.size());
        }
        m
    }
}

/// A JIT'd function (or stub), for perf and jitdump.
pub(crate) struct Function {
    pub name: String,
    pub addr: u64,
    pub size: u64,
    pub input: InputId,
}

/// Named code of the unit: every named symbol in a live executable block (one name per address,
/// globals preferred), sized by its `st_size` or, when that is 0 (hand-written assembly), up to
/// the next symbol or the end of its block; then the stubs, as `TARGET@stub`.
pub(crate) fn functions(u: &Unit) -> Vec<Function> {
    let g = u.g;
    // (block, offset, rank, symbol) of every named code symbol, sorted: each block's symbols
    // come together, by offset, the preferred name first. One sorted list rather than a map
    // of lists: a JIT's unit has one or two functions, and this runs for every unit.
    let mut named: Vec<(BlockId, u64, u8, SymbolId)> = Vec::new();
    for (i, s) in g.symbols.iter().enumerate() {
        let SymbolDef::Defined { block, offset } = s.def else {
            continue;
        };
        let b = &g.blocks[block.idx()];
        let sec = &g.sections[b.section.idx()];
        if s.name.is_empty() || s.tls || !b.live || sec.prot != MemProt::ReadExec {
            continue;
        }
        let rank = match s.visibility {
            Visibility::Default => 0,
            Visibility::Hidden => 1,
            Visibility::Local => 2,
        };
        named.push((block, offset, rank, SymbolId(i as u32)));
    }
    named.sort_unstable();
    named.dedup_by_key(|&mut (block, off, _, _)| (block, off));
    let mut out = Vec::with_capacity(named.len() + u.stubs.len());
    for (k, &(block, off, _, id)) in named.iter().enumerate() {
        let b = &g.blocks[block.idx()];
        let s = &g.symbols[id.idx()];
        let next = match named.get(k + 1) {
            Some(&(next_block, next_off, _, _)) if next_block == block => next_off,
            _ => b.size(),
        };
        let size = if s.size > 0 {
            s.size.min(b.size().saturating_sub(off))
        } else {
            next.saturating_sub(off)
        };
        if size == 0 {
            continue;
        }
        out.push(Function {
            name: String::from_utf8_lossy(s.name).into_owned(),
            addr: b.addr + off,
            size,
            input: g.sections[b.section.idx()].input,
        });
    }
    for &(target, stub) in u.stubs {
        if let Some(addr) = g.symbol_addr(stub) {
            out.push(Function {
                name: format!("{}@stub", g.name_of(target)),
                addr,
                size: g.arch.templates().stub_size,
                input: g.symbols[stub.idx()].input,
            });
        }
    }
    out.sort_unstable_by_key(|f| f.addr);
    out
}

/// The alloc actions of every enabled sink, in the order they run at finalize (the executor
/// undoes them in reverse when the unit is freed). `key` identifies the unit in the executor
/// (its base address).
pub(crate) fn actions(u: &Unit, opts: &DebugOptions, key: u64) -> Vec<ActionPair> {
    let mut out = Vec::new();
    if opts.valgrind {
        // Also at finalize: memory that held other code before (and was not unmapped in between,
        // e.g. a slab) must not run stale translations.
        for s in u
            .layout
            .segments
            .iter()
            .filter(|s| s.prot == MemProt::ReadExec)
        {
            let a = Action::DiscardTranslations {
                addr: ExecutorAddr(s.addr),
                size: s.content_size + s.zero_size,
            };
            out.push(ActionPair {
                finalize: Some(a.clone()),
                dealloc: Some(a),
            });
        }
    }
    let needs_functions = opts.perf_map || opts.jitdump.is_some();
    let funcs = if needs_functions {
        functions(u)
    } else {
        Vec::new()
    };
    if opts.perf_map && !funcs.is_empty() {
        out.push(ActionPair {
            finalize: Some(Action::WritePerfMap {
                entries: funcs
                    .iter()
                    .map(|f| PerfMapEntry {
                        addr: ExecutorAddr(f.addr),
                        size: f.size,
                        name: f.name.clone(),
                    })
                    .collect(),
            }),
            dealloc: None,
        });
    }
    if let Some(dir) = &opts.jitdump {
        let records = jitdump::unit_records(u, &funcs);
        if !records.is_empty() {
            out.push(ActionPair {
                finalize: Some(Action::WriteJitdump {
                    dir: dir.to_string_lossy().into_owned(),
                    records: Bytes(records),
                }),
                dealloc: None,
            });
        }
    }
    if opts.gdb {
        let objects = gdb::unit_objects(u);
        if !objects.is_empty() {
            out.push(ActionPair {
                finalize: Some(Action::RegisterGdbObjects {
                    key,
                    objects: objects.into_iter().map(Bytes).collect(),
                }),
                dealloc: Some(Action::DeregisterGdbObjects { key }),
            });
        }
    }
    out
}
