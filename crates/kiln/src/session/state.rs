//! The session's symbol tables and units: what is live, who defines what, who depends on whom.
//!
//! Scopes behave like shared objects (ORC's JITDylibs): a unit belongs to one scope; its
//! default-visibility (and protected) symbols are visible to every unit that searches its scope;
//! its hidden symbols only to units of the same scope. A unit binds first to its own scope, then
//! to the scopes of that scope's search order, in order.

use super::units::{Few, UnitTable};
use crate::error::{DuplicateSymbol, Error, Result};
use crate::link::relink::{RelinkRecord, RelinkTarget};
use crate::link::Export;
use crate::memory::{CodeMemory, SlabRange};
use kiln_target::{AllocId, ExecutorAddr};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A named symbol table with a search order, like ORC's JITDylib. See [`crate::Session::create_scope`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeId(pub(crate) u32);

/// A linked unit of a session. Ids are never reused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId(pub(crate) u64);

impl std::fmt::Display for UnitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unit {}", self.0)
    }
}

/// What a symbol is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SymbolKind {
    /// Code (`STT_FUNC`, or a graph symbol marked callable).
    Function,
    /// Anything else with an address.
    Data,
}

/// A symbol a live unit defines, as lookups report it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SymbolInfo {
    pub addr: ExecutorAddr,
    pub size: u64,
    pub kind: SymbolKind,
    /// Visible to other scopes (default or protected visibility); `false` for hidden symbols,
    /// which only units of the same scope see.
    pub exported: bool,
    pub unit: UnitId,
}

#[derive(Copy, Clone, Debug)]
pub(crate) struct Def {
    pub addr: u64,
    pub size: u64,
    pub unit: u64,
    pub kind: SymbolKind,
    pub exported: bool,
    pub weak: bool,
}

impl Def {
    pub fn info(&self) -> SymbolInfo {
        SymbolInfo {
            addr: ExecutorAddr(self.addr),
            size: self.size,
            kind: self.kind,
            exported: self.exported,
            unit: UnitId(self.unit),
        }
    }
}

pub(crate) struct Scope {
    pub name: String,
    /// Scopes searched after this one, in order.
    pub search: Vec<ScopeId>,
    /// Names are shared with the defining unit's record (`Unit::names`).
    pub symbols: FxHashMap<std::sync::Arc<str>, Def>,
}

pub(crate) struct Unit {
    pub alloc: AllocId,
    pub scope: ScopeId,
    /// Where its ranges came from (`None`: a reservation of its own).
    pub memory: Option<Arc<dyn CodeMemory>>,
    pub slab_ranges: Few<SlabRange>,
    /// (address, size) of its segments.
    pub segments: Vec<(u64, u64)>,
    /// Its edges, when it keeps them (see [`crate::Session::relink_record`]), with its segments
    /// where it was linked.
    pub relink: Option<Arc<RelinkRecord>>,
    /// Its finalize actions as linked (relink units only): moving it registers them again.
    pub link_actions: Option<Arc<Vec<kiln_target::ActionPair>>>,
    /// Edges of other units that target this one: (unit, index into its record's edges).
    pub incoming: Vec<(u64, u32)>,
    /// Names this unit defines in its scope's table (the ones that won).
    pub names: Few<std::sync::Arc<str>>,
    /// Units this one binds to.
    pub deps: Few<u64>,
    /// Units that bind to this one.
    pub dependents: Few<u64>,
    /// Links in progress that bound to this unit and have not published yet.
    pub pins: AtomicU32,
    pub initialized: bool,
    pub stats: Option<Box<crate::LinkStats>>,
    pub map: Option<std::sync::Arc<crate::LinkMap>>,
}

pub(crate) struct State {
    pub scopes: Vec<Scope>,
    pub units: UnitTable,
    pub next_unit: u64,
    /// Every live unit's segments by start address: (end, unit, segment index).
    pub by_addr: BTreeMap<u64, (u64, u64, u8)>,
}

impl State {
    pub fn new() -> Self {
        State {
            scopes: vec![Scope {
                name: "default".into(),
                search: Vec::new(),
                symbols: FxHashMap::default(),
            }],
            units: UnitTable::default(),
            next_unit: 1,
            by_addr: BTreeMap::new(),
        }
    }

    pub fn scope(&self, s: ScopeId) -> Result<&Scope> {
        self.scopes
            .get(s.0 as usize)
            .ok_or_else(|| Error::Usage(format!("no scope {}", s.0)))
    }

    pub fn unit(&self, u: UnitId) -> Result<&Unit> {
        self.units.get(&u.0).ok_or_else(|| {
            Error::Usage(format!("no {u} in this session (removed, or never linked)"))
        })
    }

    /// The definition of `name` a unit of scope `from` binds to.
    pub fn visible(&self, from: ScopeId, name: &str) -> Option<&Def> {
        let own = self.scopes.get(from.0 as usize)?;
        if let Some(d) = own.symbols.get(name) {
            return Some(d);
        }
        own.search.iter().find_map(|s| {
            self.scopes
                .get(s.0 as usize)?
                .symbols
                .get(name)
                .filter(|d| d.exported)
        })
    }

