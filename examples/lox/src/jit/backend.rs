//! Everything the JIT asks of kiln and kiln-jit, in one place: a session in this process with
//! the runtime helpers defined by name, a kiln-jit code zone whose fixed region holds the
//! runtime unit (entry trampoline and interpreter bridge) and whose method region holds one
//! in-memory graph per compiled function, the patchable call sites of those functions, and
//! calls into machine code.

use std::sync::Arc;

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{FrameDescription, InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, Executor, ExecutorAddr, Session, UnitId};
use kiln_jit::{JitGraph, RegionKind, SiteKind, ZoneConfig, ZonePlacement};

use super::x64::{mem, Asm, Code, Reg, SiteField};
use crate::value::QNAN;
use crate::vm::region::ctx;

/// Symbol of the entry trampoline: `u64 lox_enter(ctx, code, base, argc, closure)`, SysV.
const ENTER: &str = "lox_enter";
/// Symbol of the interpreter bridge: what the entry table holds for a function that is not
/// compiled, and what a patchable call site to such a function calls; it runs the function
/// in the interpreter (`runtime::call_interpreted`).
pub const BRIDGE: &str = "lox_interp_bridge";
/// The helper the bridge calls.
pub const CALL_INTERPRETED: &str = "lox_rt_call_interpreted";

/// The code zone's size when `--code-zone` does not say: room for every benchmark's code many
/// times over (a compiled function is a few KiB; the zone is address space, committed as used).
pub const DEFAULT_ZONE: u64 = 64 << 20;
/// The smallest zone: the fixed region's 32 KiB (the runtime unit, the caches' handlers) and
/// 16 KiB of method region (8 KiB of it code: one small function or two).
pub const MIN_ZONE: u64 = 48 << 10;

/// A function linked into the method region: its unit and entry address.
#[derive(Clone, Copy, Debug)]
pub struct LinkedFunction {
    pub unit: UnitId,
    pub entry: u64,
}

pub struct Backend {
    jit: Arc<kiln_jit::Jit>,
    executor: Arc<dyn Executor>,
    enter: ExecutorAddr,
    bridge: u64,
}

impl Backend {
    /// A session in this process that knows the runtime `helpers` by name, a code zone of
    /// `zone_size` bytes within reach of them (direct calls), and the runtime unit linked
    /// into the zone's fixed region.
    pub fn new(helpers: &[(&str, u64)], zone_size: u64) -> Result<Backend, String> {
        let session = Arc::new(Session::in_process());
        session.set_debug(DebugOptions::from_env()?);
        for &(name, address) in helpers {
            session.define(name, address);
        }
        let jit = Arc::new(reserve_zone(&session, helpers, zone_size)?);
        let mut graph = InMemoryGraph::new("lox:runtime");
        let enter = enter_trampoline().finish()?;
        graph.add_function(
            ENTER,
            enter.bytes,
            vec![],
            Some(FrameDescription::FramePointer),
        );
        let bridge = interpreter_bridge().finish()?;
        graph.add_function(
            BRIDGE,
            bridge.bytes,
            edges(&bridge.edges),
            Some(FrameDescription::FramePointer),
        );
        jit.link(RegionKind::Fixed, &JitGraph::new(graph))
            .map_err(|e| format!("linking the JIT's runtime: {e}"))?;
        let lookup = |name: &str| {
            session
                .lookup(name)
                .ok_or_else(|| format!("{name} is not defined after linking the runtime"))
        };
        let enter = lookup(ENTER)?;
        let bridge = lookup(BRIDGE)?.0;
        let executor = session.executor().clone();
        Ok(Backend {
            jit,
            executor,
            enter,
            bridge,
        })
    }

    /// The address an entry-table slot holds for a function that is not compiled.
    pub fn bridge(&self) -> u64 {
        self.bridge
    }

    pub fn jit(&self) -> &kiln_jit::Jit {
        &self.jit
    }

    /// Whether units go into the zone, where write windows can patch them: not when a
    /// debugger traces the process (kiln then gives each unit private mappings of its own, so
    /// that breakpoints work).
    pub fn patchable(&self) -> bool {
        self.jit.session().executor().supports_slabs()
    }

    /// Bytes of the method region's code part.
    pub fn method_region_bytes(&self) -> u64 {
        self.jit.zone().method().code().1
    }

    /// Links one function into the method region. The code starts with the frame-pointer
    /// prologue, so kiln writes its unwind information; its calls to helpers and to other
    /// functions are edges by name; its patchable call sites become kiln-jit sites, in the
    /// order of `code.sites`.
    pub fn link_function(&self, symbol: &str, code: &Code) -> Result<LinkedFunction, String> {
        let mut graph = InMemoryGraph::new(symbol);
        graph.add_function(
            symbol,
            code.bytes.clone(),
            edges(&code.edges),
            Some(FrameDescription::FramePointer),
        );
        let mut graph = JitGraph::new(graph);
        for &(offset, field) in &code.sites {
            let kind = match field {
                SiteField::Rel32 => SiteKind::Rel32,
                SiteField::Abs64 => SiteKind::Abs64,
            };
            graph.site(symbol, offset as u64, kind);
        }
        for &offset in &code.heap_refs {
            graph.heap_ref(symbol, offset as u64, 8);
        }
        let linked = self
            .jit
            .link(RegionKind::Method, &graph)
            .map_err(|e| format!("linking {symbol}: {e}"))?;
        let entry = self
            .jit
            .session()
            .lookup_symbol(self.jit.scope(), symbol)
            .filter(|s| s.unit == linked.unit)
            .map(|s| s.addr.0)
            .ok_or_else(|| format!("{symbol} is not defined after linking it"))?;
        Ok(LinkedFunction {
            unit: linked.unit,
            entry,
        })
    }

