//! `kiln_session_t`: a [`Session`] and the numbers C uses for its units and scopes.
//!
//! kiln's `UnitId` and `ScopeId` keep their numbers private (no conversion to or from an
//! integer), so the C API numbers them itself, in tables kept beside the session: a
//! `kiln_unit_t` is never reused, and one that was removed is simply not in the table (an
//! error, not a crash). Scope 0 is the session's default scope.

use crate::error::CError;
use crate::ffi::types::*;
use kiln_core::{Error, ScopeId, Session, SymbolInfo, UnitId};
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) struct CSession {
    /// Shared with what is built on the session (kiln-jit's zone, later).
    pub(crate) session: Arc<Session>,
    units: Mutex<Numbering<UnitId>>,
    /// Shared with the session's C definition generators, which tell their callbacks the scope.
    scopes: Arc<Mutex<Numbering<ScopeId>>>,
}

impl CSession {
    pub(crate) fn new(session: Session) -> Self {
        let mut scopes = Numbering::starting_at(u64::from(KILN_SCOPE_DEFAULT));
        scopes.number(session.default_scope());
        CSession {
            session: Arc::new(session),
            units: Mutex::new(Numbering::starting_at(1)),
            scopes: Arc::new(Mutex::new(scopes)),
        }
    }

    // ---- units ----

    /// The kiln unit of a C unit number.
    pub(crate) fn unit(&self, unit: kiln_unit_t) -> Result<UnitId, CError> {
        lock(&self.units).get(unit).ok_or_else(|| {
            CError::new(
                KILN_ERROR_UNKNOWN_UNIT,
                format!(
                    "unit {unit} is not a live unit of this session (removed, or never linked)"
                ),
            )
        })
    }

    /// The C number of a kiln unit (numbered now if it is new).
    pub(crate) fn c_unit(&self, unit: UnitId) -> kiln_unit_t {
        lock(&self.units).number(unit)
    }

    pub(crate) fn c_units(&self, units: &[UnitId]) -> Vec<kiln_unit_t> {
        units.iter().map(|u| self.c_unit(*u)).collect()
    }

    /// Remove `unit` from the session.
    pub(crate) fn remove(&self, unit: kiln_unit_t) -> Result<(), CError> {
        let id = self.unit(unit)?;
        let result = self.session.remove(id);
        // Even a failed remove may have withdrawn the unit (its destructors failed after).
        self.forget_removed();
        result.map_err(|e| self.error(e))
    }

    /// Remove `unit` and everything that depends on it; the units removed, dependents first.
    pub(crate) fn remove_with_dependents(
        &self,
        unit: kiln_unit_t,
    ) -> Result<Vec<kiln_unit_t>, CError> {
        let id = self.unit(unit)?;
        let result = self.session.remove_with_dependents(id);
        let removed = result.map(|r| self.c_units(&r));
        self.forget_removed();
        removed.map_err(|e| self.error(e))
    }

    /// Drop the numbers of units the session no longer has. The table is locked before the
    /// session is asked, so that a unit linked meanwhile (numbered only after its link
    /// returns) cannot be dropped by mistake.
    pub(crate) fn forget_removed(&self) {
        let mut units = lock(&self.units);
        let live: Vec<UnitId> = self.session.units();
        units.retain(|u| live.contains(u));
    }

    // ---- scopes ----

    pub(crate) fn scope(&self, scope: kiln_scope_t) -> Result<ScopeId, CError> {
        lock(&self.scopes).get(u64::from(scope)).ok_or_else(|| {
            CError::invalid_argument(format!("scope {scope} is not a scope of this session"))
        })
    }

    pub(crate) fn c_scope(&self, scope: ScopeId) -> kiln_scope_t {
        c_scope(&self.scopes, scope)
    }

    pub(crate) fn scope_numbers(&self) -> Arc<Mutex<Numbering<ScopeId>>> {
        Arc::clone(&self.scopes)
    }

    // ---- lookups ----

    /// `name` as units of `scope` see it; an error if nothing defines it.
    pub(crate) fn lookup(&self, scope: kiln_scope_t, name: &str) -> Result<SymbolInfo, CError> {
        let id = self.scope(scope)?;
        self.session.lookup_symbol(id, name).ok_or_else(|| {
            CError::new(
                KILN_ERROR_UNDEFINED,
                format!("{name} is not defined by any live unit visible from scope {scope}"),
            )
        })
    }

    /// A kiln error as C sees it, units given by their C numbers.
    pub(crate) fn error(&self, e: Error) -> CError {
        match &e {
            Error::HasDependents { unit, dependents } => {
                let names: Vec<String> = self
                    .c_units(dependents)
                    .iter()
                    .map(|u| format!("unit {u}"))
                    .collect();
                CError::new(
                    KILN_ERROR_HAS_DEPENDENTS,
                    format!(
                        "unit {} cannot be removed: {} bind{} to it (remove them first, or use \
                         kiln_session_remove_with_dependents)",
                        self.c_unit(*unit),
                        names.join(", "),
                        if names.len() == 1 { "s" } else { "" }
                    ),
                )
            }
            Error::UnitInUse(unit) => CError::new(
                KILN_ERROR_UNIT_IN_USE,
                format!(
                    "unit {} is in use by a link in progress; try again when it is done",
                    self.c_unit(*unit)
                ),
            ),
            _ => {
                let c = CError::from(e);
                CError::new(c.kind(), self.c_unit_names(c.message()))
            }
        }
    }