    /// Strong definitions of `exports` that clash with live units' in scope `s`.
    pub fn clashes(
        &self,
        s: ScopeId,
        exports: &[Export],
        input: &str,
        replacing: Option<u64>,
    ) -> Vec<DuplicateSymbol> {
        let Some(scope) = self.scopes.get(s.0 as usize) else {
            return Vec::new();
        };
        exports
            .iter()
            .filter_map(|e| {
                let d = scope.symbols.get(&*e.name)?;
                (!d.weak && !e.weak && Some(d.unit) != replacing).then(|| DuplicateSymbol {
                    name: e.name.to_string(),
                    first: format!("unit {}", d.unit),
                    second: input.to_string(),
                })
            })
            .collect()
    }

    /// Enter a linked unit: its symbols into its scope (the first definition of a name stays),
    /// its dependencies both ways, its pins released.
    pub fn publish(
        &mut self,
        id: u64,
        mut unit: Unit,
        exports: Vec<Export>,
        deps: &[u64],
        replacing: Option<u64>,
    ) {
        use std::collections::hash_map::Entry;
        let scope = &mut self.scopes[unit.scope.0 as usize];
        let mut taken: Vec<Arc<str>> = Vec::new();
        for e in exports {
            let slot = match scope.symbols.entry(e.name) {
                Entry::Vacant(v) => v,
                // A redefinition takes over the names of the unit it replaces.
                Entry::Occupied(o) if Some(o.get().unit) == replacing => {
                    let (name, _) = o.remove_entry();
                    taken.push(name.clone());
                    match scope.symbols.entry(name) {
                        Entry::Vacant(v) => v,
                        Entry::Occupied(_) => continue,
                    }
                }
                Entry::Occupied(_) => continue,
            };
            unit.names.push(slot.key().clone());
            slot.insert(Def {
                addr: e.addr,
                size: e.size,
                unit: id,
                kind: e.kind,
                exported: e.exported,
                weak: e.weak,
            });
        }
        for d in deps {
            if let Some(dep) = self.units.get_mut(d) {
                dep.pins.fetch_sub(1, Ordering::Relaxed);
                if !dep.dependents.contains(&id) {
                    dep.dependents.push(id);
                }
            }
        }
        if let Some(old) = replacing.and_then(|r| self.units.get_mut(&r)) {
            old.names.retain(|n| !taken.contains(n));
        }
        unit.deps = deps.iter().copied().collect();
        for (i, &(addr, size)) in unit.segments.iter().enumerate() {
            if size > 0 {
                self.by_addr.insert(addr, (addr + size, id, i as u8));
            }
        }
        if let Some(rec) = unit.relink.take() {
            unit.relink = Some(Arc::new(self.classify(id, rec)));
        }
        self.units.insert(id, unit);
    }

    /// The live unit, its segment and the offset in it, at `addr`.
    pub fn unit_at(&self, addr: u64) -> Option<(u64, u8, u64)> {
        let (&start, &(end, unit, seg)) = self.by_addr.range(..=addr).next_back()?;
        (addr < end).then_some((unit, seg, addr - start))
    }

    /// Name the absolute targets of a new unit's record that lie in other live units, and
    /// record those edges as incoming on their targets.
    fn classify(&mut self, id: u64, rec: Arc<RelinkRecord>) -> RelinkRecord {
        let mut rec = Arc::unwrap_or_clone(rec);
        for (i, e) in rec.edges.iter_mut().enumerate() {
            let RelinkTarget::Absolute(addr) = e.target else {
                continue;
            };
            let Some((unit, segment, offset)) = self.unit_at(addr) else {
                continue;
            };
            e.target = RelinkTarget::Unit {
                unit: UnitId(unit),
                segment,
                offset,
            };
            if let Some(t) = self.units.get_mut(&unit) {
                t.incoming.push((id, i as u32));
            }
        }
        rec
    }