    /// Makes patchable call site `index` of `unit` call `target`. False if the unit or the
    /// site is gone (the caller was dropped from the zone meanwhile).
    pub fn retarget(&self, unit: UnitId, index: usize, target: u64) -> Result<bool, String> {
        let Some(site) = self
            .jit
            .unit(unit)
            .and_then(|l| l.sites.get(index).copied())
        else {
            return Ok(false);
        };
        self.jit
            .retarget(&site, ExecutorAddr(target))
            .map_err(|e| format!("retargeting a call site: {e}"))?;
        Ok(true)
    }

    /// Runs machine code at `code` through the entry trampoline (see `enter_trampoline`) and
    /// returns what it returns. The executor checks that the trampoline is code of a live
    /// unit; `code` comes from the VM's own tables.
    pub fn enter(&self, ctx: u64, code: u64, base: u64, argc: u64, closure: u64) -> u64 {
        match self
            .executor
            .call(self.enter, &[ctx, code, base, argc, closure])
        {
            Ok(result) => result,
            // The trampoline is in the fixed region: never moved, never removed.
            Err(e) => panic!("kiln-lox: cannot enter JIT'd code: {e}"),
        }
    }
}

/// The zone: within 32-bit reach of the helpers if the address space allows (calls to them
/// are then direct), else wherever there is room (calls out of reach go through stubs).
fn reserve_zone(
    session: &Arc<Session>,
    helpers: &[(&str, u64)],
    size: u64,
) -> Result<kiln_jit::Jit, String> {
    if size < MIN_ZONE {
        return Err(format!(
            "a code zone of {size} bytes is too small (at least {MIN_ZONE})"
        ));
    }
    let fixed_size = (size / 16).max(32 << 10);
    let mut config = ZoneConfig {
        size,
        fixed_size,
        placement: ZonePlacement::WithinReachOf(helpers.iter().map(|h| h.1).collect()),
    };
    match kiln_jit::Jit::new(session.clone(), &config) {
        Ok(jit) => Ok(jit),
        Err(_) => {
            config.placement = ZonePlacement::Anywhere;
            kiln_jit::Jit::new(session.clone(), &config)
                .map_err(|e| format!("reserving a code zone of {size} bytes: {e}"))
        }
    }
}

fn edges(edges: &[super::x64::Edge]) -> Vec<InMemoryEdge> {
    edges
        .iter()
        .map(|e| InMemoryEdge::new(e.offset, EdgeKind::BranchPCRel32, &e.target, -4))
        .collect()
}

/// `u64 lox_enter(ctx, code, base, argc, closure)`: saves the callee-saved registers the JIT's
/// code uses as its own (`r12` the VM region, `r13` the heap base, `r15` the NaN-box tag, and
/// `rbx`/`r14`, which every Lox frame saves for its caller), sets them up, and calls `code`
/// with the JIT's convention: `rdi` base slot, `rsi` argument count, `rdx` closure. What
/// `code` returns in `rax` (a value, or anything with the error flag set) comes back.
fn enter_trampoline() -> Asm {
    let mut a = Asm::new();
    a.push(Reg::Rbp);
    a.mov_rr(Reg::Rbp, Reg::Rsp);
    for r in [Reg::Rbx, Reg::R12, Reg::R13, Reg::R14, Reg::R15] {
        a.push(r);
    }
    // Six pushes and the return address: 16-byte aligned after one more word.
    a.alu_ri(super::x64::Alu::Sub, Reg::Rsp, 8);
    a.mov_rr(Reg::R12, Reg::Rdi);
    a.load(Reg::R13, mem(Reg::R12, ctx::HEAP_BASE));
    a.mov_ri(Reg::R15, QNAN);
    a.mov_rr(Reg::Rax, Reg::Rsi);
    a.mov_rr(Reg::Rdi, Reg::Rdx);
    a.mov_rr(Reg::Rsi, Reg::Rcx);
    a.mov_rr(Reg::Rdx, Reg::R8);
    a.call_r(Reg::Rax);
    a.alu_ri(super::x64::Alu::Add, Reg::Rsp, 8);
    for r in [Reg::R15, Reg::R14, Reg::R13, Reg::R12, Reg::Rbx] {
        a.pop(r);
    }
    a.pop(Reg::Rbp);
    a.ret();
    a
}

/// The interpreter bridge, called like a compiled function (`rdi` base, `rsi` argc, `rdx`
/// closure): calls `lox_rt_call_interpreted(ctx, base, argc, closure)`, which runs the
/// function in the interpreter (or compiles it first if it just became hot).
fn interpreter_bridge() -> Asm {
    let mut a = Asm::new();
    a.push(Reg::Rbp);
    a.mov_rr(Reg::Rbp, Reg::Rsp);
    a.mov_rr(Reg::Rcx, Reg::Rdx);
    a.mov_rr(Reg::Rdx, Reg::Rsi);
    a.mov_rr(Reg::Rsi, Reg::Rdi);
    a.mov_rr(Reg::Rdi, Reg::R12);
    a.call_symbol(CALL_INTERPRETED);
    a.pop(Reg::Rbp);
    a.ret();
    a
}
