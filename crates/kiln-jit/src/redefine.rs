//! Redefinition, and the one mechanism that frees code threads may still be running: epochs.
//!
//! **Redefinition** ([`Jit::redefine`]) links a new graph in place of a zone unit with
//! [`kiln::Session::redefine`]: the new unit takes over the old one's names, and every edge of a
//! unit that keeps a relink record (method units, PICs) and targets one of those definitions —
//! direct calls, GOT entries, stubs, PIC cases — is applied again to reach the new one (kiln
//! core). What kiln core cannot know is what kiln-jit patched outside the link: each site keeps
//! the target it was last given ([`Jit::retarget`], inline caches, PICs), and every site last
//! given a definition of the old unit is retargeted to its new address (read first: a site whose
//! relink edge kiln core already re-applied is left alone). Inline caches and PICs remember
//! their targets the same way. The old unit is then *retired*: its names are gone, its sites
//! refused, its code still there for the frames that run it.
//!
//! **Retiring and reclaiming** (old definitions, replaced PICs, inline-cache transitions): a
//! retired thing carries the epoch it was retired in. The VM frees what no thread can still be
//! in with the protocol of epoch-based reclamation:
//!
//! ```text
//! let e = jit.grace_start();   // a new epoch begins; what was retired before is older than e
//! // ... the VM makes sure that every thread has since been at a point where it runs and
//! // holds nothing retired: a safepoint, a return to the interpreter, a stack scan that
//! // finds no return address in `jit.retired()` ranges ...
//! let r = jit.reclaim(e)?;     // frees what was retired before e; completes pending ICs
//! ```
//!
//! [`Jit::reclaim_retired`] is `reclaim(grace_start())`, for a VM that knows *now* that nothing
//! runs retired code (its threads are stopped outside it). Nothing is freed before the VM says
//! so; a unit that others still bind to is kept and reported.

use crate::error::{Error, Result};
use crate::graph::{JitGraph, SiteKind};
use crate::ic::IcRecord;
use crate::jit::{check_annotations, Jit, Linked, RegionKind, Site, WrittenValue, ZoneUnit};
use crate::pic::PicRecord;
use kiln::arch::x86_64::EdgeKind as X86;
use kiln::arch::EdgeKind;
use kiln::{RelinkEdge, UnitId, UnitOptions};
use kiln_target::ExecutorAddr;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

/// An address kept so that it survives code moving: inside a unit (which segment, how far in),
/// or outside every unit. Ordered by unit first, so that a unit's places are one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Place {
    In {
        unit: UnitId,
        segment: usize,
        offset: u64,
    },
    Absolute(u64),
}

/// A point in the JIT's history: things retired during an epoch are freed by a
/// [`Jit::reclaim`] given a later one. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

/// Why a unit was retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetiredKind {
    /// A PIC replaced by a bigger one or by the megamorphic handler.
    Pic,
    /// A unit replaced by [`Jit::redefine`].
    Redefined,
}

/// A unit retired and not yet freed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retired {
    pub unit: UnitId,
    pub kind: RetiredKind,
    /// The epoch it was retired in: a `reclaim(e)` with `e > since` frees it.
    pub since: Epoch,
    /// Its segments (address, size) now: where no frame, return address or saved pc may point
    /// when the VM reclaims it.
    pub segments: Vec<(ExecutorAddr, u64)>,
}

/// What a [`Jit::reclaim`] did.
#[derive(Clone, Debug, Default)]
pub struct Reclaimed {
    /// Retired units freed (their code poisoned with `int3`, their memory reusable).
    pub freed: Vec<UnitId>,
    /// Inline caches whose pending `set` was completed.
    pub ics_completed: usize,
    /// Retired units that could not be freed, with why (e.g. units without relink records
    /// still bind to them): still retired, tried again by the next reclaim.
    pub kept: Vec<(UnitId, String)>,
    /// Inline caches whose pending `set` failed (they stay empty: calls take the miss path).
    pub ic_errors: Vec<(Site, String)>,
}

/// What a site was last given by kiln-jit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SiteTarget {
    pub kind: SiteKind,
    pub target: Place,
}