    /// Release pins a failed link held.
    pub fn unpin(&self, deps: &[u64]) {
        for d in deps {
            if let Some(dep) = self.units.get(d) {
                dep.pins.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Take a unit out of the tables (it must have no dependents and no pins).
    pub fn withdraw(&mut self, id: u64) -> Result<Unit> {
        let unit = self.unit(UnitId(id))?;
        if unit.pins.load(Ordering::Relaxed) > 0 {
            return Err(Error::UnitInUse(UnitId(id)));
        }
        if !unit.dependents.is_empty() {
            let mut dependents: Vec<UnitId> = unit.dependents.iter().map(|d| UnitId(*d)).collect();
            dependents.sort_unstable();
            return Err(Error::HasDependents {
                unit: UnitId(id),
                dependents,
            });
        }
        let unit = self
            .units
            .remove(&id)
            .ok_or_else(|| Error::Internal("unit vanished".into()))?;
        let scope = &mut self.scopes[unit.scope.0 as usize];
        for n in &unit.names {
            scope.symbols.remove(n);
        }
        for d in &unit.deps {
            if let Some(dep) = self.units.get_mut(d) {
                dep.dependents.retain(|x| *x != id);
            }
        }
        for &(addr, size) in &unit.segments {
            if size > 0 {
                self.by_addr.remove(&addr);
            }
        }
        if let Some(rec) = &unit.relink {
            for e in &rec.edges {
                if let RelinkTarget::Unit { unit: t, .. } = e.target {
                    if let Some(t) = self.units.get_mut(&t.0) {
                        t.incoming.retain(|(from, _)| *from != id);
                    }
                }
            }
        }
        Ok(unit)
    }

    /// Take several units out of the tables at once, newest first (dependents before what they
    /// use). Refused before anything changes if a unit outside `ids` binds to one of them, or a
    /// link in progress does.
    pub fn withdraw_all(&mut self, ids: &[u64]) -> Result<Vec<Unit>> {
        let set = UnitSet::new(ids, self.next_unit);
        let mut order: Vec<u64> = ids.to_vec();
        order.sort_unstable();
        order.dedup();
        for &id in &order {
            let unit = self.unit(UnitId(id))?;
            if unit.pins.load(Ordering::Relaxed) > 0 {
                return Err(Error::UnitInUse(UnitId(id)));
            }
            let mut outside: Vec<UnitId> = unit
                .dependents
                .iter()
                .filter(|d| !set.contains(**d))
                .map(|d| UnitId(*d))
                .collect();
            if !outside.is_empty() {
                outside.sort_unstable();
                return Err(Error::HasDependents {
                    unit: UnitId(id),
                    dependents: outside,
                });
            }
        }
        // Lists of units that stay name withdrawn ones: each is filtered once, at the end.
        let (mut deps_of, mut targets) = (Vec::new(), Vec::new());
        let (mut seen_dep, mut seen_target) = (
            UnitSet::new(&[], self.next_unit),
            UnitSet::new(&[], self.next_unit),
        );
        let mut out = Vec::with_capacity(order.len());
        for &id in order.iter().rev() {
            let Some(unit) = self.units.remove(&id) else {
                continue;
            };
            let scope = &mut self.scopes[unit.scope.0 as usize];
            for n in &unit.names {
                scope.symbols.remove(n);
            }
            for &(addr, size) in &unit.segments {
                if size > 0 {
                    self.by_addr.remove(&addr);
                }
            }
            for &d in &unit.deps {
                if !set.contains(d) && !seen_dep.contains(d) {
                    seen_dep.insert(d);
                    deps_of.push(d);
                }
            }
            if let Some(rec) = &unit.relink {
                for e in &rec.edges {
                    if let RelinkTarget::Unit { unit: t, .. } = e.target {
                        if !set.contains(t.0) && !seen_target.contains(t.0) {
                            seen_target.insert(t.0);
                            targets.push(t.0);
                        }
                    }
                }
            }
            out.push(unit);
        }
        for d in deps_of {
            if let Some(dep) = self.units.get_mut(&d) {
                dep.dependents.retain(|x| !set.contains(*x));
            }
        }
        for t in targets {
            if let Some(t) = self.units.get_mut(&t) {
                t.incoming.retain(|(from, _)| !set.contains(*from));
            }
        }
        Ok(out)
    }

    /// The units whose references to other units cannot be written again after those move:
    /// they keep no relink records, or do not live in slab memory.
    pub fn not_rewritable(&self) -> UnitSet {
        let mut set = UnitSet::new(&[], self.next_unit);
        for (&id, u) in &self.units {
            if u.relink.is_none() || u.memory.is_none() {
                set.insert(id);
            }
        }
        set
    }

    /// `id` and every unit that depends on it, directly or not, dependents first.
    pub fn with_dependents(&self, id: u64) -> Result<Vec<u64>> {
        self.unit(UnitId(id))?;
        let mut all = vec![id];
        let mut i = 0;
        while i < all.len() {
            if let Some(u) = self.units.get(&all[i]) {
                for d in &u.dependents {
                    if !all.contains(d) {
                        all.push(*d);
                    }
                }
            }
            i += 1;
        }
        // A unit only binds to units that existed before it: newest first is dependents first.
        all.sort_unstable_by(|a, b| b.cmp(a));
        Ok(all)
    }
}

/// A set of unit ids as a bitmap (ids are dense: they count up from 1).
pub(crate) struct UnitSet(Vec<u64>);

impl UnitSet {
    pub fn new(ids: &[u64], next: u64) -> Self {
        let mut set = UnitSet(vec![0u64; (next as usize).div_ceil(64)]);
        for &id in ids {
            set.insert(id);
        }
        set
    }

    pub fn insert(&mut self, id: u64) {
        if let Some(w) = self.0.get_mut((id / 64) as usize) {
            *w |= 1 << (id % 64);
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.0
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}