    /// `message` with kiln's own unit numbers ("unit 7", as kiln prints a `UnitId`) replaced
    /// by the C numbers of those units, so that a message names units as C knows them.
    pub(crate) fn c_unit_names(&self, message: &str) -> String {
        if !message.contains("unit ") {
            return message.to_string();
        }
        // Every live unit gets a C number (a stub's unit, say, may never have been shown to C).
        for u in self.session.units() {
            self.c_unit(u);
        }
        let names: HashMap<String, u64> = lock(&self.units)
            .by_id
            .iter()
            .map(|(id, n)| (id.to_string(), *n))
            .collect();
        let mut out = String::with_capacity(message.len());
        let mut rest = message;
        while let Some(i) = rest.find("unit ") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 5..];
            let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let word = &rest[i..i + 5 + digits];
            match names.get(word) {
                Some(n) if digits > 0 => out.push_str(&format!("unit {n}")),
                _ => out.push_str(word),
            }
            rest = &rest[i + 5 + digits..];
        }
        out.push_str(rest);
        out
    }

    /// Run a link: its error as C sees it, with `KILN_ERROR_CALLBACK` when a C definition
    /// generator's error ended it.
    pub(crate) fn linking<T>(
        &self,
        link: impl FnOnce() -> kiln_core::Result<T>,
    ) -> Result<T, CError> {
        let outer = CALLBACK_FAILED.replace(false);
        let result = link();
        let callback_failed = CALLBACK_FAILED.replace(outer);
        result.map_err(|e| {
            let mut c = self.error(e);
            if callback_failed {
                c.set_kind(KILN_ERROR_CALLBACK);
            }
            c
        })
    }
}

pub(crate) fn c_scope(scopes: &Mutex<Numbering<ScopeId>>, scope: ScopeId) -> kiln_scope_t {
    // Scopes are never removed and there are fewer than 2^32 of them (kiln numbers them u32).
    lock(scopes).number(scope) as kiln_scope_t
}

thread_local! {
    /// Set by a C definition generator whose callback returned an error, on the linking thread
    /// (generators run on it); read by [`CSession::linking`].
    static CALLBACK_FAILED: Cell<bool> = const { Cell::new(false) };
}

pub(crate) fn note_callback_failure() {
    CALLBACK_FAILED.set(true);
}

/// Numbers for kiln ids, both ways; a number is never given twice.
pub(crate) struct Numbering<T> {
    by_number: HashMap<u64, T>,
    by_id: HashMap<T, u64>,
    next: u64,
}

impl<T: Copy + Eq + Hash> Numbering<T> {
    fn starting_at(first: u64) -> Self {
        Numbering {
            by_number: HashMap::new(),
            by_id: HashMap::new(),
            next: first,
        }
    }

    fn get(&self, n: u64) -> Option<T> {
        self.by_number.get(&n).copied()
    }

    fn number(&mut self, id: T) -> u64 {
        if let Some(n) = self.by_id.get(&id) {
            return *n;
        }
        let n = self.next;
        self.next += 1;
        self.by_number.insert(n, id);
        self.by_id.insert(id, n);
        n
    }

    fn retain(&mut self, keep: impl Fn(&T) -> bool) {
        self.by_number.retain(|_, id| keep(id));
        self.by_id.retain(|id, _| keep(id));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::graph::InMemoryGraph;
    use kiln_core::DebugOptions;

    fn session() -> CSession {
        let s = Session::in_process();
        s.set_debug(DebugOptions::none());
        CSession::new(s)
    }

    fn answer(name: &str) -> InMemoryGraph {
        let mut g = InMemoryGraph::new(name);
        g.add_function(name, vec![0xb8, 42, 0, 0, 0, 0xc3], vec![], None);
        g
    }

    #[test]
    fn removed_units_lose_their_numbers_and_numbers_are_never_reused() {
        let s = session();
        let a = s.c_unit(s.session.link_graph(&answer("a")).unwrap());
        let b = s.c_unit(s.session.link_graph(&answer("b")).unwrap());
        assert_eq!((a, b), (1, 2));
        s.remove(a).unwrap();
        let e = s.remove(a).unwrap_err();
        assert_eq!(e.kind(), KILN_ERROR_UNKNOWN_UNIT);
        assert!(
            e.message().contains("unit 1 is not a live unit"),
            "{}",
            e.message()
        );
        let c = s.c_unit(s.session.link_graph(&answer("a")).unwrap());
        assert_eq!(c, 3);
        assert!(s.unit(b).is_ok());
    }

    #[test]
    fn messages_name_units_by_their_c_numbers() {
        let s = session();
        let a = s.session.link_graph(&answer("a")).unwrap();
        let b = s.session.link_graph(&answer("b")).unwrap();
        // C numbers in the other order than kiln's.
        assert_eq!(s.c_unit(b), 1);
        assert_eq!(s.c_unit(a), 2);
        let text = format!("{a} and {b}, unit 99, a unit of code, unit");
        assert_eq!(
            s.c_unit_names(&text),
            "unit 2 and unit 1, unit 99, a unit of code, unit"
        );
    }

    #[test]
    fn default_scope_is_zero() {
        let s = session();
        assert_eq!(s.c_scope(s.session.default_scope()), KILN_SCOPE_DEFAULT);
        let other = s.session.create_scope("other").unwrap();
        assert_eq!(s.c_scope(other), 1);
        assert!(s.scope(2).is_err());
    }
}
