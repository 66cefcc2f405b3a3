//! What a finalize request may ask for, checked before anything is touched: its segments'
//! arithmetic and layout, and that every action names memory of the unit being finalized.
//! Ownership of the memory itself (which reservation or slab) is the table's job
//! ([`crate::table`]); this module needs nothing but the request.

use crate::executor::{Action, ActionPair, FinalizeRequest, SlabSegment};
use crate::{Error, ExecutorAddr, MemProt, Result};
use smallvec::SmallVec;

/// A unit's planned segments: inline up to one per slab region (code, read-only data,
/// writable data), so that planning a typical unit allocates nothing.
pub(crate) type PlannedSegments = SmallVec<[PlannedSegment; 3]>;

/// One non-empty segment of the request.
#[derive(Copy, Clone, Debug)]
pub(crate) struct PlannedSegment {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// `end` rounded up to the page for a segment of its own reservation (its pages get the
    /// segment's protection); `end` in a slab.
    pub(crate) mapped_end: u64,
    pub(crate) prot: MemProt,
}

/// A checked finalize request: where its segments lie, and what the runtime will read from
/// them while the unit lives.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Sorted by start, pairwise disjoint (by pages outside slabs).
    pub(crate) segments: PlannedSegments,
    /// `.eh_frame` sections to register: (address, size).
    pub(crate) eh_frames: Vec<(u64, u64)>,
    /// Ranges the runtime itself reads while the unit lives (registered unwind info, TLS
    /// images): `patch` must not change them under it. Pairwise disjoint.
    pub(crate) registered: Vec<(u64, u64)>,
    /// Static TLS blocks the unit's TLS registration uses: (offset, block size).
    pub(crate) static_tls: Vec<(i64, u64)>,
}

fn wraps(addr: u64, size: u64) -> Error {
    Error::RangeWraps {
        addr: ExecutorAddr(addr),
        size,
    }
}

/// `[addr, addr + size)` as (start, end), refused if it wraps.
pub(crate) fn range(addr: u64, size: u64) -> Result<(u64, u64)> {
    Ok((
        addr,
        addr.checked_add(size).ok_or_else(|| wraps(addr, size))?,
    ))
}

/// Sort segments by start; refused if two overlap (up to their `mapped_end`).
fn sort_disjoint(segs: &mut [PlannedSegment], how: &str) -> Result<()> {
    segs.sort_unstable_by_key(|s| s.start);
    match segs.windows(2).find(|w| w[0].mapped_end > w[1].start) {
        Some(w) => Err(Error::InvalidRequest(format!(
            "segments at {:#x} and {:#x} overlap{how}",
            w[0].start, w[1].start
        ))),
        None => Ok(()),
    }
}

fn bad(a: &Action, why: impl Into<String>) -> Error {
    let mut action = format!("{a:?}");
    if action.len() > 200 {
        let mut cut = 200;
        while !action.is_char_boundary(cut) {
            cut -= 1;
        }
        action.truncate(cut);
        action.push('…');
    }
    Error::BadAction {
        action: action.into(),
        why: why.into().into(),
    }
}

impl Plan {
    pub(crate) fn of(req: &FinalizeRequest, page: u64) -> Result<Plan> {
        let mut plan = Plan {
            segments: Self::segments(req, page)?,
            ..Plan::default()
        };
        plan.check_unit(&req.actions, &req.initializers, &req.deinitializers)?;
        Ok(plan)
    }

    /// A new unit's segments in a slab ([`crate::Executor::finalize_slab_unit`]), planned as
    /// those of an `in_slab` request; its actions, if any, come later in a plan of these
    /// segments ([`Plan::check_unit`]).
    pub(crate) fn slab_segments(segments: &[SlabSegment]) -> Result<PlannedSegments> {
        // A JIT's typical unit (one function: one segment) has nothing to sort or compare.
        if let [s] = segments {
            let (start, end) = range(s.addr.0, s.size)?;
            let one = PlannedSegment {
                start,
                end,
                mapped_end: end,
                prot: s.prot,
            };
            let n = usize::from(start < end);
            return Ok(PlannedSegments::from_buf_and_len([one; 3], n));
        }
        let mut segs = PlannedSegments::with_capacity(segments.len());
        for s in segments {
            let (start, end) = range(s.addr.0, s.size)?;
            if start < end {
                segs.push(PlannedSegment {
                    start,
                    end,
                    mapped_end: end,
                    prot: s.prot,
                });
            }
        }
        sort_disjoint(&mut segs, "")?;
        Ok(segs)
    }

