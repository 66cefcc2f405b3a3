//! [`Jit`]: a session's code zone and what kiln-jit knows of the units in it.

use crate::error::{Error, Result};
use crate::graph::{JitGraph, SiteKind};
use crate::redefine::Book;
use crate::zone::{Region, Zone, ZoneConfig};
use kiln::{Inputs, ScopeId, Session, UnitId, UnitOptions};
use kiln_target::ExecutorAddr;
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

/// Which region of the zone a unit goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// Never moved, never freed by compaction: trampolines, bridges, runtime routines, stubs.
    Fixed,
    /// Compiled methods: compacted when the region fills; the unit keeps relink records.
    Method,
}

/// A patchable place of a linked unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Site {
    pub unit: UnitId,
    /// The field's address (aligned to its width).
    pub addr: ExecutorAddr,
    pub kind: SiteKind,
}

/// A reference to a heap object embedded in a linked unit's code or data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeapRef {
    pub unit: UnitId,
    pub addr: ExecutorAddr,
    /// 8 or 4 bytes.
    pub width: u8,
}

/// A unit linked into the zone, with its patchable places.
#[derive(Debug, Clone)]
pub struct Linked {
    pub unit: UnitId,
    pub region: RegionKind,
    pub sites: Vec<Site>,
    pub heap_refs: Vec<HeapRef>,
}

/// What kiln-jit keeps of a zone unit.
#[derive(Debug, Clone)]
pub(crate) struct ZoneUnit {
    pub region: RegionKind,
    pub sites: Vec<Site>,
    pub heap_refs: Vec<HeapRef>,
    /// What kiln-jit wrote into the unit's fields since it was linked and no relink edge
    /// follows, by field address.
    pub written: FxHashMap<u64, Written>,
}

impl ZoneUnit {
    pub fn new(region: RegionKind, sites: Vec<Site>, heap_refs: Vec<HeapRef>) -> ZoneUnit {
        ZoneUnit {
            region,
            sites,
            heap_refs,
            written: FxHashMap::default(),
        }
    }
}

/// A value kiln-jit wrote into a field of a zone unit (a retargeted site without a relink edge
/// at it, a guard key, an updated heap reference). Where the unit's relink record has an edge
/// at the field and kiln-jit made that edge follow the write ([`kiln::Session::set_edge_target`]),
/// kiln applies it again when code moves and nothing is kept here; otherwise kiln knows nothing
/// of the value, and compaction writes it again at the field's new place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub kind: SiteKind,
    pub value: WrittenValue,
}

/// A field kiln-jit wrote, after code moved (see [`Jit::relocate_fields`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MovedField {
    pub unit: UnitId,
    /// The field's address now.
    pub at: u64,
    pub written: Written,
    /// Whether the field or the code its value points into moved.
    pub changed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WrittenValue {
    /// An address the field reaches (a call's target, a slot's pointer): it follows the code it
    /// points into.
    Target(u64),
    /// A value that is not a code address (a guard key, a heap reference): kept as it is.
    Value(u64),
}

/// The JIT layer over one session: a code zone, the units in it, and the operations that change
/// code after it is linked. `Send + Sync`: compiler threads and the VM share it.
#[derive(Debug)]
pub struct Jit {
    session: Arc<Session>,
    zone: Zone,
    scope: ScopeId,
    pub(crate) units: Mutex<FxHashMap<UnitId, ZoneUnit>>,
    /// What patches left behind: per site the target it was last given, inline caches, PICs,
    /// retired code awaiting reclaim (see `redefine.rs`). Its lock also orders kiln-jit's
    /// patches of sites against each other.
    pub(crate) book: Mutex<Book>,
    /// Lazy functions (lazy.rs).
    pub(crate) lazy: Arc<crate::lazy::LazyTable>,
    /// Held for writing while a compaction moves code; for reading by whatever writes fields at
    /// addresses it looked up (write windows, heap references) or removes units. Lock order:
    /// `book`, then `moving`, then `units`.
    pub(crate) moving: RwLock<()>,
}

impl Jit {
    /// Reserve a zone as `config` asks in `session`'s executor; its units go into the session's
    /// default scope.
    pub fn new(session: Arc<Session>, config: &ZoneConfig) -> Result<Jit> {
        let zone = Zone::reserve(&**session.executor(), config)?;
        tracing::debug!(
            "code zone at {:#x}..+{:#x} (fixed {:?}, method {:?})",
            zone.base,
            zone.size,
            zone.fixed().code(),
            zone.method().code()
        );
        Ok(Jit {
            scope: session.default_scope(),
            session,
            zone,
            units: Mutex::default(),
            book: Mutex::default(),
            lazy: Arc::default(),
            moving: RwLock::default(),
        })
    }

