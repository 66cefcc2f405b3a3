//! Symbol resolution: archive members on demand, then the scopes outside the unit.

use crate::elf::archive::Archive;
use crate::elf::object::parse_object;
use crate::error::{DuplicateSymbol, Error, Result, SymbolReference, Unresolved};
use crate::graph::*;
use kiln_target::{Executor, LibraryId};
use rustc_hash::{FxHashMap, FxHashSet};

/// Load archive members until no strong undefined symbol can be satisfied by one. Like ld's
/// `--start-group`: the order of archives does not matter, members are loaded only when they
/// define a symbol that is needed (a weak reference alone does not load a member), and not for
/// a symbol a live unit of the session defines already (as a shared library already loaded
/// would satisfy it).
pub fn load_archive_members<'a>(
    g: &mut LinkGraph<'a>,
    archives: &mut [Archive<'a>],
    session: &dyn SessionSymbols,
) -> Result<()> {
    if archives.is_empty() {
        return Ok(());
    }
    loop {
        let mut loaded_any = false;
        let mut i = 0;
        while i < g.symbols.len() {
            let s = &g.symbols[i];
            i += 1;
            if s.def != SymbolDef::Undefined
                || s.only_weak_refs
                || s.visibility == Visibility::Local
            {
                continue;
            }
            let name = s.name;
            if session.defines(name) {
                continue;
            }
            for ar in archives.iter_mut() {
                if let Some((member, data)) = ar.take_member_for(name)? {
                    tracing::debug!("loading {member} for {}", String::from_utf8_lossy(name));
                    parse_object(g, &member, data, false)?;
                    loaded_any = true;
                    break;
                }
            }
        }
        if !loaded_any {
            return Ok(());
        }
    }
}

/// Two strong definitions of one symbol: an error naming both objects.
pub fn check_duplicates(g: &LinkGraph) -> Result<()> {
    if g.duplicates.is_empty() {
        return Ok(());
    }
    Err(Error::Duplicate(
        g.duplicates
            .iter()
            .map(|(sym, a, b)| DuplicateSymbol {
                name: g.name_of(*sym),
                first: g.input_name(*a).to_string(),
                second: g.input_name(*b).to_string(),
            })
            .collect(),
    ))
}

/// The symbols of the session's live units, as the unit being linked sees them.
pub trait SessionSymbols {
    /// Set `out[i]` (`None` on entry, as long as `names`) to the address of the definition
    /// `names[i]` binds to, if any. An implementation remembers which units it bound to: the
    /// new unit depends on them.
    fn bind(&self, names: &[&[u8]], out: &mut [Option<u64>]);
    /// Whether a live unit visible to the new unit defines `name` (nothing is bound).
    fn defines(&self, name: &[u8]) -> bool;
}

/// No session: nothing is defined outside the link.
pub struct NoSession;

impl SessionSymbols for NoSession {
    fn bind(&self, _: &[&[u8]], _: &mut [Option<u64>]) {}
    fn defines(&self, _: &[u8]) -> bool {
        false
    }
}

/// Where symbols outside the unit come from, in order.
pub struct ExternalScopes<'s> {
    pub defines: &'s FxHashMap<String, u64>,
    /// Symbols of the session's live units.
    pub session: &'s dyn SessionSymbols,
    pub libraries: &'s [LibraryId],
    pub process: bool,
    /// When set, only these names may be bound outside the session's code (libraries, the
    /// process, definitions).
    pub allow: Option<&'s FxHashSet<String>>,
}

/// The undefined symbols live code references, each once, in the order first referenced, into
/// `out`: their number, or `None` when there are more than `out` holds (then
/// [`wanted_symbols`] lists them). (A plain array: a JIT's unit names a few, and a `SmallVec`'s
/// checks on every push and read cost it more than the list itself.)
#[inline(always)]
fn few_wanted_symbols(g: &LinkGraph, out: &mut [SymbolId; FEW_NAMES]) -> Option<usize> {
    let mut n = 0;
    for b in &g.blocks {
        if !b.live {
            continue;
        }
        for e in &b.edges {
            let t = e.target;
            if !matches!(g.symbols[t.idx()].def, SymbolDef::Undefined) || out[..n].contains(&t) {
                continue;
            }
            if n == FEW_NAMES {
                return None;
            }
            out[n] = t;
            n += 1;
        }
    }
    Some(n)
}