    /// Check what a unit with these (planned) segments asks the executor to run: every address
    /// inside its own segments, registrations undone by their deregistrations, initializers in
    /// its code.
    pub(crate) fn check_unit(
        &mut self,
        actions: &[ActionPair],
        initializers: &[ExecutorAddr],
        deinitializers: &[Action],
    ) -> Result<()> {
        // A JIT's typical unit asks for nothing: nothing to check, nothing registered.
        if actions.is_empty() && initializers.is_empty() && deinitializers.is_empty() {
            return Ok(());
        }
        self.check_actions(actions)?;
        for &f in initializers {
            let a = Action::CallVoid(f);
            self.code(f.0).map_err(|why| bad(&a, why))?;
        }
        for a in deinitializers {
            self.check_undo(a)?;
        }
        Ok(())
    }

    /// New actions for an allocation whose segments are placed already (sorted by start,
    /// pairwise disjoint): what [`crate::Executor::move_allocation`] registers at the new
    /// addresses, checked exactly as a new unit's actions are.
    pub(crate) fn for_placed(segments: PlannedSegments, actions: &[ActionPair]) -> Result<Plan> {
        let mut plan = Plan {
            segments,
            ..Plan::default()
        };
        plan.check_actions(actions)?;
        Ok(plan)
    }

    fn check_actions(&mut self, actions: &[ActionPair]) -> Result<()> {
        for pair in actions {
            self.check_pair(pair)?;
        }
        self.registered.sort_unstable();
        if self.registered.windows(2).any(|w| w[0].1 > w[1].0) {
            return Err(Error::InvalidRequest(
                "two registrations (unwind info, TLS images) of the request overlap".into(),
            ));
        }
        Ok(())
    }

    fn segments(req: &FinalizeRequest, page: u64) -> Result<PlannedSegments> {
        let mut segs = PlannedSegments::with_capacity(req.segments.len());
        for s in &req.segments {
            let size = (s.content.len() as u64)
                .checked_add(s.zero_fill)
                .ok_or_else(|| wraps(s.addr.0, s.zero_fill))?;
            let (start, end) = range(s.addr.0, size)?;
            let mapped_end = if req.in_slab {
                if !s.content.is_empty() {
                    return Err(Error::InvalidRequest(format!(
                        "segment at {} is in a slab: its content is written with write_slab \
                         before finalize, not carried by the request",
                        s.addr
                    )));
                }
                end
            } else {
                if !start.is_multiple_of(page) {
                    return Err(Error::InvalidRequest(format!(
                        "segment at {} is not page aligned",
                        s.addr
                    )));
                }
                end.checked_next_multiple_of(page)
                    .ok_or_else(|| wraps(start, size))?
            };
            if size > 0 {
                segs.push(PlannedSegment {
                    start,
                    end,
                    mapped_end,
                    prot: s.prot,
                });
            }
        }
        sort_disjoint(&mut segs, if req.in_slab { "" } else { " (by pages)" })?;
        Ok(segs)
    }

    /// The segment holding all of `[addr, addr + len)` (`len > 0`).
    fn segment(&self, addr: u64, len: u64) -> Option<&PlannedSegment> {
        let end = addr.checked_add(len)?;
        let i = self.segments.partition_point(|s| s.start <= addr);
        let s = self.segments.get(i.checked_sub(1)?)?;
        (end <= s.end).then_some(s)
    }

    fn inside(&self, addr: u64, len: u64) -> Result<&PlannedSegment, String> {
        self.segment(addr, len.max(1)).ok_or_else(|| {
            format!("{addr:#x}..+{len:#x} is not inside one segment of the unit being finalized")
        })
    }

    fn code(&self, addr: u64) -> Result<(), String> {
        match self.inside(addr, 1)?.prot {
            MemProt::ReadExec => Ok(()),
            p => Err(format!(
                "{addr:#x} lies in a {} segment, not in the unit's code",
                p.as_str()
            )),
        }
    }

