//! What lazy functions need of the session: a stub as a graph, and getting the stub out of the
//! way once its function exists — its jump slot and the direct calls into it retargeted to the
//! function, so that a call costs what a direct call costs. kiln-jit's lazy functions and
//! `kiln run --lazy` both go through [`Session::bypass_lazy_stub`]; the rules of stubs and the
//! trampoline are in docs/lazy.md.
//!
//! A call site is changed only when kiln can tell that it is a direct call of the stub, in code
//! of a live unit of this session, and that one atomic store retargets it:
//!
//! - the 5 bytes before the return address are `e8 rel32` and `rel32` leads to the stub; if the
//!   unit keeps relink records, one of its edges is a call relocation at that `rel32` (without
//!   them the bytes are all kiln has: the tail of a longer instruction could read as `e8 rel32`
//!   only if its last four bytes happened to equal the stub's distance, with an indirect call
//!   through memory that holds the stub's address — compilers give no such code, but a unit
//!   linked with relink records rules it out);
//! - the `rel32` field is 4-byte aligned (an aligned 4-byte store is atomic and never crosses a
//!   cache line; an unaligned field would be written in pieces a running thread could see half
//!   of);
//! - the new target is within ±2 GiB of the call.
//!
//! The store goes through [`kiln_target::Executor::write_live`]: the slab's writable alias,
//! one atomic store per field, then every thread of the executor serializes its instruction
//! stream (docs/memory.md), so no core runs the old call afterwards. A call left as it is still
//! works: it reaches the stub, whose slot leads to the function.

use super::state::State;
use super::{read, Session, UnitId};
use crate::arch::{x86_64, EdgeKind};
use crate::error::{Error, Result};
use crate::graph::{InMemoryEdge, InMemoryGraph};
use kiln_target::{ExecutorAddr, SlabId, SlabWrite, StubKey, LAZY_STUB, LAZY_TRAMPOLINE_SYMBOL};

/// A lazy stub for `key` as a graph defining the callable symbol `name`: [`LAZY_STUB`]'s bytes
/// (16-byte aligned, so the jump slot is naturally aligned) with a `Pointer64` edge from the
/// slot to the executor's trampoline ([`LAZY_TRAMPOLINE_SYMBOL`]).
pub fn lazy_stub_graph(name: &str, key: StubKey) -> InMemoryGraph {
    let mut g = InMemoryGraph::new(format!("{name}.stub"));
    g.add_function(
        name,
        LAZY_STUB.instantiate(key, ExecutorAddr::NULL),
        vec![InMemoryEdge::new(
            LAZY_STUB.target_offset as u32,
            x86_64::EdgeKind::Pointer64,
            LAZY_TRAMPOLINE_SYMBOL,
            0,
        )],
        None,
    );
    g
}

/// A direct call (`call rel32`) in the code of a live unit: where its `rel32` field is. Kept by
/// unit and offset, not by address, so that it still names the same instruction after the unit
/// moved (see [`Session::redirect_call_site`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallSite {
    pub unit: UnitId,
    /// The unit's segment holding the call.
    pub segment: usize,
    /// Offset of the `rel32` field in the segment (the `e8` opcode is the byte before).
    pub offset: u64,
}

/// Why a call was left as it was (it still works: it goes where it went before).
#[non_exhaustive]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CallLeft {
    /// Its bytes could not be read back just now (another call of the executor was writing
    /// them, or the executor refused).
    Unreadable,
    /// Not in the slab memory of a live unit of this session (host code, a unit removed since).
    NotKilnCode,
    /// Not a direct call of the old target: an indirect call, a tail jump, a call retargeted
    /// already, or bytes that are no call.
    NotADirectCall,
    /// A direct call of the old target whose `rel32` is not 4-byte aligned: one atomic store
    /// could not change it.
    Unaligned,
    /// The new target is more than ±2 GiB from the call.
    OutOfReach,
}

/// What became of a call kiln was asked to retarget.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CallRedirect {
    /// It calls the new target now.
    Redirected(CallSite),
    /// It was left as it was.
    Left(CallLeft),
}