/// What kiln-jit's patches leave behind, under one lock (the `Jit`'s `book`).
#[derive(Debug, Default)]
pub(crate) struct Book {
    /// By the site's place: the target kiln-jit last gave it.
    pub targets: BTreeMap<Place, SiteTarget>,
    /// By the place of the guard's key site.
    pub ics: BTreeMap<Place, IcRecord>,
    /// By the place of the site the PIC serves.
    pub pics: BTreeMap<Place, PicRecord>,
    pub retired: Vec<Retired>,
    /// The current epoch.
    pub epoch: u64,
    /// The latest epoch a reclaim was given: whatever happened before it, no thread is still in.
    pub last_safe: u64,
    /// PIC stubs made so far (their symbols are numbered).
    pub pics_made: u64,
    /// Whether the generator of absolute-address names (PIC targets outside any unit) is in.
    pub abs_generator: bool,
}

impl Book {
    /// Forget what was kept for a unit's sites (it was retired or removed).
    pub fn forget_sites(&mut self, unit: UnitId) {
        fn drop_unit<T>(map: &mut BTreeMap<Place, T>, unit: UnitId) {
            let (first, last) = (
                Place::In {
                    unit,
                    segment: 0,
                    offset: 0,
                },
                Place::In {
                    unit,
                    segment: usize::MAX,
                    offset: u64::MAX,
                },
            );
            let keys: Vec<Place> = map.range(first..=last).map(|(k, _)| *k).collect();
            for k in keys {
                map.remove(&k);
            }
        }
        drop_unit(&mut self.targets, unit);
        drop_unit(&mut self.ics, unit);
        drop_unit(&mut self.pics, unit);
    }

    /// The live PIC stubs that `unit`'s sites reach.
    pub fn pic_stubs_of(&self, unit: UnitId) -> Vec<UnitId> {
        self.pics
            .iter()
            .filter(|(p, _)| matches!(p, Place::In { unit: u, .. } if *u == unit))
            .filter_map(|(_, r)| r.stub_unit())
            .collect()
    }

    /// Forget a removed unit: its sites, and its retirement.
    pub fn forget(&mut self, unit: UnitId) {
        self.forget_sites(unit);
        self.retired.retain(|r| r.unit != unit);
    }
}

/// Which unit [`Jit::redefine`] replaces: by id, or by a name it defines.
#[derive(Clone, Copy, Debug)]
pub enum Redefine<'a> {
    Unit(UnitId),
    Name(&'a str),
}

impl From<UnitId> for Redefine<'_> {
    fn from(u: UnitId) -> Self {
        Redefine::Unit(u)
    }
}

impl<'a> From<&'a str> for Redefine<'a> {
    fn from(n: &'a str) -> Self {
        Redefine::Name(n)
    }
}

/// What [`Jit::redefine`] did.
#[derive(Clone, Debug)]
pub struct Redefined {
    /// The new unit, its sites and heap references.
    pub new: Linked,
    /// The old unit, now retired (freed by a later [`Jit::reclaim`]).
    pub old: UnitId,
    /// Sites kiln-jit had pointed at the old definitions, now at the new ones.
    pub retargeted: Vec<Site>,
    /// Sites pointed at an address of the old unit that no definition of the new unit takes
    /// over (not a symbol, or a name the new graph does not define): they still reach the old
    /// code. Retarget them before reclaiming it.
    pub unmapped: Vec<Site>,
    /// Units that still bind to the old unit: kiln keeps no relink record for them (fixed-region
    /// units), or they use a name the new graph does not define. Their references reach the old
    /// code, and the old unit cannot be freed while they live.
    pub unreached: Vec<UnitId>,
    /// The epoch the old unit was retired in.
    pub since: Epoch,
}

impl Jit {
    /// Where `addr` is, in terms that survive code moving.
    pub(crate) fn place(&self, addr: ExecutorAddr) -> Place {
        match self.session().unit_at(addr) {
            Some((unit, segment, offset)) => Place::In {
                unit,
                segment,
                offset,
            },
            None => Place::Absolute(addr.0),
        }
    }

    /// Where a place is now (`None`: its unit is gone).
    pub(crate) fn address(&self, p: Place) -> Option<ExecutorAddr> {
        match p {
            Place::In {
                unit,
                segment,
                offset,
            } => {
                let segments = self.session().unit_segments(unit).ok()?;
                Some(ExecutorAddr(segments.get(segment)?.0 .0 + offset))
            }
            Place::Absolute(a) => Some(ExecutorAddr(a)),
        }
    }