    fn check_pair(&mut self, pair: &ActionPair) -> Result<()> {
        let Some(f) = &pair.finalize else {
            return match &pair.dealloc {
                Some(d) => self.check_undo(d),
                None => Ok(()),
            };
        };
        self.check_finalize(f)?;
        // A registration must be undone by exactly its deregistration: the runtime would
        // otherwise keep pointing into memory that deallocation unmaps (or undo someone else's).
        let undo = match *f {
            Action::RegisterEhFrame { addr, size } => {
                Some(Action::DeregisterEhFrame { addr, size })
            }
            Action::RegisterTls { module, .. } => Some(Action::DeregisterTls { module }),
            Action::RegisterGdbObjects { key, .. } => Some(Action::DeregisterGdbObjects { key }),
            _ => None,
        };
        match (undo, &pair.dealloc) {
            (Some(u), Some(d)) if *d == u => Ok(()),
            (Some(u), _) => Err(bad(
                f,
                format!("its dealloc half must be {u:?}, which undoes it"),
            )),
            (None, Some(d)) => self.check_undo(d),
            (None, None) => Ok(()),
        }
    }

    fn check_finalize(&mut self, a: &Action) -> Result<()> {
        match *a {
            Action::RegisterEhFrame { addr, size } => {
                if size < 4 {
                    return Err(bad(a, "an .eh_frame holds at least its zero terminator"));
                }
                self.inside(addr.0, size).map_err(|w| bad(a, w))?;
                self.eh_frames.push((addr.0, size));
                self.registered.push((addr.0, addr.0 + size));
            }
            Action::RegisterTls {
                module,
                image,
                image_size,
                block_size,
                static_offset,
                ..
            } => {
                if !crate::sys::tls::is_kiln_module(module) {
                    return Err(bad(a, "the module value is not a kiln TLS module"));
                }
                if image_size > block_size {
                    return Err(bad(a, "the image is larger than the block"));
                }
                // An empty image is never read: no address to check.
                if image_size > 0 {
                    self.inside(image.0, image_size).map_err(|w| bad(a, w))?;
                    self.registered.push((image.0, image.0 + image_size));
                }
                if let Some(off) = static_offset {
                    self.static_tls.push((off, block_size));
                }
            }
            Action::ResolveIfunc { resolver, slot } => {
                self.code(resolver.0).map_err(|w| bad(a, w))?;
                match self.inside(slot.0, 8).map_err(|w| bad(a, w))?.prot {
                    MemProt::ReadWrite => {}
                    _ => return Err(bad(a, "the slot is not in a writable segment of the unit")),
                }
            }
            Action::RegisterGdbObjects { .. } => {}
            Action::DeregisterEhFrame { .. }
            | Action::DeregisterTls { .. }
            | Action::DeregisterGdbObjects { .. } => {
                return Err(bad(a, "a finalize action registers; it cannot deregister"))
            }
            _ => self.check_undo(a)?,
        }
        Ok(())
    }