/// What [`Session::bypass_lazy_stub`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StubBypass {
    /// The call that entered the stub.
    pub entering: CallRedirect,
    /// Every call now going straight to the function: the entering one if it was changed, and
    /// the direct calls into the stub that units with relink records have.
    pub redirected: Vec<CallSite>,
}

/// A call found retargetable: where to write what.
struct Planned {
    slab: SlabId,
    field: u64,
    rel: i32,
    site: CallSite,
}

fn is_call_relocation(kind: EdgeKind) -> bool {
    matches!(
        kind,
        EdgeKind::X86_64(x86_64::EdgeKind::BranchPCRel32 | x86_64::EdgeKind::Delta32)
    )
}

impl Session {
    /// Get lazy stub `stub` out of the way now that its function is at `code`: its jump slot
    /// is set to `code` (one atomic 8-byte store: threads on their way through it go to the
    /// trampoline or to `code`, both right), then the call that entered it — the call returning
    /// to `entered_from` ([`kiln_target::LazyRequest::return_addr`]) — and every direct call of
    /// the stub that units with relink records make are changed to call `code`, where the
    /// module rules allow (see the module documentation); the others keep calling the stub.
    ///
    /// `stub` must be a lazy stub ([`lazy_stub_graph`]) of a live unit of this session.
    pub fn bypass_lazy_stub(
        &self,
        stub: ExecutorAddr,
        code: ExecutorAddr,
        entered_from: ExecutorAddr,
    ) -> Result<StubBypass> {
        // The state's read lock is held until the stores are done: no unit whose code is
        // changed can be removed or moved meanwhile. Nothing here runs code.
        let st = read(&self.state);
        let (stub_unit, stub_slab) = self.check_stub(&st, stub)?;
        let mut plans = Vec::new();
        let entering = match self.plan_redirect(&st, entered_from.0, stub.0, code.0, false) {
            Ok(p) => {
                let site = p.site;
                plans.push(p);
                CallRedirect::Redirected(site)
            }
            Err(left) => CallRedirect::Left(left),
        };
        let incoming = st.unit(UnitId(stub_unit))?.incoming().clone();
        for (caller, edge) in incoming {
            let Some(field) = recorded_call_field(&st, caller, edge) else {
                continue;
            };
            // The entering call is usually one of them: it was looked at already.
            if field + 4 == entered_from.0 || plans.iter().any(|q| q.field == field) {
                continue;
            }
            if let Ok(p) = self.plan_redirect(&st, field + 4, stub.0, code.0, true) {
                plans.push(p);
            }
        }
        let slot = Slot {
            slab: stub_slab,
            addr: stub.0 + LAZY_STUB.target_offset as u64,
            value: code.0.to_le_bytes(),
        };
        let redirected = self.store_redirects(Some(&slot), &plans)?;
        Ok(StubBypass {
            entering,
            redirected,
        })
    }

    /// Make the direct call that returns to `return_addr` call `to` instead of `from`, if it
    /// is one kiln can change safely (see the module documentation); otherwise say why not.
    pub fn redirect_call(
        &self,
        return_addr: ExecutorAddr,
        from: ExecutorAddr,
        to: ExecutorAddr,
    ) -> Result<CallRedirect> {
        let st = read(&self.state);
        let plan = self.plan_redirect(&st, return_addr.0, from.0, to.0, false);
        self.finish_one(plan)
    }

    /// [`Session::redirect_call`] for a call found before (e.g. by
    /// [`Session::bypass_lazy_stub`]), wherever its unit is now: for a JIT layer retargeting
    /// the calls it redirected when their target is redefined or moves. A site whose unit is
    /// gone, or that no longer calls `from`, is left.
    pub fn redirect_call_site(
        &self,
        site: &CallSite,
        from: ExecutorAddr,
        to: ExecutorAddr,
    ) -> Result<CallRedirect> {
        let st = read(&self.state);
        let field = st
            .units
            .get(&site.unit.0)
            .and_then(|u| u.segments().get(site.segment).copied())
            .filter(|(_, size)| site.offset.checked_add(4).is_some_and(|e| e <= *size))
            .map(|(addr, _)| addr + site.offset);
        let Some(field) = field else {
            return Ok(CallRedirect::Left(CallLeft::NotKilnCode));
        };
        let plan = self.plan_redirect(&st, field + 4, from.0, to.0, false);
        self.finish_one(plan)
    }

