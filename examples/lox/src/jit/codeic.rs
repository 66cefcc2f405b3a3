//! Code-patching inline caches for property gets and sets in machine code (kiln-jit's
//! `MonoIc` and `Pic`).
//!
//! A compiled property site is
//!
//! ```text
//!   (rax = the receiver's address, rcx = its shape word)
//!   movabs r11, KEY        ; the MonoIc's key: an Abs64 site, EMPTY_KEY until set
//!   cmp rcx, r11
//!   jne poly
//!   call HANDLER           ; the MonoIc's target: a Rel32 site
//!   ...
//! poly:                    ; cold
//!   call PIC               ; a Rel32 site: `lox_ic_miss` until the site sees a second shape
//!   jne data               ; ZF clear: no case for the shape
//!   ...
//! data:                    ; the region's data-driven cache, then the runtime helper
//! ```
//!
//! Handlers are tiny shared routines in the zone's fixed region, one per (get or set, inline
//! word or overflow element): a get returns the field in rdx, a set stores rdx; both return
//! with ZF set, and `lox_ic_miss` (the PIC's miss and megamorphic target) returns with it
//! clear. The shape alone determines where a field is (docs/lox.md, Shapes), so a shape is a
//! complete key. Adding a field (a shape transition) and methods stay on the data path: their
//! handlers would embed a heap object per site.
//!
//! The caches are filled when the runtime helper of the site has learned a shape (the region's
//! entry 0 then holds it), and from what the region's cache already knows when the function is
//! linked. Their keys are heap references: [`CodeIcRoots`] hands them to the GC as roots
//! (read from the code itself for the monomorphic keys) and writes the moved shapes back
//! (`MonoIc::set`, same target: one store; PICs rebuilt).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use kiln::graph::InMemoryGraph;
use kiln::UnitId;
use kiln_jit::{
    IcUpdate, JitGraph, KeyRegister, KeyWidth, MonoIc, Pic, PicConfig, PicTarget, RegionKind,
};
use kiln_target::ExecutorAddr;

use super::backend::Backend;
use super::compile::PropertyIc;
use super::x64::{mem, Alu, Asm, Reg};
use crate::bytecode::{IcKind, InlineCache};
use crate::heap::layout::{array, instance};
use crate::heap::ExternalRoots;
use crate::vm::region::VmRegion;

/// What the MonoIc's guard holds when empty: never a shape word, nor any word 1 of an object
/// (`u64::MAX` is no value kiln-lox stores: not a number, an object offset past 2^48).
pub const EMPTY_KEY: u64 = u64::MAX;
/// The PIC's miss and megamorphic target: returns with ZF clear.
pub const MISS: &str = "lox_ic_miss";
/// Cases of a PIC before the site goes megamorphic (the data path: eight entries).
const PIC_CASES: usize = 8;
/// Overflow elements past this go to the data path (a handler per element).
const MAX_OVERFLOW_HANDLER: u32 = 1024;

/// What a compiled site with a code-patching cache does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeSite {
    /// A property get: the handler returns the field in rdx.
    Get,
    /// A property set: the handler stores rdx.
    Set,
    /// A method invocation: the handler returns the method's closure in rdx.
    Invoke,
}

/// One compiled site's caches.
struct CodeIc {
    site: CodeSite,
    mono: MonoIc,
    mono_key: Option<u64>,
    mono_target: u64,
    /// The cold call site PICs are built on: (unit, index of its site).
    pic_site: (UnitId, usize),
    pic: Option<Pic>,
    /// The PIC's cases: shape word, handler address.
    cases: Vec<(u64, u64)>,
    megamorphic: bool,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct CodeIcStats {
    pub monomorphic_sets: u64,
    pub pics_built: u64,
    pub megamorphic: u64,
    pub gc_rewrites: u64,
}

/// A handler whose code holds a heap object (a heap reference at `field`): with a `slot`, it
/// adds the inline field at that word (stores rdx there) and moves the instance to shape
/// `shape`; without, it returns the method closure `shape` in rdx.
struct Transition {
    slot: Option<u32>,
    shape: u64,
    addr: u64,
    field: ExecutorAddr,
}

/// Every compiled property site's caches, by the region cache index of the site.
pub struct CodeIcs {
    backend: Rc<Backend>,
    sites: HashMap<usize, Vec<CodeIc>>,
    handlers: HashMap<String, u64>,
    transitions: Vec<Transition>,
    pub stats: CodeIcStats,
}

impl CodeIcs {
    pub fn new(backend: Rc<Backend>) -> Result<CodeIcs, String> {
        let mut ics = CodeIcs {
            backend,
            sites: HashMap::new(),
            handlers: HashMap::new(),
            transitions: Vec::new(),
            stats: CodeIcStats::default(),
        };
        let mut miss = Asm::new();
        miss.test_rr(Reg::Rsp, Reg::Rsp);
        miss.ret();
        ics.link_handler(MISS, miss)?;
        Ok(ics)
    }