/// [`few_wanted_symbols`] for a unit that references more: the undefined symbols live code
/// references, each once, in the order first referenced.
fn wanted_symbols(g: &LinkGraph) -> Vec<SymbolId> {
    let mut wanted = Vec::new();
    // Where each symbol is in `wanted`: made only for units with many undefined symbols (a
    // scan of a short list beats a table as long as the symbol list).
    let mut listed: Vec<bool> = Vec::new();
    for b in g.blocks.iter().filter(|b| b.live) {
        for e in &b.edges {
            let t = e.target;
            if g.symbols[t.idx()].def != SymbolDef::Undefined {
                continue;
            }
            let known = if listed.is_empty() {
                wanted.contains(&t)
            } else {
                std::mem::replace(&mut listed[t.idx()], true)
            };
            if !known {
                wanted.push(t);
                if wanted.len() == 16 {
                    listed = vec![false; g.symbols.len()];
                    for id in &wanted {
                        listed[id.idx()] = true;
                    }
                }
            }
        }
    }
    wanted
}

/// Which symbols an input's live code references (not only the linker's own glue), by
/// symbol: what the allow-list applies to.
fn referenced_by_inputs(g: &LinkGraph) -> Vec<bool> {
    let mut by_input = vec![false; g.symbols.len()];
    let linker = g
        .inputs
        .iter()
        .position(|i| i.name == super::passes::LINKER_INPUT);
    for b in g.blocks.iter().filter(|b| b.live) {
        if Some(g.sections[b.section.idx()].input.idx()) != linker {
            for e in &b.edges {
                by_input[e.target.idx()] = true;
            }
        }
    }
    by_input
}

/// A session defines a few names, if any: up to this many are compared with the names wanted
/// (the map walked once), more are hashed, one look-up a name.
const SCANNED_DEFINES: usize = 4;

/// Bind the symbols of `wanted` still undefined that `defines` defines. Whether all is well: none
/// of them is a thread-local symbol bound outside the unit ([`tls_bound_outside`]).
#[inline(always)]
fn bind_defined(g: &mut LinkGraph, defines: &FxHashMap<String, u64>, wanted: &[SymbolId]) -> bool {
    let mut all_well = true;
    let mut bind = |s: &mut Symbol, a: u64| {
        s.def = SymbolDef::Absolute(a);
        all_well &= !(s.tls && a != 0);
    };
    if defines.len() <= SCANNED_DEFINES {
        // (Each definition compared with the few names: walking the map once a name, and
        // checking that a name is UTF-8 and hashing it, cost a JIT's unit about 50 instructions
        // a name.)
        for (name, &a) in defines {
            for &id in wanted {
                let s = &mut g.symbols[id.idx()];
                if matches!(s.def, SymbolDef::Undefined) && same_name(s.name, name.as_bytes()) {
                    bind(s, a);
                }
            }
        }
    } else {
        for &id in wanted {
            let s = &mut g.symbols[id.idx()];
            if !matches!(s.def, SymbolDef::Undefined) {
                continue;
            }
            if let Some(a) = defined(defines, s.name) {
                bind(s, a);
            }
        }
    }
    all_well
}

/// The address `defines` gives `name`, hashed.
fn defined(defines: &FxHashMap<String, u64>, name: &[u8]) -> Option<u64> {
    std::str::from_utf8(name)
        .ok()
        .and_then(|n| defines.get(n))
        .copied()
}

/// Names bound from the session without allocating their list.
const FEW_NAMES: usize = 8;

/// Resolve every undefined symbol that live code references: definitions, the session's live
/// units, the runtime's own symbols, libraries (in order), the process. Weak references found
/// nowhere become 0. All failures are reported together, each with its referencing inputs.
pub fn resolve_externals(
    g: &mut LinkGraph,
    ex: &dyn Executor,
    scopes: &ExternalScopes,
) -> Result<usize> {
    // A JIT's unit asks for a few names: the list, the batch and its answers live on the
    // stack (plain arrays: a `SmallVec` costs more in checks than it saves in stores).
    let mut wanted = [SymbolId(0); FEW_NAMES];
    let Some(n) = few_wanted_symbols(g, &mut wanted) else {
        return resolve_many(g, ex, scopes);
    };
    let mut names = [&[][..]; FEW_NAMES];
    let mut bound = [None; FEW_NAMES];
    resolve_wanted(g, ex, scopes, &wanted[..n], &mut names, &mut bound)
}

