//! Symbol resolution: archive members on demand, then the scopes outside the unit.

use crate::elf::archive::Archive;
use crate::elf::object::parse_object;
use crate::error::{DuplicateSymbol, Error, Result, SymbolReference, Unresolved};
use crate::graph::*;
use kiln_target::{Executor, ExecutorAddr, LibraryId};
use rustc_hash::{FxHashMap, FxHashSet};

/// Load archive members until no strong undefined symbol can be satisfied by one. Like ld's
/// `--start-group`: the order of archives does not matter, members are loaded only when they
/// define a symbol that is needed (a weak reference alone does not load a member).
pub fn load_archive_members<'a>(g: &mut LinkGraph<'a>, archives: &mut [Archive<'a>]) -> Result<()> {
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

/// Where symbols outside the unit come from, in order.
pub struct ExternalScopes<'s> {
    pub defines: &'s FxHashMap<String, u64>,
    /// Symbols of earlier units of the session (newest definition first).
    pub prior: &'s dyn Fn(&str) -> Option<ExecutorAddr>,
    pub libraries: &'s [LibraryId],
    pub process: bool,
    /// When set, only these names may be bound outside the unit.
    pub allow: Option<&'s FxHashSet<String>>,
}

/// Resolve every undefined symbol that live code references: `--define`s, earlier units of the
/// session, the runtime's own symbols, libraries (in order), the process. Weak references
/// found nowhere become 0. All failures are reported together, each with its referencing objects.
pub fn resolve_externals(
    g: &mut LinkGraph,
    ex: &dyn Executor,
    scopes: &ExternalScopes,
) -> Result<usize> {
    let mut wanted: Vec<SymbolId> = Vec::new();
    let mut seen = vec![false; g.symbols.len()];
    // Symbols that only the linker's own glue references (e.g. `__cxa_atexit` behind the unit's
    // `atexit`) are exempt from the allow-list: the glue exists only if its own name was allowed.
    let mut by_input = vec![false; g.symbols.len()];
    let kiln_input = g
        .inputs
        .iter()
        .position(|i| i.name == super::passes::LINKER_INPUT);
    for b in g.blocks.iter().filter(|b| b.live) {
        let from_input = Some(g.sections[b.section.idx()].input.idx()) != kiln_input;
        for e in &b.edges {
            let t = e.target.idx();
            if g.symbols[t].def == SymbolDef::Undefined {
                by_input[t] |= from_input;
                if !seen[t] {
                    seen[t] = true;
                    wanted.push(e.target);
                }
            }
        }
    }
    let mut errors: Vec<SymbolId> = Vec::new();
    let mut disallowed: Vec<SymbolId> = Vec::new();
    let mut for_executor: Vec<SymbolId> = Vec::new();
    let runtime = ex.runtime_symbols();
    for &id in &wanted {
        let name = String::from_utf8_lossy(g.symbols[id.idx()].name);
        let runtime_provided = runtime.iter().any(|(n, _)| *n == name);
        if let Some(allow) = scopes
            .allow
            .filter(|_| by_input[id.idx()] && !runtime_provided)
        {
            if !allow.contains(name.as_ref()) {
                disallowed.push(id);
                continue;
            }
        }
        let found = scopes
            .defines
            .get(name.as_ref())
            .copied()
            .or_else(|| (scopes.prior)(name.as_ref()).map(|a| a.0))
            .or_else(|| runtime.iter().find(|(n, _)| *n == name).map(|(_, a)| a.0));
        match found {
            Some(a) => g.symbols[id.idx()].def = SymbolDef::Absolute(a),
            None => for_executor.push(id),
        }
    }
    let names: Vec<&[u8]> = for_executor
        .iter()
        .map(|id| g.symbols[id.idx()].name)
        .collect();
    let addrs = ex.lookup(&names, scopes.libraries, scopes.process)?;
    for (id, addr) in for_executor.iter().zip(addrs) {
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
    let mut tls_outside = Vec::new();
    for &id in &wanted {
        let s = &g.symbols[id.idx()];
        if s.tls && matches!(s.def, SymbolDef::Absolute(a) if a != 0) {
            tls_outside.push(id);
        }
    }
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
    Err(Error::Unresolved(Unresolved {
        undefined: refs(&errors),
        not_allowed: refs(&disallowed),
        foreign_tls: refs(&tls_outside),
    }))
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