    /// Links a handler into the fixed region (once per name) and returns its address.
    fn link_handler(&mut self, name: &str, code: Asm) -> Result<u64, String> {
        if let Some(&addr) = self.handlers.get(name) {
            return Ok(addr);
        }
        let code = code.finish()?;
        let mut graph = InMemoryGraph::new(name);
        graph.add_function(name, code.bytes, vec![], None);
        let jit = self.backend.jit();
        let linked = jit
            .link(RegionKind::Fixed, &JitGraph::new(graph))
            .map_err(|e| format!("linking {name}: {e}"))?;
        let addr = jit
            .session()
            .lookup_symbol(jit.scope(), name)
            .filter(|s| s.unit == linked.unit)
            .map(|s| s.addr.0)
            .ok_or_else(|| format!("{name} is not defined after linking it"))?;
        self.handlers.insert(name.to_string(), addr);
        Ok(addr)
    }

    /// The handler that adds the inline field at word `slot`, moving instances to `shape`;
    /// without a slot, the one that returns the closure `shape` in rdx.
    fn transition(&mut self, slot: Option<u32>, shape: u64) -> Result<u64, String> {
        if let Some(t) = self
            .transitions
            .iter()
            .find(|t| t.slot == slot && t.shape == shape)
        {
            return Ok(t.addr);
        }
        let mut a = Asm::new();
        let name = match slot {
            Some(slot) => {
                a.store(mem(Reg::Rax, 8 * slot as i32), Reg::Rdx);
                a.movabs_heap_ref(Reg::R11, shape);
                a.store(mem(Reg::Rax, 8 * instance::SHAPE as i32), Reg::R11);
                format!("lox_ic_add_{slot}_{}", self.transitions.len())
            }
            None => {
                a.movabs_heap_ref(Reg::Rdx, shape);
                format!("lox_ic_method_{}", self.transitions.len())
            }
        };
        a.alu_rr(Alu::Cmp, Reg::Rax, Reg::Rax);
        a.ret();
        let code = a.finish()?;
        let mut graph = InMemoryGraph::new(&name);
        graph.add_function(&name, code.bytes, vec![], None);
        let mut graph = JitGraph::new(graph);
        for &offset in &code.heap_refs {
            graph.heap_ref(&name, offset as u64, 8);
        }
        let jit = self.backend.jit();
        let linked = jit
            .link(RegionKind::Fixed, &graph)
            .map_err(|e| format!("linking {name}: {e}"))?;
        let field = linked
            .heap_refs
            .first()
            .ok_or("a transition without its shape")?
            .addr;
        let addr = jit
            .session()
            .lookup_symbol(jit.scope(), &name)
            .filter(|s| s.unit == linked.unit)
            .map(|s| s.addr.0)
            .ok_or_else(|| format!("{name} is not defined after linking it"))?;
        self.transitions.push(Transition {
            slot,
            shape,
            addr,
            field,
        });
        Ok(addr)
    }

