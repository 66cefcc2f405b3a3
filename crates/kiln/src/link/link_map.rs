//! Where everything of a unit ended up, for check expressions (`llvm-jitlink -check` style) and
//! inspection. Files are named as their inputs were (`dir/x.o`, `libz.a(crc32.o)`).

use super::layout::Layout;
use crate::arch::Tables;
use crate::graph::*;
use rustc_hash::FxHashMap;

/// Where everything of a unit ended up, and its final bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkMap {
    /// Every named symbol defined in a live block.
    pub symbols: Vec<MappedSymbol>,
    /// GOT entries, once per file that references their target.
    pub got_entries: Vec<TableEntry>,
    /// Stubs, once per file that references their target.
    pub stubs: Vec<TableEntry>,
    /// Each input section's live part.
    pub sections: Vec<MappedSection>,
    /// Final content per segment (zero fill not included).
    pub memory: Vec<MappedBytes>,
}

/// A symbol of the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedSymbol {
    /// The input that defines it.
    pub file: String,
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

/// A GOT entry or a stub, as seen from one file that references its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    pub file: String,
    /// The symbol the entry holds (or the stub jumps to).
    pub target: String,
    pub addr: u64,
}

/// An input section's live blocks: from the first live byte, `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedSection {
    pub file: String,
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

/// The final bytes of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedBytes {
    pub addr: u64,
    pub bytes: Vec<u8>,
}

impl LinkMap {
    /// Read `len` bytes at `addr` from the unit's final content (zero fill is not recorded:
    /// `None` there).
    pub fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.memory.iter().find_map(|m| {
            let off = usize::try_from(addr.checked_sub(m.addr)?).ok()?;
            m.bytes.get(off..off.checked_add(len)?)
        })
    }

    /// The address of the symbol `name` (of `file`, if given).
    pub fn symbol(&self, file: Option<&str>, name: &str) -> Option<&MappedSymbol> {
        self.symbols
            .iter()
            .find(|s| s.name == name && file.is_none_or(|f| s.file == f))
    }
}

/// Record the link map of a laid-out, fixed-up unit.
pub(super) fn link_map(g: &LinkGraph, tables: &Tables, layout: &Layout, work: &[&[u8]]) -> LinkMap {
    LinkMap {
        symbols: mapped_symbols(g, layout),
        got_entries: table_entries(g, &tables.got, tables),
        stubs: table_entries(g, &tables.stubs, tables),
        sections: mapped_sections(g, layout),
        memory: layout
            .segments
            .iter()
            .zip(work)
            .map(|(s, w)| MappedBytes {
                addr: s.addr,
                bytes: w.get(..s.content_size as usize).unwrap_or(w).to_vec(),
            })
            .collect(),
    }
}

/// Where a block is: its address, or for `.tbss` (which has no memory in the unit, only in each
/// thread's TLS block) where it lies in the TLS template's range, after `.tdata`.
fn block_addr(g: &LinkGraph, layout: &Layout, b: BlockId) -> u64 {
    let blk = &g.blocks[b.idx()];
    match (&layout.tls, g.sections[blk.section.idx()].kind) {
        (Some(t), SectionKind::Tls) if blk.is_zero_fill() => t.image_addr + blk.tls_offset,
        _ => blk.addr,
    }
}

fn mapped_symbols(g: &LinkGraph, layout: &Layout) -> Vec<MappedSymbol> {
    let mut out = Vec::new();
    for s in &g.symbols {
        let SymbolDef::Defined { block, offset } = s.def else {
            continue;
        };
        if s.name.is_empty() || !g.blocks[block.idx()].live {
            continue;
        }
        out.push(MappedSymbol {
            file: g.input_name(g.block_input(block)).to_string(),
            name: String::from_utf8_lossy(s.name).into_owned(),
            addr: block_addr(g, layout, block) + offset,
            size: s.size,
        });
    }
    out
}

/// The files (other than the linker's own) whose live code references `target`.
fn referencing_files(g: &LinkGraph, target: SymbolId) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    for b in g.blocks.iter().filter(|b| b.live) {
        let f = g.input_name(g.sections[b.section.idx()].input);
        if f != super::passes::LINKER_INPUT
            && b.edges.iter().any(|e| e.target == target)
            && !files.iter().any(|x| x == f)
        {
            files.push(f.to_string());
        }
    }
    files
}

/// A GOT entry or stub serves every file that references its target.
fn table_entries(g: &LinkGraph, list: &[(SymbolId, SymbolId)], tables: &Tables) -> Vec<TableEntry> {
    let stub_of: FxHashMap<SymbolId, SymbolId> = tables.stubs.iter().copied().collect();
    let mut out = Vec::new();
    for (target, entry) in list {
        let Some(addr) = g.symbol_addr(*entry) else {
            continue;
        };
        let name = g.name_of(*target);
        // Edges were rewritten to point at the entry (or at the stub that jumps through it);
        // find the files through any of them.
        let mut files = referencing_files(g, *entry);
        files.extend(referencing_files(g, *target));
        if let Some(stub) = stub_of.get(target) {
            files.extend(referencing_files(g, *stub));
        }
        files.sort();
        files.dedup();
        out.extend(files.into_iter().map(|file| TableEntry {
            file,
            target: name.clone(),
            addr,
        }));
    }
    out
}

fn mapped_sections(g: &LinkGraph, layout: &Layout) -> Vec<MappedSection> {
    let mut secs: FxHashMap<SectionId, (u64, u64)> = FxHashMap::default();
    for (i, b) in g.blocks.iter().enumerate().filter(|(_, b)| b.live) {
        let addr = block_addr(g, layout, BlockId(i as u32));
        let e = secs.entry(b.section).or_insert((u64::MAX, 0));
        e.0 = e.0.min(addr);
        e.1 = e.1.max(addr + b.size());
    }
    let mut out: Vec<MappedSection> = secs
        .into_iter()
        .map(|(sid, (lo, hi))| {
            let sec = &g.sections[sid.idx()];
            MappedSection {
                file: g.input_name(sec.input).to_string(),
                name: String::from_utf8_lossy(sec.name).into_owned(),
                addr: lo,
                size: hi - lo,
            }
        })
        .collect();
    out.sort_by_key(|s| s.addr);
    out
}