/// [`resolve_externals`] of a unit that references more than a few undefined symbols (out of
/// line: its lists are allocated).
#[inline(never)]
fn resolve_many(g: &mut LinkGraph, ex: &dyn Executor, scopes: &ExternalScopes) -> Result<usize> {
    let wanted = wanted_symbols(g);
    let mut names = vec![&[][..]; wanted.len()];
    let mut bound = vec![None; wanted.len()];
    resolve_wanted(g, ex, scopes, &wanted, &mut names, &mut bound)
}

/// Bind `wanted` (`names` and `bound`, at least as long, are room for the session's batch):
/// what the definitions and the session bind, then (when something is left, or a thread-local
/// symbol was bound outside the unit) the rest and the errors.
#[inline(always)]
fn resolve_wanted<'a>(
    g: &mut LinkGraph<'a>,
    ex: &dyn Executor,
    scopes: &ExternalScopes,
    wanted: &[SymbolId],
    names: &mut [&'a [u8]],
    bound: &mut [Option<u64>],
) -> Result<usize> {
    // (A JIT's usual case: everything bound, the executor not asked for its list.)
    if bind_in_scopes(g, scopes, wanted, names, bound) {
        return Ok(wanted.len());
    }
    outside_the_session(g, ex, scopes, wanted)
}

/// Whether `id`, a thread-local symbol, was bound to an address outside the unit (a
/// definition or another unit: the linker cannot make that address thread-local).
fn tls_bound_outside(g: &LinkGraph, id: SymbolId) -> bool {
    let s = &g.symbols[id.idx()];
    s.tls && matches!(s.def, SymbolDef::Absolute(a) if a != 0)
}

/// Bind `wanted` to the definitions, then what they do not define to the session's live units
/// (one batch, `names` and its answers `bound`: one lock). Whether all is well: every symbol
/// bound, none of them a thread-local one bound outside the unit ([`tls_bound_outside`]).
/// What is left is still undefined.
#[inline(always)]
fn bind_in_scopes<'a>(
    g: &mut LinkGraph<'a>,
    scopes: &ExternalScopes,
    wanted: &[SymbolId],
    names: &mut [&'a [u8]],
    bound: &mut [Option<u64>],
) -> bool {
    let mut all_well = bind_defined(g, scopes.defines, wanted);
    let mut asked = 0;
    for &id in wanted {
        let s = &g.symbols[id.idx()];
        if matches!(s.def, SymbolDef::Undefined) {
            names[asked] = s.name;
            asked += 1;
        }
    }
    if asked == 0 {
        return all_well;
    }
    scopes.session.bind(&names[..asked], &mut bound[..asked]);
    // The symbols asked for are the ones still undefined, in order.
    let mut answers = bound[..asked].iter();
    for &id in wanted {
        let s = &mut g.symbols[id.idx()];
        if !matches!(s.def, SymbolDef::Undefined) {
            continue;
        }
        match answers.next() {
            Some(&Some(a)) => {
                s.def = SymbolDef::Absolute(a);
                all_well &= !(s.tls && a != 0);
            }
            _ => all_well = false,
        }
    }
    all_well
}

/// What neither the definitions nor the session bound (the symbols of `wanted` still
/// undefined): the runtime's own symbols are bound here; the rest is either not allowed (the allow-list applies outside the session's code,
/// except to symbols only the linker's own glue references: the glue exists only if its own
/// name was allowed) or looked up in the executor's libraries and process. Then every failure
/// of `wanted`, reported together.
#[inline(never)]
fn outside_the_session(
    g: &mut LinkGraph,
    ex: &dyn Executor,
    scopes: &ExternalScopes,
    wanted: &[SymbolId],
) -> Result<usize> {
    let rest: Vec<SymbolId> = wanted
        .iter()
        .copied()
        .filter(|id| matches!(g.symbols[id.idx()].def, SymbolDef::Undefined))
        .collect();
    let runtime = ex.runtime_symbols();
    let by_input = scopes.allow.map(|_| referenced_by_inputs(g));
    let mut disallowed: Vec<SymbolId> = Vec::new();
    let mut for_executor: Vec<SymbolId> = Vec::new();
    for &id in &rest {
        let name = String::from_utf8_lossy(g.symbols[id.idx()].name);
        let from_runtime = runtime.iter().find(|(n, _)| *n == name).map(|(_, a)| a.0);
        let allowed = from_runtime.is_some()
            || by_input.as_ref().is_some_and(|b| !b[id.idx()])
            || scopes.allow.is_none_or(|a| a.contains(name.as_ref()));
        match (allowed, from_runtime) {
            (false, _) => disallowed.push(id),
            (true, Some(a)) => g.symbols[id.idx()].def = SymbolDef::Absolute(a),
            (true, None) => for_executor.push(id),
        }
    }
    let errors = bind_in_executor(g, ex, scopes, &for_executor)?;
    let tls_outside: Vec<SymbolId> = wanted
        .iter()
        .copied()
        .filter(|&id| tls_bound_outside(g, id))
        .collect();
    if errors.is_empty() && disallowed.is_empty() && tls_outside.is_empty() {
        return Ok(wanted.len());
    }
    let refs = |ids: &[SymbolId]| -> Vec<SymbolReference> {
        ids.iter()
            .map(|id| SymbolReference {
                name: g.name_of(*id),
                referenced_by: referrers(g, *id),
            })
            .collect()
    };
    Err(Error::Unresolved(Box::new(Unresolved {
        undefined: refs(&errors),
        not_allowed: refs(&disallowed),
        foreign_tls: refs(&tls_outside),
    })))
}