    /// The handler for a field of `kind` at `slot` (with `target`, the new shape of a field
    /// added), for a get or a set; `None` for what stays on the data path.
    fn handler(&mut self, site: CodeSite, kind: IcKind, slot: u32, target: u64) -> Option<u64> {
        let set = match (site, kind) {
            (CodeSite::Invoke, IcKind::Method) => return self.transition(None, target).ok(),
            (CodeSite::Invoke, _) => return None,
            (CodeSite::Set, IcKind::AddInlineField) if slot < 4096 => {
                return self.transition(Some(slot), target).ok()
            }
            (site, _) => site == CodeSite::Set,
        };
        let verb = if set { "set" } else { "get" };
        let mut a = Asm::new();
        let name = match kind {
            IcKind::InlineField if slot < 4096 => {
                let field = mem(Reg::Rax, 8 * slot as i32);
                if set {
                    a.store(field, Reg::Rdx);
                } else {
                    a.load(Reg::Rdx, field);
                }
                format!("lox_ic_{verb}_inline_{slot}")
            }
            IcKind::OverflowField if slot < MAX_OVERFLOW_HANDLER => {
                let scratch = if set { Reg::R11 } else { Reg::Rdx };
                a.load(scratch, mem(Reg::Rax, 8 * instance::OVERFLOW as i32));
                a.mov_rr32(scratch, scratch);
                a.alu_rr(Alu::Add, scratch, Reg::R13);
                let element = mem(scratch, 8 * (array::ELEMENTS as i32 + slot as i32));
                if set {
                    a.store(element, Reg::Rdx);
                } else {
                    a.load(Reg::Rdx, element);
                }
                format!("lox_ic_{verb}_overflow_{slot}")
            }
            _ => return None,
        };
        // ZF set: a hit (the PIC's caller tests it).
        a.alu_rr(Alu::Cmp, Reg::Rax, Reg::Rax);
        a.ret();
        self.link_handler(&name, a).ok()
    }

    /// A function was linked as `unit` with these property sites: make their caches and fill
    /// them with what the region's caches know.
    pub fn add_function(
        &mut self,
        unit: UnitId,
        ics: &[PropertyIc],
        region: &VmRegion,
        obsolete: &dyn Fn(u64) -> bool,
    ) -> Result<(), String> {
        let backend = Rc::clone(&self.backend);
        let jit = backend.jit();
        let sites = jit.unit(unit).ok_or("a function's unit is gone")?.sites;
        for ic in ics {
            let (Some(&key), Some(&target)) = (sites.get(ic.key), sites.get(ic.target)) else {
                return Err("a property cache's sites are missing".into());
            };
            let mono = jit
                .mono_ic(key, target, EMPTY_KEY)
                .map_err(|e| format!("an inline cache: {e}"))?;
            self.sites.entry(ic.ic_index).or_default().push(CodeIc {
                site: ic.site,
                mono,
                mono_key: None,
                mono_target: 0,
                pic_site: (unit, ic.pic),
                pic: None,
                cases: Vec::new(),
                megamorphic: false,
            });
            for entry in 0..crate::vm::region::ic::ENTRIES {
                let cache = region.ic_entry(ic.ic_index, entry);
                self.learn(ic.ic_index, &cache, obsolete)?;
            }
        }
        Ok(())
    }

    /// The site with region cache `ic_index` has `cache` (a shape, and where its field is):
    /// its compiled caches learn it.
    /// `obsolete` says of a shape whether new instances can still get it (a class that learned
    /// to keep more fields inline has a new root shape): a monomorphic cache holding an
    /// obsolete shape gives way to the next shape learned.
    pub fn learn(
        &mut self,
        ic_index: usize,
        cache: &InlineCache,
        obsolete: &dyn Fn(u64) -> bool,
    ) -> Result<(), String> {
        let (key, kind, slot) = (cache.key, cache.kind, cache.slot);
        let Some(count) = self.sites.get(&ic_index).map(Vec::len) else {
            return Ok(());
        };
        for i in 0..count {
            let site = self.sites[&ic_index][i].site;
            let Some(handler) = self.handler(site, kind, slot, cache.target) else {
                return Ok(());
            };
            let mut ic = self.sites.get_mut(&ic_index).expect("present").remove(i);
            let result = self.add_case(&mut ic, key, handler, obsolete);
            self.sites
                .get_mut(&ic_index)
                .expect("present")
                .insert(i, ic);
            result?;
        }
        Ok(())
    }

