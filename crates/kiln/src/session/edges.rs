//! Edges changed after linking by a JIT layer: a call site retargeted, a slot given a new
//! address. The unit's relink record must say so, or moving code (compaction) or redefining
//! what the field was linked to would apply the edge again to its link-time target and undo the
//! change.

use super::{write, Session, UnitId};
use crate::error::Result;
use crate::link::relink::{RelinkEdge, RelinkTarget};
use kiln_target::ExecutorAddr;
use std::sync::Arc;

impl Session {
    /// The field at `field` (a call's rel32, a 64-bit slot) of a unit that keeps a relink record
    /// was changed outside the link to reach a new target: make the record's edge there target
    /// `target_of(edge)` — the address the edge's symbol would have to have (for a call's
    /// `BranchPCRel32` with addend −4, the address called) — so that a move or a redefinition
    /// applies it to that target from now on. The unit's dependencies follow: it binds to the
    /// unit holding the new target (which then cannot be removed while it does), and stops
    /// binding to the one of the old target if no other edge of it reaches that unit.
    ///
    /// Returns the edge's index in the record, or `None` if no edge of a relink record lies at
    /// `field` (units without relink records keep nothing to update) or `target_of` declined
    /// it (an edge of a kind the caller's change does not describe).
    pub fn set_edge_target(
        &self,
        field: ExecutorAddr,
        target_of: impl FnOnce(&RelinkEdge) -> Option<u64>,
    ) -> Result<Option<usize>> {
        let mut st = write(&self.state);
        let Some((unit, segment, offset)) = st.unit_at(field.0) else {
            return Ok(None);
        };
        let Some(rec) = st.units.get(&unit).and_then(|u| u.relink().cloned()) else {
            return Ok(None);
        };
        let Some(idx) = rec
            .edges
            .iter()
            .position(|e| e.segment == segment && u64::from(e.offset) == offset)
        else {
            return Ok(None);
        };
        let old = rec.edges[idx].target;
        let Some(s) = target_of(&rec.edges[idx]) else {
            return Ok(None);
        };
        let new = match st.unit_at(s) {
            Some((u, segment, offset)) if u == unit => RelinkTarget::Internal { segment, offset },
            Some((u, segment, offset)) => RelinkTarget::Unit {
                unit: UnitId(u),
                segment,
                offset,
            },
            None => RelinkTarget::Absolute(s),
        };
        let edge = (unit, idx as u32);
        if let RelinkTarget::Unit { unit: t, .. } = old {
            if let Some(t) = st.units.get_mut(&t.0) {
                t.retain_incoming(|x| *x != edge);
            }
        }
        if let RelinkTarget::Unit { unit: t, .. } = new {
            if let Some(t) = st.units.get_mut(&t.0) {
                t.add_incoming(edge);
                t.add_dependent(unit);
            }
        }
        let Some(u) = st.units.get_mut(&unit) else {
            return Ok(None);
        };
        let Some(rec) = u.relink_mut() else {
            return Ok(None);
        };
        let rec = Arc::make_mut(rec);
        rec.edges[idx].target = new;
        let still_reaches = |t: UnitId| {
            rec.edges
                .iter()
                .any(|e| matches!(e.target, RelinkTarget::Unit { unit, .. } if unit == t))
        };
        let dropped = match old {
            RelinkTarget::Unit { unit: t, .. } if !still_reaches(t) => Some(t.0),
            _ => None,
        };
        if let RelinkTarget::Unit { unit: t, .. } = new {
            u.add_dep(t.0);
        }
        if let Some(t) = dropped {
            u.retain_deps(|d| d != t);
            if let Some(t) = st.units.get_mut(&t) {
                t.retain_dependents(|d| d != unit);
            }
        }
        Ok(Some(idx))
    }
}
