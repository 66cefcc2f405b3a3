//! Everything the JIT asks of kiln, in one place: a session in this process, the runtime
//! helpers defined by name, the runtime unit (entry trampoline and interpreter bridge), one
//! in-memory graph per compiled function, and calls into machine code.
//!
//! This is the module kiln-jit (issue 12) replaces: its fixed region takes the runtime unit,
//! its method region the functions (with compaction and a move map), its lazy stubs the
//! interpreter bridge in the entry table, its patchable call sites the table calls. Today
//! functions are linked with plain `Session::link_graph` and never move or die while the VM
//! lives; call sites are not patched (a call to a function compiled later goes through the
//! entry table); and no heap reference is embedded in code — machine code loads constants,
//! cached shapes and cached methods from the VM region, where the GC already updates them —
//! so a moving collection needs nothing from this module.

use std::sync::Arc;

use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{FrameDescription, InMemoryEdge, InMemoryGraph};
use kiln::{DebugOptions, Executor, ExecutorAddr, Session};

use super::x64::{mem, Asm, Code, Reg};
use crate::value::QNAN;
use crate::vm::region::ctx;

/// Symbol of the entry trampoline: `u64 lox_enter(ctx, code, base, argc, closure)`, SysV.
const ENTER: &str = "lox_enter";
/// Symbol of the interpreter bridge: what the entry table holds for a function that is not
/// compiled; it runs the function in the interpreter (`runtime::call_interpreted`).
const BRIDGE: &str = "lox_interp_bridge";
/// The helper the bridge calls.
pub const CALL_INTERPRETED: &str = "lox_rt_call_interpreted";

pub struct Backend {
    session: Session,
    executor: Arc<dyn Executor>,
    enter: ExecutorAddr,
    bridge: u64,
}

impl Backend {
    /// A session in this process that knows the runtime `helpers` by name, with the runtime
    /// unit linked.
    pub fn new(helpers: &[(&str, u64)]) -> Result<Backend, String> {
        let session = Session::in_process();
        session.set_debug(DebugOptions::from_env()?);
        for &(name, address) in helpers {
            session.define(name, address);
        }
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
        session
            .link_graph(&graph)
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
            session,
            executor,
            enter,
            bridge,
        })
    }

    /// The address an entry-table slot holds for a function that is not compiled.
    pub fn bridge(&self) -> u64 {
        self.bridge
    }

    /// Links one function and returns its address. The code starts with the frame-pointer
    /// prologue, so kiln writes its unwind information; its calls to helpers and to other
    /// functions are edges by name.
    pub fn link_function(&self, symbol: &str, code: &Code) -> Result<u64, String> {
        let mut graph = InMemoryGraph::new(symbol);
        graph.add_function(
            symbol,
            code.bytes.clone(),
            edges(&code.edges),
            Some(FrameDescription::FramePointer),
        );
        self.session
            .link_graph(&graph)
            .map_err(|e| format!("linking {symbol}: {e}"))?;
        self.session
            .lookup(symbol)
            .map(|a| a.0)
            .ok_or_else(|| format!("{symbol} is not defined after linking it"))
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
            // The trampoline is linked when the backend is made and never removed.
            Err(e) => panic!("kiln-lox: cannot enter JIT'd code: {e}"),
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
