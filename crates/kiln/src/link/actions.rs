//! What the executor does when the unit is finalized and when it is freed: initializers and
//! finalizers in the order a native program runs them, and the alloc actions that make the code
//! known (unwind info, TLS, IFUNC slots).

use super::fixup::FixupContext;
use super::layout::Layout;
use crate::arch::Tables;
use crate::graph::*;
use kiln_target::{Action, ActionPair, ExecutorAddr};

/// Initializers in the order a native program runs them: `.preinit_array`, `.init`, then
/// `.init_array` and `.ctors` by priority (`.ctors` entries run last to first), unprioritised
/// last. Finalizers: exit handlers of this unit (`__cxa_finalize`), then `.fini_array` and
/// `.dtors` in reverse priority order, then `.fini`.
pub(super) fn collect_init_fini(
    g: &LinkGraph,
    layout: &Layout,
    work: &[&[u8]],
    dso: Option<SymbolId>,
) -> (Vec<ExecutorAddr>, Vec<Action>) {
    // The unit's exit handlers run first (`__cxa_finalize`).
    let exit_handlers = dso
        .and_then(|d| g.symbol_addr(d))
        .map(|d| Action::CxaFinalize {
            dso: ExecutorAddr(d),
        });
    // A unit without init/fini sections (a JIT's functions) has nothing else to look for.
    if !g.may_have(SectionKind::init_fini_bits()) {
        return (Vec::new(), exit_handlers.into_iter().collect());
    }
    let words = |b: &Block| -> Vec<u64> {
        let Some((si, seg)) = layout
            .segments
            .iter()
            .enumerate()
            .find(|(_, s)| s.addr <= b.addr && b.addr < s.addr + s.content_size)
        else {
            return Vec::new();
        };
        let start = (b.addr - seg.addr) as usize;
        let end = start + b.size() as usize;
        work[si]
            .get(start..end)
            .unwrap_or(&[])
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .filter(|&v| v != 0 && v != u64::MAX)
            .collect()
    };
    let mut pre = Vec::new();
    let mut init_fn = None;
    let mut fini_fn = None;
    let mut inits: Vec<(u32, u32, Vec<u64>)> = Vec::new(); // (priority, order, fns)
    let mut finis: Vec<(u32, u32, Vec<u64>)> = Vec::new();
    for (i, b) in g.blocks.iter().enumerate() {
        if !b.live {
            continue;
        }
        let order = i as u32;
        match g.sections[b.section.idx()].kind {
            SectionKind::PreInitArray => pre.extend(words(b)),
            SectionKind::Init => init_fn = Some(b.addr),
            SectionKind::Fini => fini_fn = Some(b.addr),
            SectionKind::InitArray(p) => inits.push((p, order, words(b))),
            SectionKind::Ctors(p) => {
                let mut w = words(b);
                w.reverse();
                // ld merges .ctors into .init_array in input order, each section reversed
                // (crtstuff used to run them backwards).
                inits.push((p, order, w));
            }
            SectionKind::FiniArray(p) => finis.push((p, order, words(b))),
            SectionKind::Dtors(p) => finis.push((p, order, words(b).into_iter().rev().collect())),
            _ => {}
        }
    }
    inits.sort_by_key(|(p, o, _)| (*p, *o));
    finis.sort_by_key(|(p, o, _)| (*p, *o));
    let mut init: Vec<ExecutorAddr> = pre.into_iter().map(ExecutorAddr).collect();
    init.extend(init_fn.map(ExecutorAddr));
    for (_, _, fns) in inits {
        init.extend(fns.into_iter().map(ExecutorAddr));
    }
    let mut fini: Vec<Action> = exit_handlers.into_iter().collect();
    let all: Vec<u64> = finis.into_iter().flat_map(|(_, _, f)| f).collect();
    fini.extend(
        all.into_iter()
            .rev()
            .map(|f| Action::CallVoid(ExecutorAddr(f))),
    );
    fini.extend(fini_fn.map(|f| Action::CallVoid(ExecutorAddr(f))));
    (init, fini)
}

/// The unit's `.eh_frame` and TLS registrations, after the actions in `actions`.
pub(super) fn collect_actions(
    g: &LinkGraph,
    layout: &Layout,
    ctx: &FixupContext,
    actions: &mut Vec<ActionPair>,
) {
    let eh_bits = SectionKind::EhFrame.bit() | SectionKind::EhFrameTerminator.bit();
    let blocks = match g.may_have(eh_bits) {
        true => &g.blocks[..],
        false => &[],
    };
    let eh = blocks.iter().filter(|b| {
        b.live
            && matches!(
                g.sections[b.section.idx()].kind,
                SectionKind::EhFrame | SectionKind::EhFrameTerminator
            )
    });
    let (lo, hi) = eh.fold((None, None), |(lo, hi): (Option<u64>, Option<u64>), b| {
        let end = b.addr + b.size();
        (
            Some(lo.map_or(b.addr, |l| l.min(b.addr))),
            Some(hi.map_or(end, |h| h.max(end))),
        )
    });
    if let (Some(lo), Some(hi)) = (lo, hi) {
        let (addr, size) = (ExecutorAddr(lo), hi - lo);
        actions.push(ActionPair {
            finalize: Some(Action::RegisterEhFrame { addr, size }),
            dealloc: Some(Action::DeregisterEhFrame { addr, size }),
        });
    }
    if let Some(t) = &layout.tls {
        actions.push(ActionPair {
            finalize: Some(Action::RegisterTls {
                module: ctx.tls_module,
                image: ExecutorAddr(t.image_addr),
                image_size: t.image_size,
                block_size: t.block_size,
                align: t.align,
                static_offset: ctx.tp_offset,
            }),
            dealloc: Some(Action::DeregisterTls {
                module: ctx.tls_module,
            }),
        });
    }
}

/// IFUNC slots are filled first: initializers and other actions may call the functions.
pub(super) fn ifunc_actions(g: &LinkGraph, tables: &Tables) -> Vec<ActionPair> {
    tables
        .ifunc_slots
        .iter()
        .filter_map(|(resolver, slot)| {
            Some(ActionPair {
                finalize: Some(Action::ResolveIfunc {
                    resolver: ExecutorAddr(g.symbol_addr(*resolver)?),
                    slot: ExecutorAddr(g.symbol_addr(*slot)?),
                }),
                dealloc: None,
            })
        })
        .collect()
}