    /// An action that runs when the unit goes (a dealloc half without a registration to undo,
    /// or a deinitializer), or one of the same kinds at finalize.
    fn check_undo(&self, a: &Action) -> Result<()> {
        let r = match *a {
            Action::CallVoid(f) => self.code(f.0),
            Action::CxaFinalize { dso } => self.inside(dso.0, 1).map(drop),
            Action::DiscardTranslations { addr, size } => self.inside(addr.0, size).map(drop),
            // Files and copies: they name no memory the runtime touches.
            Action::WritePerfMap { .. } | Action::WriteJitdump { .. } => Ok(()),
            Action::RegisterEhFrame { .. }
            | Action::RegisterTls { .. }
            | Action::RegisterGdbObjects { .. } => {
                Err("a registration when the unit goes would outlive it".into())
            }
            Action::DeregisterEhFrame { .. }
            | Action::DeregisterTls { .. }
            | Action::DeregisterGdbObjects { .. } => {
                Err("a deregistration is only the dealloc half of its registration".into())
            }
            Action::ResolveIfunc { .. } => Err("IFUNC slots are filled at finalize only".into()),
        };
        r.map_err(|why| bad(a, why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Segment;

    fn seg(addr: u64, prot: MemProt, size: u64) -> Segment {
        Segment {
            addr: ExecutorAddr(addr),
            prot,
            content: Vec::new(),
            zero_fill: size,
        }
    }

    fn req(actions: Vec<ActionPair>) -> FinalizeRequest {
        FinalizeRequest {
            reservation: (ExecutorAddr(0x10000), 0x3000),
            segments: vec![
                seg(0x10000, MemProt::ReadExec, 0x100),
                seg(0x11000, MemProt::Read, 0x100),
                seg(0x12000, MemProt::ReadWrite, 0x100),
            ],
            actions,
            ..Default::default()
        }
    }

    fn pair(f: Action, d: Option<Action>) -> ActionPair {
        ActionPair {
            finalize: Some(f),
            dealloc: d,
        }
    }

    #[test]
    fn actions_must_stay_inside_their_unit() {
        let ok = |a| Plan::of(&req(vec![a]), 0x1000).is_ok();
        let call = |x| pair(Action::CallVoid(ExecutorAddr(x)), None);
        assert!(ok(call(0x10010)));
        assert!(!ok(call(0x11010)), "read-only data is not code");
        assert!(!ok(call(0x10100)), "past the end of the code");
        assert!(!ok(call(0)));
        let ifunc = |slot| {
            pair(
                Action::ResolveIfunc {
                    resolver: ExecutorAddr(0x10000),
                    slot: ExecutorAddr(slot),
                },
                None,
            )
        };
        assert!(ok(ifunc(0x120f8)));
        assert!(!ok(ifunc(0x120f9)), "slot straddles the segment's end");
        assert!(!ok(ifunc(0x11000)), "slot not writable");
        assert!(!ok(ifunc(u64::MAX - 3)), "slot wraps");
        let eh = |addr, size, undo: Option<Action>| {
            pair(
                Action::RegisterEhFrame {
                    addr: ExecutorAddr(addr),
                    size,
                },
                undo,
            )
        };
        let de = |addr, size| {
            Some(Action::DeregisterEhFrame {
                addr: ExecutorAddr(addr),
                size,
            })
        };
        assert!(ok(eh(0x11000, 0x40, de(0x11000, 0x40))));
        assert!(!ok(eh(0x11000, 0x40, None)), "never deregistered");
        assert!(
            !ok(eh(0x11000, 0x40, de(0x11000, 0x20))),
            "undoes another range"
        );
        assert!(!ok(eh(0x11000, u64::MAX, de(0x11000, u64::MAX))), "wraps");
        assert!(!ok(ActionPair {
            finalize: None,
            dealloc: de(0x11000, 0x40),
        }));
        assert!(!ok(pair(
            Action::CxaFinalize {
                dso: ExecutorAddr(0)
            },
            None
        )));
    }

    #[test]
    fn segments_are_checked() {
        let mut r = req(Vec::new());
        r.segments[2].zero_fill = u64::MAX;
        assert!(matches!(
            Plan::of(&r, 0x1000),
            Err(Error::RangeWraps { .. })
        ));
        let mut r = req(Vec::new());
        r.segments[1].addr = ExecutorAddr(0x10800);
        assert!(Plan::of(&r, 0x1000).is_err(), "not page aligned");
        let mut r = req(Vec::new());
        r.segments[1].zero_fill = 0x1001;
        assert!(
            Plan::of(&r, 0x1000).is_err(),
            "runs into the next segment's page"
        );
        let mut r = req(Vec::new());
        r.in_slab = true;
        r.segments[0].content = vec![1];
        assert!(Plan::of(&r, 0x1000).is_err(), "content in a slab request");
    }

    /// A one-segment slab unit is planned on a path of its own: as the general one plans it
    /// (an empty segment dropped, a wrapping range refused).
    #[test]
    fn one_slab_segment_is_planned_as_several_are() {
        let slab_seg = |addr, size| SlabSegment {
            addr: ExecutorAddr(addr),
            size,
            prot: MemProt::ReadExec,
        };
        let empty = slab_seg(0x20000, 0);
        for one in [slab_seg(0x10040, 0x30), empty, slab_seg(u64::MAX - 4, 8)] {
            let alone = Plan::slab_segments(&[one]);
            // With an empty segment: the general path, the same non-empty segments.
            let general = Plan::slab_segments(&[one, empty]);
            match (alone, general) {
                (Ok(a), Ok(g)) => {
                    let key = |p: &PlannedSegment| (p.start, p.end, p.mapped_end, p.prot);
                    assert_eq!(
                        a.iter().map(key).collect::<Vec<_>>(),
                        g.iter().map(key).collect::<Vec<_>>()
                    );
                    assert_eq!(a.len(), usize::from(one.size > 0));
                }
                (Err(Error::RangeWraps { .. }), Err(Error::RangeWraps { .. })) => {
                    assert!(one.addr.0.checked_add(one.size).is_none());
                }
                (a, g) => panic!("{one:?}: {a:?} against {g:?}"),
            }
        }
    }
}