/// The inputs whose live code references `id`.
pub fn referrers(g: &LinkGraph, id: SymbolId) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for b in g.blocks.iter().filter(|b| b.live) {
        if b.edges.iter().any(|e| e.target == id) {
            let n = g.input_name(g.sections[b.section.idx()].input);
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
    }
    names
}

/// Look names up in the executor's libraries and process; returns the ones found nowhere (weak
/// ones become 0).
fn bind_in_executor(
    g: &mut LinkGraph,
    ex: &dyn Executor,
    scopes: &ExternalScopes,
    ids: &[SymbolId],
) -> Result<Vec<SymbolId>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<&[u8]> = ids.iter().map(|id| g.symbols[id.idx()].name).collect();
    let addrs = ex.lookup(&names, scopes.libraries, scopes.process)?;
    let mut errors = Vec::new();
    for (id, addr) in ids.iter().zip(addrs) {
        let s = &mut g.symbols[id.idx()];
        match addr {
            Some(a) => {
                tracing::trace!(
                    "{} -> {a} (library or process)",
                    String::from_utf8_lossy(s.name)
                );
                s.def = SymbolDef::Absolute(a.0)
            }
            None if s.weak || s.only_weak_refs => {
                tracing::debug!("weak {} found nowhere: 0", String::from_utf8_lossy(s.name));
                s.def = SymbolDef::Absolute(0)
            }
            None => errors.push(*id),
        }
    }
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scanned (a few defines) or hashed (more), a wanted symbol is bound to its definition and
    /// to nothing else, as the map says; one already defined is left alone; a thread-local one
    /// bound to a non-zero address is reported.
    #[test]
    fn bind_defined_binds_what_the_map_defines() {
        let arch = crate::arch::for_triple("x86_64-unknown-linux-gnu").expect("x86-64");
        let names: Vec<String> = [
            "d0", "d1", "d3", "d9", "e1", "d", "d0\0", "d10", "", "\u{e9}d4",
        ]
        .iter()
        .map(|n| n.to_string())
        .collect();
        for count in [0u64, 1, 2, 4, 5, 40] {
            let mut defines: FxHashMap<String, u64> =
                (0..count).map(|i| (format!("d{i}"), 0x1000 + i)).collect();
            defines.insert("\u{e9}d4".to_string(), 0);
            for tls_at in [None, Some(0), Some(2)] {
                let mut g = LinkGraph::with_capacity(arch, 1, 1, 16);
                let input = g.add_input("a", true);
                let wanted: Vec<SymbolId> = names
                    .iter()
                    .map(|n| g.global_ref(n.as_bytes(), input, false))
                    .collect();
                // One wanted symbol already bound: it keeps its address.
                g.symbols[wanted[3].idx()].def = SymbolDef::Absolute(7);
                if let Some(i) = tls_at {
                    g.symbols[wanted[i].idx()].tls = true;
                }
                let all_well = bind_defined(&mut g, &defines, &wanted);
                let mut tls_outside = false;
                for (i, (name, id)) in names.iter().zip(&wanted).enumerate() {
                    let want = if i == 3 {
                        SymbolDef::Absolute(7)
                    } else {
                        match defines.get(name) {
                            Some(&a) => {
                                tls_outside |= tls_at == Some(i) && a != 0;
                                SymbolDef::Absolute(a)
                            }
                            None => SymbolDef::Undefined,
                        }
                    };
                    assert_eq!(g.symbols[id.idx()].def, want, "{name} of {count}");
                }
                assert_eq!(all_well, !tls_outside, "{count} {tls_at:?}");
            }
        }
    }
}