    /// `key` → `handler` into the monomorphic cache if empty, else the PIC (or megamorphic).
    fn add_case(
        &mut self,
        ic: &mut CodeIc,
        key: u64,
        handler: u64,
        obsolete: &dyn Fn(u64) -> bool,
    ) -> Result<(), String> {
        let backend = Rc::clone(&self.backend);
        let jit = backend.jit();
        let err = |e: kiln_jit::Error| format!("an inline cache: {e}");
        match ic.mono_key {
            None => {
                if let IcUpdate::Pending(_) =
                    ic.mono.set(jit, key, ExecutorAddr(handler)).map_err(err)?
                {
                    // One thread, in a helper: nothing is between a guard and its call.
                    jit.reclaim_retired().map_err(err)?;
                }
                ic.mono_key = Some(key);
                ic.mono_target = handler;
                self.stats.monomorphic_sets += 1;
            }
            Some(k) if k == key => {}
            Some(old) if !obsolete(key) && obsolete(old) => {
                // The new shape takes the inline guard; the obsolete one goes to the PIC.
                if let IcUpdate::Pending(_) =
                    ic.mono.set(jit, key, ExecutorAddr(handler)).map_err(err)?
                {
                    jit.reclaim_retired().map_err(err)?;
                }
                let old_handler = std::mem::replace(&mut ic.mono_target, handler);
                ic.mono_key = Some(key);
                ic.cases.retain(|c| c.0 != key);
                ic.cases.push((old, old_handler));
                self.stats.monomorphic_sets += 1;
                if ic.cases.len() > PIC_CASES {
                    ic.megamorphic = true;
                    self.stats.megamorphic += 1;
                }
                if !ic.megamorphic {
                    self.build_pic(ic)?;
                }
            }
            Some(_) if ic.megamorphic || ic.cases.iter().any(|c| c.0 == key) => {}
            Some(_) => {
                ic.cases.push((key, handler));
                if ic.cases.len() > PIC_CASES {
                    ic.megamorphic = true;
                    self.stats.megamorphic += 1;
                }
                self.build_pic(ic)?;
            }
        }
        Ok(())
    }

    /// (Re)builds the PIC of `ic` from its cases (the site calls `lox_ic_miss` when
    /// megamorphic, and the data path takes over).
    fn build_pic(&mut self, ic: &mut CodeIc) -> Result<(), String> {
        let backend = Rc::clone(&self.backend);
        let jit = backend.jit();
        let err = |e: kiln_jit::Error| format!("a polymorphic inline cache: {e}");
        let site = jit
            .unit(ic.pic_site.0)
            .and_then(|l| l.sites.get(ic.pic_site.1).copied())
            .ok_or("a polymorphic cache's site is gone")?;
        if ic.megamorphic {
            if ic.pic.take().is_some() || ic.cases.len() > PIC_CASES {
                let miss = self.handlers[MISS];
                jit.retarget(&site, ExecutorAddr(miss)).map_err(err)?;
            }
        } else {
            let config = PicConfig {
                register: KeyRegister::Rcx,
                width: KeyWidth::Bits64,
                max_cases: PIC_CASES,
                miss: PicTarget::Name(MISS.into()),
                megamorphic: Some(PicTarget::Name(MISS.into())),
            };
            let cases: Vec<(u64, PicTarget)> = ic
                .cases
                .iter()
                .map(|&(k, t)| (k, PicTarget::Addr(ExecutorAddr(t))))
                .collect();
            match jit.build_pic(&site, &config, &cases) {
                Ok(pic) => {
                    ic.pic = Some(pic);
                    self.stats.pics_built += 1;
                }
                Err(_) => {
                    // No room for the stub (the method region is full): the site goes
                    // megamorphic. It must not keep a stub whose keys may be stale.
                    ic.megamorphic = true;
                    ic.pic = None;
                    self.stats.megamorphic += 1;
                    let miss = self.handlers[MISS];
                    jit.retarget(&site, ExecutorAddr(miss)).map_err(err)?;
                }
            }
        }
        // The replaced stub: no frame is in a PIC while the VM runs Rust.
        jit.reclaim_retired().map_err(err)?;
        Ok(())
    }

