//! What a unit's registrations become when its code moves: the unwinder's, gdb's, perf's,
//! jitdump's and valgrind's views follow the code.

use kiln_target::{jitdump_format as jd, Action, ActionPair, Bytes, ExecutorAddr, PerfMapEntry};

/// The registrations of a unit whose bytes moved. `actions` are its finalize actions as linked;
/// `translate` maps an address as linked to where it is now, `before` to where it was before
/// this move (for jitdump's `JIT_CODE_MOVE` records). (Valgrind forgets the old and the new
/// code ranges when the executor moves the bytes: no action is needed for that, and one naming
/// the old range would be refused, since it no longer lies in the unit.)
pub(crate) fn moved_actions(
    actions: &[ActionPair],
    translate: &dyn Fn(u64) -> u64,
    before: &dyn Fn(u64) -> u64,
    new_key: u64,
) -> Vec<ActionPair> {
    let mut out: Vec<ActionPair> = actions
        .iter()
        .filter_map(|p| {
            let finalize = p
                .finalize
                .as_ref()
                .and_then(|a| moved(a, translate, new_key));
            let dealloc = p
                .dealloc
                .as_ref()
                .and_then(|a| moved(a, translate, new_key));
            (finalize.is_some() || dealloc.is_some()).then_some(ActionPair { finalize, dealloc })
        })
        .collect();
    // jitdump: JIT_CODE_MOVE records for the functions its JIT_CODE_LOAD records named.
    for p in actions {
        if let Some(Action::WriteJitdump { dir, records }) = &p.finalize {
            let mut moves = Vec::new();
            for r in jd::records(&records.0).flatten() {
                if r.header.id != jd::JIT_CODE_LOAD {
                    continue;
                }
                if let Ok((load, _, _)) = jd::parse_code_load(r.body) {
                    let (old, new) = (before(load.code_addr), translate(load.code_addr));
                    let _ = jd::code_move(&mut moves, old, new, load.code_size);
                }
            }
            if !moves.is_empty() {
                out.push(ActionPair {
                    finalize: Some(Action::WriteJitdump {
                        dir: dir.clone(),
                        records: Bytes(moves),
                    }),
                    dealloc: None,
                });
            }
        }
    }
    out
}

/// One action, at the moved code (`None`: nothing to do again after a move).
fn moved(a: &Action, translate: &dyn Fn(u64) -> u64, new_key: u64) -> Option<Action> {
    let at = |x: ExecutorAddr| ExecutorAddr(translate(x.0));
    Some(match a {
        Action::RegisterEhFrame { addr, size } => Action::RegisterEhFrame {
            addr: at(*addr),
            size: *size,
        },
        Action::DeregisterEhFrame { addr, size } => Action::DeregisterEhFrame {
            addr: at(*addr),
            size: *size,
        },
        Action::RegisterGdbObjects { objects, .. } => Action::RegisterGdbObjects {
            key: new_key,
            objects: objects
                .iter()
                .map(|o| {
                    Bytes(crate::debug::gdb::relocate_object(&o.0, translate).unwrap_or_default())
                })
                .filter(|o| !o.0.is_empty())
                .collect(),
        },
        Action::DeregisterGdbObjects { .. } => Action::DeregisterGdbObjects { key: new_key },
        Action::WritePerfMap { entries } => Action::WritePerfMap {
            entries: entries
                .iter()
                .map(|e| PerfMapEntry {
                    addr: at(e.addr),
                    size: e.size,
                    name: e.name.clone(),
                })
                .collect(),
        },
        Action::DiscardTranslations { addr, size } => Action::DiscardTranslations {
            addr: at(*addr),
            size: *size,
        },
        // Code that ran once (IFUNC resolvers, initializers) and records already written
        // (jitdump: moves are added by the caller) are not repeated; TLS units do not move.
        _ => return None,
    })
}