    /// The site (of a live zone unit) at a place, with its kind.
    pub(crate) fn site_at(&self, p: Place, kind: SiteKind) -> Option<Site> {
        let Place::In { unit, .. } = p else {
            return None;
        };
        let site = Site {
            unit,
            addr: self.address(p)?,
            kind,
        };
        self.check_site(&site).ok()?;
        Some(site)
    }

    /// What `site` reaches now (a `Rel32`'s destination, an `Abs64`'s value).
    pub(crate) fn read_target(&self, site: &Site) -> Result<ExecutorAddr> {
        let ex = self.session().executor();
        let b = ex.read_memory(site.addr, site.kind.width())?;
        Ok(match site.kind {
            SiteKind::Rel32 => {
                let rel = i32::from_le_bytes(b[..4].try_into().unwrap_or_default());
                ExecutorAddr((site.addr.0 + 4).wrapping_add_signed(i64::from(rel)))
            }
            _ => ExecutorAddr(u64::from_le_bytes(b[..8].try_into().unwrap_or_default())),
        })
    }

    /// [`Jit::retarget`] with the book held: the relink edge at the site first (so that a move
    /// from now on applies the new target), then the store, then the book.
    pub(crate) fn retarget_in(
        &self,
        book: &mut Book,
        site: &Site,
        target: ExecutorAddr,
    ) -> Result<()> {
        let bytes = Jit::target_bytes(site, target)?;
        self.check_site(site)?;
        let previous = self.read_target(site)?;
        let follows = self.follow_edge(site, target)?;
        let kept = (!follows).then_some(WrittenValue::Target(target.0));
        if let Err(e) = self.store(site, &bytes, kept) {
            let _ = self.follow_edge(site, previous);
            return Err(e);
        }
        book.targets.insert(
            self.place(site.addr),
            SiteTarget {
                kind: site.kind,
                target: self.place(target),
            },
        );
        Ok(())
    }

    /// [`Jit::set_value`] with the book held: the site no longer follows a target.
    pub(crate) fn set_value_in(&self, book: &mut Book, site: &Site, bytes: &[u8]) -> Result<()> {
        self.check_site(site)?;
        let value = match *bytes {
            [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
            _ => u64::from_le_bytes(bytes.try_into().unwrap_or_default()),
        };
        let follows =
            site.kind == SiteKind::Abs64 && self.follow_edge(site, ExecutorAddr(value))?;
        self.store(
            site,
            bytes,
            (!follows).then_some(WrittenValue::Value(value)),
        )?;
        book.targets.remove(&self.place(site.addr));
        Ok(())
    }

    /// Make the relink edge at `site` (if its unit keeps one there) target what reaches
    /// `target`. Whether there was one that now follows.
    fn follow_edge(&self, site: &Site, target: ExecutorAddr) -> Result<bool> {
        Ok(self
            .session()
            .set_edge_target(site.addr, |e| edge_symbol(site.kind, e, target))?
            .is_some())
    }

    /// Begin a new epoch and return it: everything retired so far is older. See the module
    /// docs.
    pub fn grace_start(&self) -> Epoch {
        let mut book = self.book();
        book.epoch += 1;
        Epoch(book.epoch)
    }

    /// The current epoch (what is retired now carries it).
    pub fn epoch(&self) -> Epoch {
        Epoch(self.book().epoch)
    }

    /// Retired units not yet freed, with where they are now.
    pub fn retired(&self) -> Vec<Retired> {
        let mut retired = self.book().retired.clone();
        for r in &mut retired {
            r.segments = self.session().unit_segments(r.unit).unwrap_or_default();
        }
        retired
    }

    /// The VM declares that since `safe` began (it came from [`Jit::grace_start`]) every thread
    /// has been at a point where it runs nothing retired before `safe` and is between no inline
    /// cache's guard and call: what was retired before `safe` is freed, and inline caches whose
    /// `set` waited for that complete. See the module docs.
    pub fn reclaim(&self, safe: Epoch) -> Result<Reclaimed> {
        let mut report = Reclaimed::default();
        let mut due = {
            let mut book = self.book();
            if safe.0 > book.epoch {
                return Err(Error::Stale(format!(
                    "epoch {} has not begun (the current one is {}): reclaim takes what \
                     grace_start returned",
                    safe.0, book.epoch
                )));
            }
            book.last_safe = book.last_safe.max(safe.0);
            self.complete_ics(&mut book, safe, &mut report);
            let (due, keep): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut book.retired)
                .into_iter()
                .partition(|r| r.since < safe);
            book.retired = keep;
            due
        };
        // Newest first: a retired unit that binds to an older one goes before it.
        due.sort_unstable_by_key(|r| std::cmp::Reverse(r.unit));
        for r in due {
            if self.session().unit_segments(r.unit).is_err() {
                continue; // the VM removed it already
            }
            match self.remove(r.unit) {
                Ok(()) => report.freed.push(r.unit),
                Err(e) => {
                    report.kept.push((r.unit, e.to_string()));
                    self.book().retired.push(r);
                }
            }
        }
        Ok(report)
    }