    /// After a compaction: the caches of dropped units are gone, the others' handles follow
    /// the move map (their `pic_site`s are (unit, index) and need nothing).
    pub fn after_compaction(
        &mut self,
        dropped: &std::collections::HashSet<UnitId>,
        report: &kiln_jit::CompactionReport,
    ) {
        for list in self.sites.values_mut() {
            list.retain(|ic| !dropped.contains(&ic.pic_site.0));
            for ic in list.iter_mut() {
                ic.mono = report.mono_ic(&ic.mono);
                ic.pic = ic.pic.as_ref().map(|p| report.pic(p));
            }
        }
        self.sites.retain(|_, list| !list.is_empty());
    }

    /// Every key the caches hold, in a fixed order: each monomorphic key read from the code,
    /// then the PIC's keys, then the objects handlers hold. A guard that does not hold the key
    /// the cache was given (a change still pending: the guard is empty) is reported with the
    /// key given, never with the empty key, which is no object.
    fn keys(&self, out: &mut Vec<u64>) {
        let ex = self.backend.jit().session().executor();
        for ic in self.sites.values().flatten() {
            if let Some(given) = ic.mono_key {
                let in_code = ex
                    .read_memory(ic.mono.key.addr, 8)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes);
                out.push(in_code.filter(|&k| k == given).unwrap_or(given));
            }
            out.extend(ic.cases.iter().map(|c| c.0));
        }
        out.extend(self.transitions.iter().map(|t| t.shape));
    }

    /// The keys after the GC moved them, in the order of `keys`.
    fn rewrite(&mut self, updated: &[u64]) -> Result<(), String> {
        let mut at = 0;
        let mut next = || {
            at += 1;
            updated.get(at - 1).copied()
        };
        // `keys` iterated the map's values; the same map, unchanged, iterates the same way.
        let order: Vec<usize> = {
            let mut order = Vec::new();
            for (index, list) in &self.sites {
                order.extend(std::iter::repeat_n(*index, list.len()));
            }
            order
        };
        let mut seen: HashMap<usize, usize> = HashMap::new();
        for index in order {
            let i = *seen.entry(index).and_modify(|n| *n += 1).or_insert(0);
            let mut ic = self.sites.get_mut(&index).expect("present").remove(i);
            let mut result = Ok(());
            if let Some(old) = ic.mono_key {
                let new = next().ok_or("fewer keys back than given")?;
                if new != old {
                    let jit = self.backend.jit();
                    result = ic
                        .mono
                        .set(jit, new, ExecutorAddr(ic.mono_target))
                        .map(drop)
                        .map_err(|e| format!("an inline cache: {e}"));
                    ic.mono_key = Some(new);
                    self.stats.gc_rewrites += 1;
                }
            }
            let mut changed = false;
            for case in &mut ic.cases {
                let new = next().ok_or("fewer keys back than given")?;
                changed |= new != case.0;
                case.0 = new;
            }
            if changed && result.is_ok() && !ic.megamorphic {
                result = self.build_pic(&mut ic);
                self.stats.gc_rewrites += 1;
            }
            self.sites.get_mut(&index).expect("present").insert(i, ic);
            result?;
        }
        let mut moved = Vec::new();
        for t in &mut self.transitions {
            let new = next().ok_or("fewer keys back than given")?;
            if new != t.shape {
                t.shape = new;
                moved.push((t.field, new));
            }
        }
        if !moved.is_empty() {
            self.backend
                .jit()
                .write(|w| {
                    for &(field, shape) in &moved {
                        w.write_u64(field, shape)?;
                    }
                    Ok(())
                })
                .map_err(|e| format!("moving the shapes of transitions: {e}"))?;
            self.stats.gc_rewrites += moved.len() as u64;
        }
        Ok(())
    }
}

/// The caches' keys as the GC's external roots: they keep their shapes alive and follow them.
pub struct CodeIcRoots(pub Rc<RefCell<CodeIcs>>);

impl ExternalRoots for CodeIcRoots {
    fn read_roots(&self, out: &mut Vec<u64>) {
        self.0.borrow().keys(out);
    }

    fn write_roots(&mut self, updated: &[u64]) {
        if let Err(e) = self.0.borrow_mut().rewrite(updated) {
            // The code would keep keys of objects that moved: no safe way on.
            eprintln!("kiln-lox: updating inline caches after a collection: {e}");
            std::process::abort();
        }
    }
}
