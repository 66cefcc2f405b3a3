//! Splitting `.eh_frame` into one block per CIE and FDE, as JITLink does, so that dead-stripping
//! keeps exactly the FDEs of live functions. Each FDE gets a `NegDelta32` edge to its CIE (its
//! CIE pointer is section relative, so it must be recomputed when records move) and the function
//! it describes keeps the FDE alive (`LinkGraph::keep_alive`). FDEs of discarded functions are dropped.

use crate::error::{Error, Result};
use crate::graph::*;
use kiln_target::MemProt;
use rustc_hash::FxHashMap;
use std::borrow::Cow;

pub(crate) fn split<'a>(
    g: &mut LinkGraph<'a>,
    file: &str,
    name: &'a [u8],
    elf_index: u32,
    input: InputId,
    data: &'a [u8],
    mut edges: Vec<Edge>,
) -> Result<()> {
    let sec_name = String::from_utf8_lossy(name).into_owned();
    let bad = |off: usize, what: &str| {
        Error::malformed(file, Some(&sec_name), Some(off as u64), what.to_string())
    };
    edges.sort_unstable_by_key(|e| e.offset);
    let section = g.add_section(Section {
        name,
        prot: MemProt::Read,
        kind: SectionKind::EhFrame,
        input,
        retain: false,
        elf_index,
    });
    let mut cies: FxHashMap<usize, SymbolId> = FxHashMap::default();
    let mut off = 0usize;
    let mut ei = 0usize;
    let read_u32 = |at: usize| -> Option<u32> {
        data.get(at..at.checked_add(4)?)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    while off < data.len() {
        let len = read_u32(off).ok_or_else(|| bad(off, "truncated record length"))? as usize;
        if len == 0 {
            break; // terminator
        }
        if len == 0xffff_ffff {
            return Err(Error::unsupported(
                file,
                Some(&sec_name),
                Some(off as u64),
                "64-bit DWARF eh_frame record",
            ));
        }
        let size = len
            .checked_add(4)
            .ok_or_else(|| bad(off, "record length overflows"))?;
        let end = off
            .checked_add(size)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| bad(off, "record runs past the end of the section"))?;
        if size % 4 != 0 || len < 4 {
            return Err(bad(off, "record length is not a multiple of 4"));
        }
        let id = read_u32(off + 4).ok_or_else(|| bad(off, "truncated record"))?;
        // Edges (relocations) inside this record.
        if ei < edges.len() && (edges[ei].offset as usize) < off {
            return Err(bad(
                edges[ei].offset as usize,
                "relocation straddles two records",
            ));
        }
        let first = ei;
        while ei < edges.len() && (edges[ei].offset as usize) < end {
            if edges[ei].offset as usize + usize::from(g.edge_info(edges[ei].kind).width) > end {
                return Err(bad(
                    edges[ei].offset as usize,
                    "relocation straddles two records",
                ));
            }
            ei += 1;
        }
        // Room for the CIE-pointer edge an FDE gets, so that adding it does not reallocate.
        let mut rec_edges: Vec<Edge> = Vec::with_capacity(ei - first + 1);
        rec_edges.extend(edges[first..ei].iter().map(|e| Edge {
            offset: e.offset - off as u32,
            ..*e
        }));
        let bytes = Cow::Borrowed(&data[off..end]);
        if id == 0 {
            let b = g.add_block(section, Content::Bytes(bytes), 4);
            g.blocks[b.idx()].edges = rec_edges;
            cies.insert(off, g.add_anon(b, 0, input));
        } else {
            let cie_off = (off + 4)
                .checked_sub(id as usize)
                .ok_or_else(|| bad(off, "CIE pointer points before the section"))?;
            let cie = *cies
                .get(&cie_off)
                .ok_or_else(|| bad(off, "CIE pointer does not point at a CIE"))?;
            // The function this FDE describes: the relocation of its pc_begin field.
            let Some(pc) = rec_edges.iter().find(|e| e.offset == 8) else {
                off = end;
                continue;
            };
            let SymbolDef::Defined { block: func, .. } = g.symbols[pc.target.idx()].def else {
                off = end; // the function was discarded (a losing COMDAT copy)
                continue;
            };
            let b = g.add_block(section, Content::Bytes(bytes), 4);
            let mut e = rec_edges;
            e.push(Edge {
                offset: 4,
                kind: g.arch.eh_frame_kinds().cie_pointer,
                target: cie,
                addend: 0,
            });
            g.blocks[b.idx()].edges = e;
            g.keep_alive.push((func, b));
        }
        off = end;
    }
    Ok(())
}