    /// Where a link would bind each of `names` if no unit of the session defined it: a
    /// [`Session::define`]d address, the runtime's own symbols, the session's libraries, the
    /// process (if [`Session::set_process_symbols`] allows). For a tool that must know whether
    /// a definition of its own would be shadowed by a library's (definitions on demand are
    /// asked only for names found nowhere).
    pub fn lookup_external(&self, names: &[&str]) -> Result<Vec<Option<ExecutorAddr>>> {
        let config = self.config();
        let runtime = self.executor.runtime_symbols();
        let mut out: Vec<Option<ExecutorAddr>> = names
            .iter()
            .map(|n| {
                config
                    .defines
                    .get(*n)
                    .map(|a| ExecutorAddr(*a))
                    .or_else(|| runtime.iter().find(|(r, _)| r == n).map(|(_, a)| *a))
            })
            .collect();
        let ask: Vec<usize> = (0..names.len()).filter(|i| out[*i].is_none()).collect();
        if !ask.is_empty() {
            let bytes: Vec<&[u8]> = ask.iter().map(|i| names[*i].as_bytes()).collect();
            let found = self
                .executor
                .lookup(&bytes, &config.libraries, config.process_symbols)?;
            for (i, a) in ask.into_iter().zip(found) {
                out[i] = a;
            }
        }
        Ok(out)
    }

    /// `stub` is the start of a lazy stub in a live unit's slab memory: its unit and slab.
    fn check_stub(&self, st: &State, stub: ExecutorAddr) -> Result<(u64, SlabId)> {
        let not_a_stub =
            |why: &str| Error::Usage(format!("{stub} is not a lazy stub of this session ({why})"));
        let size = LAZY_STUB.size() as u64;
        let (unit, seg, off) = st
            .unit_at(stub.0)
            .ok_or_else(|| not_a_stub("no live unit holds it"))?;
        let u = st.unit(UnitId(unit))?;
        let (_, seg_size) = u.segments()[usize::from(seg)];
        if !stub.0.is_multiple_of(LAZY_STUB.align) || off + size > seg_size {
            return Err(not_a_stub("misaligned, or not whole in one segment"));
        }
        let slab = u
            .memory(&self.memory)
            .and_then(|m| m.slab_of(stub))
            .ok_or_else(|| not_a_stub("not in slab memory"))?;
        let bytes = self.executor.read_memory(stub, size)?;
        let template = LAZY_STUB.bytes;
        let same = |r: std::ops::Range<usize>| bytes.get(r.clone()) == template.get(r);
        if !same(0..LAZY_STUB.key_offset)
            || !same(LAZY_STUB.key_offset + 8..LAZY_STUB.target_offset)
        {
            return Err(not_a_stub("its bytes are not a stub's"));
        }
        Ok((unit, slab))
    }