    /// Put the zone's units into `scope` from now on.
    pub fn with_scope(mut self, scope: ScopeId) -> Self {
        self.scope = scope;
        self
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    pub fn scope(&self) -> ScopeId {
        self.scope
    }

    pub(crate) fn region(&self, r: RegionKind) -> &Region {
        match r {
            RegionKind::Fixed => self.zone.fixed(),
            RegionKind::Method => self.zone.method(),
        }
    }

    pub(crate) fn units(&self) -> MutexGuard<'_, FxHashMap<UnitId, ZoneUnit>> {
        self.units.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Code does not move while this is held (see [`Jit::compact`]).
    pub(crate) fn code_stays(&self) -> RwLockReadGuard<'_, ()> {
        self.moving.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Link `graph` into `region`, and find its sites and heap references.
    pub fn link(&self, region: RegionKind, graph: &JitGraph) -> Result<Linked> {
        check_annotations(graph)?;
        let options = UnitOptions {
            scope: self.scope,
            memory: Some(self.region(region).code_memory()),
            relink: region == RegionKind::Method,
        };
        let unit = self.session.link_graph_with(&graph.graph, &options)?;
        match self.place_annotations(unit, graph) {
            Ok((sites, heap_refs)) => {
                let record = ZoneUnit::new(region, sites.clone(), heap_refs.clone());
                self.units().insert(unit, record);
                Ok(Linked {
                    unit,
                    region,
                    sites,
                    heap_refs,
                })
            }
            Err(e) => {
                let _ = self.session.remove(unit);
                Err(e)
            }
        }
    }

    /// Link an ELF relocatable object into `region` (a runtime routine written in C, a method a
    /// compiler emitted as an object): everything kiln does for an object (its `.eh_frame`,
    /// debug info for gdb, perf) works in the zone. Objects declare no sites or heap
    /// references.
    pub fn link_object(&self, region: RegionKind, name: &str, bytes: Vec<u8>) -> Result<Linked> {
        let options = UnitOptions {
            scope: self.scope,
            memory: Some(self.region(region).code_memory()),
            relink: region == RegionKind::Method,
        };
        let mut inputs = Inputs::new();
        inputs.add_object(name, bytes);
        let unit = self.session.link_inputs_with(&inputs, &options)?;
        self.units()
            .insert(unit, ZoneUnit::new(region, Vec::new(), Vec::new()));
        Ok(Linked {
            unit,
            region,
            sites: Vec::new(),
            heap_refs: Vec::new(),
        })
    }

    /// The addresses of a linked graph's sites and heap references.
    pub(crate) fn place_annotations(
        &self,
        unit: UnitId,
        graph: &JitGraph,
    ) -> Result<(Vec<Site>, Vec<HeapRef>)> {
        let at = |symbol: &str, offset: u64, width: u64| -> Result<ExecutorAddr> {
            let s = self
                .session
                .lookup_symbol(self.scope, symbol)
                .filter(|s| s.unit == unit)
                .ok_or_else(|| Error::Graph {
                    graph: graph.graph.name.clone(),
                    what: format!("{symbol} is not a global symbol of the graph"),
                })?;
            let addr = s.addr.0 + offset;
            if !addr.is_multiple_of(width) {
                return Err(Error::Graph {
                    graph: graph.graph.name.clone(),
                    what: format!(
                        "the {width}-byte field at {symbol}+{offset:#x} ({addr:#x}) is not \
                         aligned to {width}: it could not be changed with one atomic store"
                    ),
                });
            }
            Ok(ExecutorAddr(addr))
        };
        let sites = graph
            .sites
            .iter()
            .map(|d| {
                Ok(Site {
                    unit,
                    addr: at(&d.symbol, d.offset, d.kind.width())?,
                    kind: d.kind,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let heap_refs = graph
            .heap_refs
            .iter()
            .map(|d| {
                Ok(HeapRef {
                    unit,
                    addr: at(&d.symbol, d.offset, u64::from(d.width))?,
                    width: d.width,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((sites, heap_refs))
    }

    /// The region and annotations of a zone unit.
    pub fn unit(&self, unit: UnitId) -> Option<Linked> {
        self.units().get(&unit).map(|u| Linked {
            unit,
            region: u.region,
            sites: u.sites.clone(),
            heap_refs: u.heap_refs.clone(),
        })
    }

    /// Make `site` reach `target`: a `Rel32` site calls or jumps there, an `Abs64` site holds
    /// its address. One atomic store, then every core serializes: threads running through the
    /// site go to the old or the new target, and none to the old one after this returns. The
    /// target is remembered (a redefinition of it retargets the site), and a relink record's
    /// edge at the site follows (moving code applies the new target, not the linked one).
    pub fn retarget(&self, site: &Site, target: ExecutorAddr) -> Result<()> {
        self.retarget_in(&mut self.book(), site, target)
    }

    /// The bytes that make `site` reach `target`.
    pub(crate) fn target_bytes(site: &Site, target: ExecutorAddr) -> Result<Vec<u8>> {
        Ok(match site.kind {
            SiteKind::Rel32 => crate::window::rel32(site.addr, target)?
                .to_le_bytes()
                .to_vec(),
            SiteKind::Abs64 => target.0.to_le_bytes().to_vec(),
            SiteKind::Imm32 => {
                return Err(Error::Stale(format!(
                    "the site at {} is an immediate, not a target: set_value",
                    site.addr
                )))
            }
        })
    }

    /// Set an immediate or slot site's value (an inline cache's guard key), atomically (one
    /// store, then the cores serialize). A slot given a value no longer follows the target it
    /// was last given.
    pub fn set_value(&self, site: &Site, value: u64) -> Result<()> {
        let bytes = match site.kind {
            SiteKind::Abs64 => value.to_le_bytes().to_vec(),
            SiteKind::Imm32 => u32::try_from(value)
                .map_err(|_| {
                    Error::Stale(format!(
                        "{value:#x} does not fit the 32-bit site at {}",
                        site.addr
                    ))
                })?
                .to_le_bytes()
                .to_vec(),
            SiteKind::Rel32 => {
                return Err(Error::Stale(format!(
                    "the site at {} is a call: retarget it",
                    site.addr
                )))
            }
        };
        self.set_value_in(&mut self.book(), site, &bytes)
    }

    /// Store a site's new bytes in a write window (one aligned atomic store, then the cores
    /// serialize), if the site belongs to a live unit of this zone. `kept` is what to remember
    /// of the write for compaction to write it again after a move; `None` when a relink edge at
    /// the field follows the write (kiln applies that edge again itself).
    pub(crate) fn store(
        &self,
        site: &Site,
        bytes: &[u8],
        kept: Option<WrittenValue>,
    ) -> Result<()> {
        self.check_site(site)?;
        self.write(|w| w.write(site.addr, bytes).map(drop))?;
        if let Some(u) = self.units().get_mut(&site.unit) {
            match kept {
                Some(value) => {
                    let written = Written {
                        kind: site.kind,
                        value,
                    };
                    u.written.insert(site.addr.0, written);
                }
                None => {
                    u.written.remove(&site.addr.0);
                }
            }
        }
        Ok(())
    }

    /// After code moved (`to_new` gives each old address its new one): the sites and heap
    /// references of every zone unit at their new addresses, and what kiln-jit wrote into
    /// fields (see [`Written`]) at their new places, with targets that moved followed, for the
    /// caller to write again.
    pub(crate) fn relocate_fields(&self, to_new: &dyn Fn(u64) -> u64) -> Vec<MovedField> {
        let mut out = Vec::new();
        for (&unit, u) in self.units().iter_mut() {
            for s in &mut u.sites {
                s.addr = ExecutorAddr(to_new(s.addr.0));
            }
            for h in &mut u.heap_refs {
                h.addr = ExecutorAddr(to_new(h.addr.0));
            }
            let mut written = FxHashMap::default();
            for (old_at, mut w) in u.written.drain() {
                let at = to_new(old_at);
                let mut changed = at != old_at;
                if let WrittenValue::Target(t) = &mut w.value {
                    let now = to_new(*t);
                    changed |= now != *t;
                    *t = now;
                }
                written.insert(at, w);
                out.push(MovedField {
                    unit,
                    at,
                    written: w,
                    changed,
                });
            }
            u.written = written;
        }
        out
    }

    /// `site` is one of a live (not retired) unit of this zone.
    pub(crate) fn check_site(&self, site: &Site) -> Result<()> {
        let live = self
            .units()
            .get(&site.unit)
            .is_some_and(|u| u.sites.contains(site));
        if !live {
            return Err(Error::Stale(format!(
                "the site at {} belongs to no live unit of this zone",
                site.addr
            )));
        }
        Ok(())
    }

    /// Remove a zone unit (see [`Session::remove`]: refused while others bind to it), with the
    /// live PIC stubs its sites reach: only its sites lead there, and a thread in such a stub
    /// entered it from the unit, which the VM says no thread runs any more (compaction drops
    /// them with their site's unit the same way). Stubs its sites reached before (retired by
    /// [`Pic::grow`](crate::Pic::grow)) stay retired until [`Jit::reclaim`] frees them.
    pub fn remove(&self, unit: UnitId) -> Result<()> {
        self.lazy.check_removable(unit)?;
        // The book first (no PIC built or grown for the unit's sites meanwhile), then `moving`.
        let mut book = self.book();
        let mut ids = vec![unit];
        ids.extend(book.pic_stubs_of(unit));
        {
            let _stays = self.code_stays();
            // Together: the unit binds to its stubs (its sites' relink edges name them), and a
            // stub may bind to the unit (a case whose target is in it).
            self.session.remove_units(&ids)?;
            let mut units = self.units();
            for id in &ids {
                units.remove(id);
            }
        }
        for id in ids {
            book.forget(id);
        }
        Ok(())
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        self.lazy.forget_all(&**self.session.executor());
        // Newest first, so that dependents go before what they use; then the zone's slabs.
        let mut units: Vec<UnitId> = self.units().keys().copied().collect();
        units.sort_unstable();
        for u in units.into_iter().rev() {
            let _ = self.session.remove_with_dependents(u);
        }
        self.zone.release(&**self.session.executor());
    }
}

/// Sites and heap references must name symbols the graph defines, inside them.
pub(crate) fn check_annotations(g: &JitGraph) -> Result<()> {
    let sizes: FxHashMap<&str, u64> = g
        .graph
        .sections
        .iter()
        .flat_map(|s| &s.blocks)
        .flat_map(|b| &b.symbols)
        .map(|s| (s.name.as_str(), s.size))
        .collect();
    let places = g
        .sites
        .iter()
        .map(|s| (&s.symbol, s.offset, s.kind.width()))
        .chain(
            g.heap_refs
                .iter()
                .map(|h| (&h.symbol, h.offset, u64::from(h.width))),
        );
    for (symbol, offset, width) in places {
        let size = sizes
            .get(symbol.as_str())
            .copied()
            .ok_or_else(|| Error::Graph {
                graph: g.graph.name.clone(),
                what: format!("annotation names {symbol}, which the graph does not define"),
            })?;
        if size > 0 && offset.checked_add(width).is_none_or(|e| e > size) {
            return Err(Error::Graph {
                graph: g.graph.name.clone(),
                what: format!("the field at {symbol}+{offset:#x} lies past its end ({size} bytes)"),
            });
        }
    }
    if g.heap_refs.iter().any(|h| h.width != 4 && h.width != 8) {
        return Err(Error::Graph {
            graph: g.graph.name.clone(),
            what: "heap references are 4 or 8 bytes wide".into(),
        });
    }
    Ok(())
}

impl Written {
    /// The bytes of the field at `addr` holding this value.
    pub(crate) fn encode(&self, addr: u64) -> Result<Vec<u8>> {
        let out_of_range = |what: String| Error::Stale(format!("{what} (the field at {addr:#x})"));
        Ok(match (self.kind, self.value) {
            (SiteKind::Rel32, WrittenValue::Target(t) | WrittenValue::Value(t)) => {
                crate::window::rel32(ExecutorAddr(addr), ExecutorAddr(t))?
                    .to_le_bytes()
                    .to_vec()
            }
            (SiteKind::Abs64, WrittenValue::Target(v) | WrittenValue::Value(v)) => {
                v.to_le_bytes().to_vec()
            }
            (SiteKind::Imm32, WrittenValue::Target(v) | WrittenValue::Value(v)) => u32::try_from(v)
                .map_err(|_| out_of_range(format!("{v:#x} does not fit 32 bits")))?
                .to_le_bytes()
                .to_vec(),
        })
    }
}