    /// Free everything retired so far: the VM declares that no thread runs any of it now
    /// (`reclaim(grace_start())`).
    pub fn reclaim_retired(&self) -> Result<Reclaimed> {
        let e = self.grace_start();
        self.reclaim(e)
    }

    /// Retire `unit`: its sites are refused from now on, what was kept for them forgotten; it
    /// stays in memory until a reclaim covers the current epoch. The PIC stubs its sites reach
    /// are retired with it (only its old code still calls them).
    pub(crate) fn retire(&self, book: &mut Book, unit: UnitId, kind: RetiredKind) {
        if let Some(u) = self.units().get_mut(&unit) {
            u.sites.clear();
        }
        let stubs = book.pic_stubs_of(unit);
        book.forget_sites(unit);
        for stub in stubs {
            self.retire(book, stub, RetiredKind::Pic);
        }
        let segments = self.session().unit_segments(unit).unwrap_or_default();
        book.retired.push(Retired {
            unit,
            kind,
            since: Epoch(book.epoch),
            segments,
        });
    }

    /// Replace a zone unit's definitions by those of `graph`, linked into the same region (see
    /// the module docs): every edge of relink units, and every site, inline cache and PIC
    /// kiln-jit patched, that reached an old definition reaches the new one when this returns.
    /// The old unit is retired, not freed: threads may still run it until the VM reclaims it.
    ///
    /// Names the new graph does not define stay with the old unit until it is freed.
    pub fn redefine<'a>(
        &self,
        old: impl Into<Redefine<'a>>,
        graph: &JitGraph,
    ) -> Result<Redefined> {
        check_annotations(graph)?;
        let mut book = self.book();
        let old = self.live_unit(old.into(), &book)?;
        // A lazy function (named by its stub or its code): its code is replaced, and the stub's
        // slot and the calls redirected to the code follow it.
        let lazy = self.lazy_code_unit(old)?;
        let old = lazy.as_ref().map_or(old, |l| l.2);
        if let Some((_, code_name, _)) = &lazy {
            let defines = graph
                .graph
                .sections
                .iter()
                .flat_map(|s| &s.blocks)
                .flat_map(|b| &b.symbols)
                .any(|s| s.name == *code_name);
            if !defines {
                return Err(Error::Graph {
                    graph: graph.graph.name.clone(),
                    what: format!(
                        "it redefines a lazy function, so it must define {code_name} (the code \
                         its stub leads to)"
                    ),
                });
            }
        }
        let session = self.session();
        let region = self
            .units()
            .get(&old)
            .map(|u| u.region)
            .unwrap_or(RegionKind::Method);
        let options = UnitOptions {
            scope: session.unit_scope(old)?,
            memory: Some(self.region(region).code_memory()),
            relink: region == RegionKind::Method,
        };
        let old_segments = session.unit_segments(old)?;
        let old_symbols = session.unit_symbols(old)?;
        let new = session.redefine(old, &graph.graph, &options)?;
        let new_symbols = session.unit_symbols(new)?;
        // Old address → new address, per name both define.
        let redirect: FxHashMap<u64, ExecutorAddr> = old_symbols
            .iter()
            .filter_map(|(n, o)| {
                let (_, s) = new_symbols.iter().find(|(m, _)| m == n)?;
                Some((o.addr.0, s.addr))
            })
            .collect();
        let translate = |p: Place| -> Place {
            let Place::In {
                unit,
                segment,
                offset,
            } = p
            else {
                return p;
            };
            let to = old_segments
                .get(segment)
                .filter(|_| unit == old)
                .and_then(|s| redirect.get(&(s.0 .0 + offset)));
            to.map_or(p, |a| self.place(*a))
        };
        let placed = self.place_annotations(new, graph);
        let (sites, heap_refs) = placed.as_ref().cloned().unwrap_or_default();
        self.units()
            .insert(new, ZoneUnit::new(region, sites.clone(), heap_refs.clone()));
        for ic in book.ics.values_mut() {
            ic.translate(&translate);
        }
        for pic in book.pics.values_mut() {
            pic.translate(&translate);
        }
        let (retargeted, unmapped) = self.follow_redefinition(&mut book, old, &translate)?;
        self.retire(&mut book, old, RetiredKind::Redefined);
        let since = Epoch(book.epoch);
        let lazy_moved = match &lazy {
            Some((key, code_name, _)) => {
                let code = new_symbols.iter().find(|(n, _)| n == code_name);
                match code {
                    Some((_, s)) => self.lazy_code_moved(*key, new, s.addr),
                    None => Err(Error::Stale(format!("{code_name} vanished from {new}"))),
                }
            }
            None => Ok(()),
        };
        drop(book);
        lazy_moved?;
        let unreached = session.dependents(old).unwrap_or_default();
        placed.map_err(|e| {
            Error::Stale(format!(
                "{old} was redefined by {new}, but the new unit's annotations could not be \
                 placed (it has no sites): {e}"
            ))
        })?;
        Ok(Redefined {
            new: Linked {
                unit: new,
                region,
                sites,
                heap_refs,
            },
            old,
            retargeted,
            unmapped,
            unreached,
            since,
        })
    }

    /// The zone unit `which` names, live and not retired.
    fn live_unit(&self, which: Redefine<'_>, book: &Book) -> Result<UnitId> {
        let unit = match which {
            Redefine::Unit(u) => u,
            Redefine::Name(n) => {
                self.session()
                    .lookup_symbol(self.scope(), n)
                    .ok_or_else(|| Error::Stale(format!("{n} is not defined in the zone's scope")))?
                    .unit
            }
        };
        if !self.units().contains_key(&unit) || book.retired.iter().any(|r| r.unit == unit) {
            return Err(Error::Stale(format!(
                "{unit} is not a live unit of this zone (removed, retired, or never linked here)"
            )));
        }
        Ok(unit)
    }

    /// Retarget every site whose remembered target was a definition of `old` to where
    /// `translate` says it went; report those whose target stays in `old`.
    fn follow_redefinition(
        &self,
        book: &mut Book,
        old: UnitId,
        translate: &dyn Fn(Place) -> Place,
    ) -> Result<(Vec<Site>, Vec<Site>)> {
        let (mut retargeted, mut unmapped) = (Vec::new(), Vec::new());
        let in_old = |p: &Place| matches!(p, Place::In { unit, .. } if *unit == old);
        let affected: Vec<(Place, SiteTarget)> = book
            .targets
            .iter()
            .filter(|(site, t)| in_old(&t.target) && !in_old(site))
            .map(|(p, t)| (*p, *t))
            .collect();
        for (place, t) in affected {
            let Some(site) = self.site_at(place, t.kind) else {
                book.targets.remove(&place);
                continue;
            };
            let to = translate(t.target);
            if in_old(&to) {
                unmapped.push(site);
                continue;
            }
            let addr = self.address(to).ok_or_else(|| {
                Error::Stale(format!(
                    "the new definition for the site at {} vanished",
                    site.addr
                ))
            })?;
            if self.read_target(&site)? != addr {
                self.retarget_in(book, &site, addr)?;
            } else {
                book.targets.insert(place, SiteTarget { target: to, ..t });
            }
            retargeted.push(site);
        }
        Ok((retargeted, unmapped))
    }
}

/// The address an edge's symbol must have for the field to reach `target`, if the edge is one a
/// site of `kind` describes: a rel32 branch reaches `S + A + 4`, a 64-bit pointer holds `S + A`.
fn edge_symbol(kind: SiteKind, e: &RelinkEdge, target: ExecutorAddr) -> Option<u64> {
    let a = e.addend as u64;
    match (kind, e.kind) {
        (SiteKind::Rel32, EdgeKind::X86_64(X86::BranchPCRel32 | X86::Delta32)) => {
            Some(target.0.wrapping_sub(a).wrapping_sub(4))
        }
        (SiteKind::Abs64, EdgeKind::X86_64(X86::Pointer64)) => Some(target.0.wrapping_sub(a)),
        _ => None,
    }
}