    /// Whether the call returning to `return_addr` is a direct call of `from` that one atomic
    /// store can make call `to`; the plan, or why not. `from_record`: the caller found the
    /// field among its unit's relink edges already (no need to look again).
    fn plan_redirect(
        &self,
        st: &State,
        return_addr: u64,
        from: u64,
        to: u64,
        from_record: bool,
    ) -> std::result::Result<Planned, CallLeft> {
        let Some(call) = return_addr.checked_sub(5) else {
            return Err(CallLeft::NotKilnCode);
        };
        let field = call + 1;
        let Some((unit, seg, off)) = st.unit_at(call) else {
            return Err(CallLeft::NotKilnCode);
        };
        // The whole instruction lies in that one segment.
        if st.unit_at(return_addr - 1) != Some((unit, seg, off + 4)) {
            return Err(CallLeft::NotKilnCode);
        }
        let u = st.unit(UnitId(unit)).map_err(|_| CallLeft::NotKilnCode)?;
        let Some(slab) = u
            .memory(&self.memory)
            .and_then(|m| m.slab_of(ExecutorAddr(field)))
        else {
            return Err(CallLeft::NotKilnCode);
        };
        if let Some(rec) = u.relink().filter(|_| !from_record) {
            let relocated_call = rec.edges.iter().any(|e| {
                usize::from(e.segment) == usize::from(seg)
                    && u64::from(e.offset) == off + 1
                    && is_call_relocation(e.kind)
            });
            if !relocated_call {
                return Err(CallLeft::NotADirectCall);
            }
        }
        let bytes = self
            .executor
            .read_memory(ExecutorAddr(call), 5)
            .map_err(|_| CallLeft::Unreadable)?;
        let Some(&[opcode, r0, r1, r2, r3]) = bytes.get(..5) else {
            return Err(CallLeft::Unreadable);
        };
        let rel = i32::from_le_bytes([r0, r1, r2, r3]);
        if opcode != 0xe8 || return_addr.wrapping_add_signed(i64::from(rel)) != from {
            return Err(CallLeft::NotADirectCall);
        }
        if !field.is_multiple_of(4) {
            return Err(CallLeft::Unaligned);
        }
        let Ok(rel) = i32::try_from(i128::from(to) - i128::from(return_addr)) else {
            return Err(CallLeft::OutOfReach);
        };
        Ok(Planned {
            slab,
            field,
            rel,
            site: CallSite {
                unit: UnitId(unit),
                segment: usize::from(seg),
                offset: off + 1,
            },
        })
    }

    fn finish_one(&self, plan: std::result::Result<Planned, CallLeft>) -> Result<CallRedirect> {
        match plan {
            Ok(p) => {
                let site = self.store_redirects(None, &[p])?;
                Ok(CallRedirect::Redirected(site[0]))
            }
            Err(left) => Ok(CallRedirect::Left(left)),
        }
    }

    /// Store a stub's jump slot (first: a thread still entering the stub goes straight to the
    /// function), then the planned `rel32`s: one `write_live` per slab, which serializes every
    /// thread once for all of its calls. A slot in a slab without calls to change is patched
    /// alone (it is data an indirect jump reads: no serialization needed).
    fn store_redirects(&self, slot: Option<&Slot>, plans: &[Planned]) -> Result<Vec<CallSite>> {
        let mut slabs: Vec<SlabId> = plans.iter().map(|p| p.slab).collect();
        slabs.sort_unstable_by_key(|s| s.0);
        slabs.dedup();
        if let Some(slot) = slot.filter(|s| !slabs.contains(&s.slab)) {
            self.executor
                .patch(slot.slab, ExecutorAddr(slot.addr), &slot.value)?;
        }
        let rels: Vec<[u8; 4]> = plans.iter().map(|p| p.rel.to_le_bytes()).collect();
        for slab in slabs {
            let slot_write = slot
                .filter(|s| s.slab == slab)
                .map(|s| SlabWrite::Bytes(ExecutorAddr(s.addr), &s.value));
            let writes: Vec<SlabWrite<'_>> = slot_write
                .into_iter()
                .chain(
                    plans
                        .iter()
                        .zip(&rels)
                        .filter(|(p, _)| p.slab == slab)
                        .map(|(p, rel)| SlabWrite::Bytes(ExecutorAddr(p.field), rel)),
                )
                .collect();
            self.executor.write_live(slab, &writes)?;
        }
        Ok(plans.iter().map(|p| p.site).collect())
    }
}

/// A lazy stub's jump slot and the address to store there.
struct Slot {
    slab: SlabId,
    addr: u64,
    value: [u8; 8],
}

/// The address of the field of edge `edge` of unit `caller`, if it is a call relocation.
fn recorded_call_field(st: &State, caller: u64, edge: u32) -> Option<u64> {
    let u = st.units.get(&caller)?;
    let e = u.relink()?.edges.get(edge as usize)?;
    if !is_call_relocation(e.kind) {
        return None;
    }
    let (addr, _) = *u.segments().get(usize::from(e.segment))?;
    Some(addr + u64::from(e.offset))
}
