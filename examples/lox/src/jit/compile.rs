//! The template JIT's compiler: one prototype's bytecode to x86-64, one template per opcode.
//!
//! Machine code keeps the interpreter's state in the same places — values in the value stack,
//! the frame record current — so that any instruction boundary can be entered from the
//! interpreter (on-stack replacement at loop starts) and any helper call sees what the
//! interpreter would. Registers (`backend.rs` sets up the pinned ones):
//!
//! ```text
//! r12  the VM region (ctx block, frames, stack, globals, constants, caches, entries)
//! r13  base of the current semispace (reloaded after every call: a collection moves it)
//! r15  QNAN (nil; false = r15 + 1, true = r15 + 3, undefined = r15 + 4)
//! rbx  address of the frame's slot 0;  r14  address of the frame's record
//! rax rcx rdx r11  scratch within one template;  rsi rdi r8 r9 r10  the virtual stack
//! ```
//!
//! Stack slots are at `[rbx + 8*i]`, `i` known at compile time (the analysis below computes the
//! depth before every instruction). Between instructions a value may live elsewhere than its
//! slot — an immediate, a constant or local not read yet, a register — which is what saves
//! the loads and stores a naive template JIT does. The virtual stack (`Entry`) tracks that; it
//! is written back ("flushed") before anything another piece of code may look at: a jump or
//! jump target, a call, a runtime helper that works on the stack. An instruction whose slow
//! path calls a helper (a cache miss, `+` on strings) leaves its fast path alone and writes the
//! values back in the cold code, reloading the registers after the helper: every reference held
//! across a helper, which may collect, is in a stack slot (a GC root the collector updates),
//! never only in a register.

use std::collections::HashMap;

use super::runtime as rt;
use super::x64::{mem, mem_index, Alu, Asm, Code, Cond, Label, Mem, Reg, Section};
use crate::bytecode::{op, read_u32, Program, Proto};
use crate::heap::layout::{closure, Tag};
use crate::value::{Value, QNAN};
use crate::vm::region::{self, ctx, ic};
use crate::vm::stack::{frame, FRAMES_MAX, STACK_SLOTS};
use crate::vm::Vm;

/// Registers that hold virtual-stack values.
const POOL: [Reg; 5] = [Reg::Rsi, Reg::Rdi, Reg::R8, Reg::R9, Reg::R10];

/// Where the value of one stack slot is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Loc {
    /// In its slot.
    Stack,
    /// These bits: a number, nil or a boolean (never a heap reference, which could move).
    Imm(u64),
    /// A copy of stack slot `s` (whose entry is `Stack`), not read yet.
    Local(u32),
    /// Constant `k` of the region (an object), not read yet.
    Const(u32),
    Reg(Reg),
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    pub loc: Loc,
    /// The prototype this value is expected to be a closure of (from the global it was read
    /// from, or the method an inline cache holds), for a direct call with a guard.
    pub hint: Option<u32>,
}

impl Entry {
    fn at(loc: Loc) -> Entry {
        Entry { loc, hint: None }
    }
}

/// One decoded instruction.
#[derive(Clone, Copy, Debug)]
pub(super) struct Insn {
    /// Absolute index of the opcode in `Program::code`.
    pub ip: usize,
    pub op: u8,
    /// Bytes, operands included.
    pub len: usize,
}

impl Insn {
    pub fn end(&self) -> usize {
        self.ip + self.len
    }
}

/// What the compiler needs to know about the rest of the VM.
pub struct Context<'a> {
    pub vm: &'a Vm,
    /// The symbol of a compiled prototype, for direct calls.
    pub symbol_of: &'a dyn Fn(usize) -> Option<String>,
    /// The prototype of the function declared as global `slot`, if the program declares one
    /// (`fun f() {}` at top level): the call hint while the global is not defined yet.
    pub declared: &'a dyn Fn(usize) -> Option<u32>,
    /// Whether code can be patched after linking (kiln-jit's zone is in use): false under a
    /// debugger, where kiln gives units private mappings outside the zone. Then no patchable
    /// call sites, code-patching caches or heap references are emitted.
    pub patchable: bool,
}

/// The functions `proto`'s code declares as globals: `(global slot, prototype)` for each
/// `CLOSURE p …; DEFINE_GLOBAL g` it contains.
pub fn declared_functions(program: &Program, proto: &Proto) -> Vec<(usize, u32)> {
    let Ok(insns) = decode(program, proto) else {
        return Vec::new();
    };
    insns
        .windows(2)
        .filter(|w| w[0].op == op::CLOSURE && w[1].op == op::DEFINE_GLOBAL)
        .map(|w| {
            let global = read_u32(&program.code, w[1].ip + 1) as usize;
            (global, read_u32(&program.code, w[0].ip + 1))
        })
        .collect()
}

/// A compiled function: its code (whose offset 0 is the entry), an entry for each loop
/// start, by bytecode index, for on-stack replacement, the call sites waiting for a
/// prototype (site index in `Code::sites`, prototype: the site calls the interpreter bridge
/// until that prototype is compiled, then is retargeted to it), and the property sites'
/// code-patching inline caches.
pub struct Compiled {
    pub code: Code,
    pub osr: Vec<(usize, usize)>,
    pub waiting: Vec<(usize, u32)>,
    pub property_ics: Vec<PropertyIc>,
}

/// A property get or set compiled with a code-patching cache: a guard on the shape (its key
/// a `movabs` site) and a call to a handler (a call site), the monomorphic cache; and in cold
/// code a call site for a polymorphic cache (PIC), calling `lox_ic_miss` until it has one.
/// Indexes are into `Code::sites`.
#[derive(Clone, Copy, Debug)]
pub struct PropertyIc {
    pub ic_index: usize,
    pub site: super::codeic::CodeSite,
    pub key: usize,
    pub target: usize,
    pub pic: usize,
}

pub(super) struct Gen<'a> {
    pub a: Asm,
    pub cx: &'a Context<'a>,
    pub program: &'a Program,
    pub proto: &'a Proto,
    pub proto_index: usize,
    pub entries: Vec<Entry>,
    free: [bool; POOL.len()],
    /// Label of each jump target, by absolute bytecode index.
    pub labels: HashMap<usize, Label>,
    pub start: Label,
    /// Returns with the error flag set: the frame's saved registers are popped.
    pub unwind: Label,
    /// The call sites waiting for a prototype (see `Compiled::waiting`).
    pub waiting: Vec<(usize, u32)>,
    pub property_ics: Vec<PropertyIc>,
}

pub fn compile(cx: &Context<'_>, proto_index: usize) -> Result<Compiled, String> {
    let program: &Program = &cx.vm.program;
    let proto = program
        .protos
        .get(proto_index)
        .ok_or_else(|| format!("no prototype {proto_index}"))?;
    let insns = decode(program, proto)?;
    let analysis = analyze(program, proto, &insns)?;
    if analysis.max_depth > proto.max_stack {
        return Err(format!(
            "stack depth {} exceeds max_stack {}",
            analysis.max_depth, proto.max_stack
        ));
    }
    let mut g = Gen::new(cx, program, proto, proto_index);
    let mut labels = HashMap::new();
    for &target in &analysis.targets {
        labels.insert(target, g.a.new_label());
    }
    g.labels = labels;
    g.prologue()?;
    g.body(&insns, &analysis)?;
    g.unwind_exit();
    let osr_labels: Vec<(usize, Label)> = analysis
        .loop_starts
        .iter()
        .map(|&ip| (ip, g.osr_entry(ip)))
        .collect();
    let code = g.a.finish()?;
    let osr = osr_labels
        .into_iter()
        .filter_map(|(ip, label)| code.offset(label).map(|offset| (ip, offset)))
        .collect();
    Ok(Compiled {
        code,
        osr,
        waiting: g.waiting,
        property_ics: g.property_ics,
    })
}

/// Decodes the function's instructions in order.
fn decode(program: &Program, proto: &Proto) -> Result<Vec<Insn>, String> {
    let code = &program.code;
    let end = proto.code_start + proto.code_len;
    if end > code.len() {
        return Err("code range outside the program".into());
    }
    let mut insns = Vec::new();
    let mut ip = proto.code_start;
    while ip < end {
        let opcode = code[ip];
        let operands = match opcode {
            op::GET_LOCAL | op::SET_LOCAL | op::GET_UPVALUE | op::SET_UPVALUE | op::CALL => 1,
            op::CONSTANT
            | op::GET_GLOBAL
            | op::DEFINE_GLOBAL
            | op::SET_GLOBAL
            | op::GET_PROPERTY
            | op::SET_PROPERTY
            | op::GET_SUPER
            | op::JUMP
            | op::JUMP_IF_FALSE
            | op::LOOP
            | op::CLASS
            | op::METHOD => 4,
            op::INVOKE | op::SUPER_INVOKE => 5,
            op::CLOSURE => {
                let p = read_operand(code, ip + 1, end)?;
                let inner = program
                    .protos
                    .get(p)
                    .ok_or_else(|| format!("closure of unknown prototype {p}"))?;
                4 + 2 * inner.upvalue_count
            }
            op::NIL..=op::POP
            | op::EQUAL..=op::PRINT
            | op::CLOSE_UPVALUE
            | op::RETURN
            | op::INHERIT => 0,
            _ => return Err(format!("unknown opcode {opcode} at {ip}")),
        };
        if ip + 1 + operands > end {
            return Err(format!("truncated instruction at {ip}"));
        }
        insns.push(Insn {
            ip,
            op: opcode,
            len: 1 + operands,
        });
        ip += 1 + operands;
    }
    Ok(insns)
}

fn read_operand(code: &[u8], at: usize, end: usize) -> Result<usize, String> {
    if at + 4 > end {
        return Err(format!("truncated operand at {at}"));
    }
    Ok(read_u32(code, at) as usize)
}

/// Depth of the stack before each reachable instruction, and where jumps land.
pub(super) struct Analysis {
    /// By instruction index; `None` for unreachable instructions.
    pub depth: Vec<Option<usize>>,
    /// Every jump target (absolute bytecode index), and the instruction after a `POP` that a
    /// fused test-and-branch jumps to.
    pub targets: Vec<usize>,
    /// Targets of `LOOP`: entries for on-stack replacement.
    pub loop_starts: Vec<usize>,
    /// `JUMP_IF_FALSE` instructions (by index) whose target and fall-through both pop the
    /// value first: they branch to after the `POP` and need not keep the value.
    pub fusable: std::collections::HashSet<usize>,
    pub max_depth: usize,
}

/// Where a jump instruction goes.
pub(super) fn jump_target(program: &Program, insn: &Insn) -> usize {
    let distance = read_u32(&program.code, insn.ip + 1) as usize;
    if insn.op == op::LOOP {
        insn.end().wrapping_sub(distance)
    } else {
        insn.end() + distance
    }
}

/// Stack effect of an instruction: values it needs, and the change in depth.
fn stack_effect(program: &Program, insn: &Insn) -> (usize, isize) {
    let code = &program.code;
    let operand_u8 = |at: usize| code[insn.ip + at] as usize;
    match insn.op {
        op::CONSTANT | op::NIL | op::TRUE | op::FALSE | op::GET_LOCAL | op::GET_GLOBAL => (0, 1),
        op::GET_UPVALUE | op::CLOSURE | op::CLASS => (0, 1),
        op::POP | op::DEFINE_GLOBAL | op::PRINT | op::CLOSE_UPVALUE | op::RETURN => (1, -1),
        op::SET_LOCAL | op::SET_GLOBAL | op::SET_UPVALUE | op::GET_PROPERTY => (1, 0),
        op::NOT | op::NEGATE | op::JUMP_IF_FALSE => (1, 0),
        op::SET_PROPERTY | op::GET_SUPER | op::INHERIT | op::METHOD => (2, -1),
        op::EQUAL..=op::DIVIDE => (2, -1),
        op::CALL => {
            let argc = operand_u8(1);
            (argc + 1, -(argc as isize))
        }
        op::INVOKE => {
            let argc = operand_u8(5);
            (argc + 1, -(argc as isize))
        }
        op::SUPER_INVOKE => {
            let argc = operand_u8(5);
            (argc + 2, -(argc as isize) - 1)
        }
        _ => (0, 0),
    }
}

/// Follows every path from the entry: the depth before each instruction must be the same on
/// every path that reaches it (the compiler emits code that way; a program that breaks it is
/// not compiled). Then finds the conditional jumps that can test and branch without keeping
/// the value: those whose both successors start by popping it.
fn analyze(program: &Program, proto: &Proto, insns: &[Insn]) -> Result<Analysis, String> {
    let index_of: HashMap<usize, usize> =
        insns.iter().enumerate().map(|(i, n)| (n.ip, i)).collect();
    let find = |ip: usize| {
        index_of
            .get(&ip)
            .copied()
            .ok_or_else(|| format!("jump to {ip}, not an instruction of the function"))
    };
    let mut depth: Vec<Option<usize>> = vec![None; insns.len()];
    let mut targets = std::collections::BTreeSet::new();
    let mut loop_starts = std::collections::BTreeSet::new();
    let mut max_depth = 0;
    let mut work = vec![(0usize, proto.arity + 1)];
    while let Some((i, d)) = work.pop() {
        match depth[i] {
            Some(known) if known == d => continue,
            Some(known) => {
                return Err(format!(
                    "stack depth {known} and {d} meet at {}",
                    insns[i].ip
                ))
            }
            None => depth[i] = Some(d),
        }
        let insn = &insns[i];
        let (needs, change) = stack_effect(program, insn);
        if d < needs {
            return Err(format!("stack underflow at {}", insn.ip));
        }
        let after = (d as isize + change) as usize;
        max_depth = max_depth.max(d).max(after);
        let mut fall_through = true;
        if matches!(insn.op, op::JUMP | op::JUMP_IF_FALSE | op::LOOP) {
            let target = jump_target(program, insn);
            targets.insert(target);
            if insn.op == op::LOOP {
                loop_starts.insert(target);
            }
            work.push((find(target)?, after));
            fall_through = insn.op == op::JUMP_IF_FALSE;
        }
        if insn.op == op::RETURN {
            fall_through = false;
        }
        if fall_through {
            if i + 1 >= insns.len() {
                return Err("code runs off the end of the function".into());
            }
            work.push((i + 1, after));
        }
    }
    let mut fusable = std::collections::HashSet::new();
    let is_pop = |ip: usize| program.code.get(ip) == Some(&op::POP);
    for (i, insn) in insns.iter().enumerate() {
        if insn.op != op::JUMP_IF_FALSE || depth[i].is_none() {
            continue;
        }
        let target = jump_target(program, insn);
        let next = insn.end();
        if is_pop(target) && is_pop(next) && !targets.contains(&insn.ip) && !targets.contains(&next)
        {
            fusable.insert(insn.ip);
        }
    }
    for &ip in &fusable {
        let insn = &insns[index_of[&ip]];
        targets.insert(jump_target(program, insn) + 1);
    }
    Ok(Analysis {
        depth,
        targets: targets.into_iter().collect(),
        loop_starts: loop_starts.into_iter().collect(),
        fusable,
        max_depth,
    })
}

impl<'a> Gen<'a> {
    fn new(
        cx: &'a Context<'a>,
        program: &'a Program,
        proto: &'a Proto,
        proto_index: usize,
    ) -> Gen<'a> {
        let mut a = Asm::new();
        let start = a.new_label();
        let unwind = a.new_label();
        Gen {
            a,
            cx,
            program,
            proto,
            proto_index,
            entries: Vec::new(),
            free: [true; POOL.len()],
            labels: HashMap::new(),
            start,
            unwind,
            waiting: Vec::new(),
            property_ics: Vec::new(),
        }
    }

    // ---- operands ----

    pub fn slot(i: usize) -> Mem {
        mem(Reg::Rbx, 8 * i as i32)
    }

    pub fn ctx(field: i32) -> Mem {
        mem(Reg::R12, field)
    }

    pub fn global(slot: usize) -> Mem {
        mem(Reg::R12, (region::GLOBALS_OFFSET + 8 * slot) as i32)
    }

    pub fn ic(index: usize, word: usize) -> Mem {
        mem(
            Reg::R12,
            (region::ICS_OFFSET + 8 * (ic::WORDS * index + word)) as i32,
        )
    }

    pub fn frame_field(field: usize) -> Mem {
        mem(Reg::R14, 8 * field as i32)
    }

    // ---- the virtual stack ----

    pub fn depth(&self) -> usize {
        self.entries.len()
    }

    pub fn top(&self) -> usize {
        self.entries.len() - 1
    }

    pub fn push(&mut self, loc: Loc, hint: Option<u32>) {
        self.entries.push(Entry { loc, hint });
    }

    pub fn pop(&mut self) -> Entry {
        let entry = self.entries.pop().unwrap_or(Entry::at(Loc::Stack));
        if let Loc::Reg(r) = entry.loc {
            self.free_reg(r);
        }
        entry
    }

    /// Resets the virtual stack to `depth` values, all in their slots (at a jump target).
    pub fn reset(&mut self, depth: usize) {
        self.entries.clear();
        self.entries.resize(depth, Entry::at(Loc::Stack));
        self.free = [true; POOL.len()];
    }

    fn pool_index(r: Reg) -> usize {
        POOL.iter().position(|&p| p == r).unwrap_or(0)
    }

    pub fn free_reg(&mut self, r: Reg) {
        self.free[Self::pool_index(r)] = true;
    }

    /// A register for a new value, spilling the deepest register-held value if none is free.
    pub fn alloc_reg(&mut self) -> Reg {
        if let Some(i) = self.free.iter().position(|&f| f) {
            self.free[i] = false;
            return POOL[i];
        }
        let deepest = self
            .entries
            .iter()
            .position(|e| matches!(e.loc, Loc::Reg(_)))
            .unwrap_or(0);
        self.materialize(deepest);
        self.alloc_reg()
    }

    /// Emits code that puts the value of `loc` (the entry at `index`) into `r`.
    pub fn load_into(&mut self, r: Reg, loc: Loc, index: usize) {
        match loc {
            Loc::Stack => self.a.load(r, Self::slot(index)),
            Loc::Imm(bits) => self.mov_value(r, bits),
            Loc::Local(s) => self.a.load(r, Self::slot(s as usize)),
            // An object constant: its reference is in the code, a heap reference the GC
            // updates (the constants table keeps the object alive).
            Loc::Const(k) if self.cx.patchable => {
                self.a.movabs_heap_ref(r, self.cx.vm.constant(k as usize).0)
            }
            Loc::Const(k) => self.a.load(
                r,
                mem(Reg::R12, (region::CONSTANTS_OFFSET + 8 * k as usize) as i32),
            ),
            Loc::Reg(src) if src != r => self.a.mov_rr(r, src),
            Loc::Reg(_) => {}
        }
    }

    /// `r = bits`, using r15 for the tagged constants.
    pub fn mov_value(&mut self, r: Reg, bits: u64) {
        match bits.wrapping_sub(QNAN) {
            0 => self.a.mov_rr(r, Reg::R15),
            d @ 1..=4 => self.a.lea(r, mem(Reg::R15, d as i32)),
            _ => self.a.mov_ri(r, bits),
        }
    }

    /// Writes entry `i` to its slot (uses rax for immediates and copies).
    pub fn materialize(&mut self, i: usize) {
        match self.entries[i].loc {
            Loc::Stack => return,
            Loc::Reg(r) => {
                self.a.store(Self::slot(i), r);
                self.free_reg(r);
            }
            Loc::Imm(bits) if i32::try_from(bits as i64).is_ok() => {
                self.a.store_imm(Self::slot(i), bits as i64 as i32);
            }
            loc => {
                self.load_into(Reg::Rax, loc, i);
                self.a.store(Self::slot(i), Reg::Rax);
            }
        }
        self.entries[i].loc = Loc::Stack;
    }

    /// Writes every entry but the top `keep` to its slot.
    pub fn flush_below(&mut self, keep: usize) {
        for i in 0..self.entries.len().saturating_sub(keep) {
            self.materialize(i);
        }
    }

    pub fn flush_all(&mut self) {
        self.flush_below(0);
    }

    /// Slow-path code before a helper that may collect: every value below the top `keep` that
    /// is not in its slot is written there, so that the collector sees (and updates) every
    /// reference. The virtual stack does not change: on the fast path the values stay where
    /// they are.
    pub fn spill_below(&mut self, keep: usize) {
        for i in 0..self.entries.len().saturating_sub(keep) {
            match self.entries[i].loc {
                Loc::Stack => {}
                Loc::Reg(r) => self.a.store(Self::slot(i), r),
                Loc::Imm(bits) if i32::try_from(bits as i64).is_ok() => {
                    self.a.store_imm(Self::slot(i), bits as i64 as i32)
                }
                loc => {
                    self.load_into(Reg::Rax, loc, i);
                    self.a.store(Self::slot(i), Reg::Rax);
                }
            }
        }
    }

    /// After such a helper: registers take their values back from the slots (a collection
    /// may have moved what they referenced). Copies of slots and constants are read later
    /// anyway, from memory the collector updated.
    pub fn reload_below(&mut self, keep: usize) {
        for i in 0..self.entries.len().saturating_sub(keep) {
            if let Loc::Reg(r) = self.entries[i].loc {
                self.a.load(r, Self::slot(i));
            }
        }
    }

    /// The entry at `i` in a register (loading it if needed); the entry now names it.
    pub fn in_reg(&mut self, i: usize) -> Reg {
        if let Loc::Reg(r) = self.entries[i].loc {
            return r;
        }
        let r = self.alloc_reg();
        let loc = self.entries[i].loc;
        self.load_into(r, loc, i);
        self.entries[i].loc = Loc::Reg(r);
        r
    }

    /// The number bits of entry `i` if it is an immediate number.
    pub fn imm_number(&self, i: usize) -> Option<u64> {
        match self.entries[i].loc {
            Loc::Imm(bits) if Value(bits).is_number() => Some(bits),
            _ => None,
        }
    }

    // ---- common sequences ----

    /// Stores the frame's resume ip: what the stack trace and the interpreter read.
    pub fn set_ip(&mut self, ip: usize) -> Result<(), String> {
        let ip = i32::try_from(ip).map_err(|_| "bytecode index beyond 2^31".to_string())?;
        self.a.store_imm(Self::frame_field(frame::IP), ip);
        Ok(())
    }

    /// Tells helpers where the stack ends (`ctx::JIT_SP`).
    pub fn sync_sp(&mut self, depth: usize) {
        self.a.lea(Reg::Rax, Self::slot(depth));
        self.a.store(Self::ctx(ctx::JIT_SP), Reg::Rax);
    }

    /// Calls a runtime helper (arguments set), then reloads the heap base and unwinds if the
    /// helper raised an error.
    pub fn call_helper(&mut self, name: &str) {
        self.a.call_symbol(name);
        self.after_call();
    }

    /// After any call: the heap may have moved, and an error unwinds.
    pub fn after_call(&mut self) {
        self.a.load(Reg::R13, Self::ctx(ctx::HEAP_BASE));
        self.a.cmp_m8(Self::ctx(ctx::ERROR), 0);
        self.a.jcc(Cond::Ne, self.unwind);
    }

    /// `rdi = r12` (the first argument of every helper).
    pub fn arg_ctx(&mut self) {
        self.a.mov_rr(Reg::Rdi, Reg::R12);
    }

    /// A cold exit that raises runtime error `kind` (with operands `a`, `b`) at `ip`.
    pub fn error_exit(&mut self, kind: u32, a: u64, b: u64, ip: usize) -> Result<Label, String> {
        let label = self.a.new_label();
        let was = self.a.switch_to(Section::Cold);
        self.a.bind(label);
        self.set_ip(ip)?;
        self.raise(kind, a, b);
        self.a.switch_to(was);
        Ok(label)
    }

    /// Calls the error helper and unwinds (the frame ip is set).
    fn raise(&mut self, kind: u32, a: u64, b: u64) {
        self.a.mov_ri(Reg::Rcx, b);
        self.a.mov_ri(Reg::Rdx, a);
        self.a.mov_ri(Reg::Rsi, u64::from(kind));
        self.arg_ctx();
        self.a.call_symbol(rt::RT_ERROR);
        self.a.jmp(self.unwind);
    }

    /// Jumps to `fail` unless `r` holds a number (uses rax).
    pub fn check_number(&mut self, r: Reg, fail: Label) {
        self.a.mov_rr(Reg::Rax, r);
        self.a.alu_rr(Alu::And, Reg::Rax, Reg::R15);
        self.a.alu_rr(Alu::Cmp, Reg::Rax, Reg::R15);
        self.a.jcc(Cond::E, fail);
    }

    /// Jumps to `fail` unless `r` holds an object reference (uses rax).
    pub fn check_object(&mut self, r: Reg, fail: Label) {
        self.a.mov_rr(Reg::Rax, r);
        self.a.shr_ri(Reg::Rax, 50);
        self.a.alu_ri32(Alu::Cmp, Reg::Rax, 0x3fff);
        self.a.jcc(Cond::Ne, fail);
    }

    /// `r = (al != 0) ? true : false`.
    pub fn bool_from_al(&mut self, r: Reg) {
        self.a.movzx_r8(Reg::Rax, Reg::Rax);
        self.a.lea(r, mem_index(Reg::R15, Reg::Rax, 2, 1));
    }

    /// The prototype of the closure a value holds, if it is one (for call hints).
    pub fn closure_proto(&self, v: Value) -> Option<u32> {
        let heap = &self.cx.vm.heap.mem;
        heap.has_tag(v, Tag::Closure)
            .then(|| heap.load(v.as_obj(), closure::PROTO) as u32)
    }

    // ---- function entry and exit ----

    /// The entry: checks the arguments and the stack, pushes the frame record.
    fn prologue(&mut self) -> Result<(), String> {
        let arity = self.proto.arity as i32;
        let max_stack = self.proto.max_stack as i32;
        let code_start =
            i32::try_from(self.proto.code_start).map_err(|_| "code beyond 2^31".to_string())?;
        self.a.bind(self.start);
        self.a.push(Reg::Rbp);
        self.a.mov_rr(Reg::Rbp, Reg::Rsp);
        self.a.push(Reg::Rbx);
        self.a.push(Reg::R14);
        // Errors before the frame exists are reported in the caller's frame, as the
        // interpreter reports them.
        let arity_error = self.a.new_label();
        let overflow = self.a.new_label();
        self.a.alu_ri(Alu::Cmp, Reg::Rsi, arity);
        self.a.jcc(Cond::Ne, arity_error);
        self.a.load(Reg::Rax, Self::ctx(ctx::FRAME_COUNT));
        self.a.alu_ri(Alu::Cmp, Reg::Rax, FRAMES_MAX as i32);
        self.a.jcc(Cond::Ae, overflow);
        self.a.lea(Reg::Rcx, mem(Reg::Rdi, max_stack));
        self.a.alu_ri(Alu::Cmp, Reg::Rcx, STACK_SLOTS as i32);
        self.a.jcc(Cond::A, overflow);
        self.a.mov_rr(Reg::R14, Reg::Rax);
        self.a.shl_ri(Reg::R14, 5);
        self.a.lea(
            Reg::R14,
            mem_index(Reg::R12, Reg::R14, 1, region::FRAMES_OFFSET as i32),
        );
        self.a.store(Self::frame_field(frame::CLOSURE), Reg::Rdx);
        self.a.store_imm(Self::frame_field(frame::IP), code_start);
        self.a.store(Self::frame_field(frame::BASE), Reg::Rdi);
        self.a.load(Reg::Rcx, mem(Reg::Rbp, 8));
        self.a
            .store(Self::frame_field(frame::NATIVE_RETURN), Reg::Rcx);
        self.a.alu_ri(Alu::Add, Reg::Rax, 1);
        self.a.store(Self::ctx(ctx::FRAME_COUNT), Reg::Rax);
        self.a.lea(
            Reg::Rbx,
            mem_index(Reg::R12, Reg::Rdi, 8, region::STACK_OFFSET as i32),
        );

        let was = self.a.switch_to(Section::Cold);
        self.a.bind(arity_error);
        self.a.mov_rr(Reg::Rcx, Reg::Rsi);
        self.a.mov_ri(Reg::Rdx, arity as u64);
        self.a.mov_ri(Reg::Rsi, u64::from(rt::ERROR_ARITY));
        self.arg_ctx();
        self.a.call_symbol(rt::RT_ERROR);
        self.a.jmp(self.unwind);
        self.a.bind(overflow);
        self.raise(rt::ERROR_STACK_OVERFLOW, 0, 0);
        self.a.switch_to(was);
        self.reset(self.proto.arity + 1);
        Ok(())
    }

    /// Leaves with the error flag set (the caller sees it and unwinds too).
    fn unwind_exit(&mut self) {
        let was = self.a.switch_to(Section::Cold);
        self.a.bind(self.unwind);
        self.a.pop(Reg::R14);
        self.a.pop(Reg::Rbx);
        self.a.pop(Reg::Rbp);
        self.a.ret();
        self.a.switch_to(was);
    }

    /// Returns `rax` to the caller, popping the frame record.
    pub fn return_rax(&mut self) {
        self.a.dec_m(Self::ctx(ctx::FRAME_COUNT));
        self.a.pop(Reg::R14);
        self.a.pop(Reg::Rbx);
        self.a.pop(Reg::Rbp);
        self.a.ret();
    }

    /// An entry at the loop starting at `ip`, for a frame the interpreter is running: the
    /// frame record exists (it is the top one), its values are in their slots.
    fn osr_entry(&mut self, ip: usize) -> Label {
        let label = self.a.new_label();
        let was = self.a.switch_to(Section::Cold);
        self.a.bind(label);
        self.a.push(Reg::Rbp);
        self.a.mov_rr(Reg::Rbp, Reg::Rsp);
        self.a.push(Reg::Rbx);
        self.a.push(Reg::R14);
        self.a.load(Reg::Rax, Self::ctx(ctx::FRAME_COUNT));
        self.a.alu_ri(Alu::Sub, Reg::Rax, 1);
        self.a.shl_ri(Reg::Rax, 5);
        self.a.lea(
            Reg::R14,
            mem_index(Reg::R12, Reg::Rax, 1, region::FRAMES_OFFSET as i32),
        );
        self.a.load(Reg::Rax, Self::frame_field(frame::BASE));
        self.a.lea(
            Reg::Rbx,
            mem_index(Reg::R12, Reg::Rax, 8, region::STACK_OFFSET as i32),
        );
        self.a.load(Reg::Rcx, mem(Reg::Rbp, 8));
        self.a
            .store(Self::frame_field(frame::NATIVE_RETURN), Reg::Rcx);
        let target = self.labels[&ip];
        self.a.jmp(target);
        self.a.switch_to(was);
        label
    }

    // ---- the body ----

    fn body(&mut self, insns: &[Insn], analysis: &Analysis) -> Result<(), String> {
        let mut skip_until = 0;
        let mut reachable = true;
        for (index, insn) in insns.iter().enumerate() {
            if let Some(&label) = self.labels.get(&insn.ip) {
                if reachable {
                    self.flush_all();
                }
                self.a.bind(label);
                if let Some(depth) = analysis.depth[index] {
                    self.reset(depth);
                    reachable = true;
                }
            }
            if insn.ip < skip_until {
                continue;
            }
            let Some(depth) = analysis.depth[index] else {
                reachable = false;
                continue;
            };
            if !reachable {
                // Reached only through a label bound above.
                continue;
            }
            debug_assert_eq!(
                depth,
                self.depth(),
                "virtual stack out of step at {}",
                insn.ip
            );
            let next = self.instruction(insn, analysis)?;
            if let Some(resume) = next.skip_to {
                skip_until = resume;
            }
            reachable = !next.ends_block;
            if next.ends_block {
                self.entries.clear();
            }
        }
        Ok(())
    }
}

/// What an instruction's template says about what follows it.
#[derive(Default)]
pub(super) struct Next {
    /// Control does not fall through (jump, loop, return).
    pub ends_block: bool,
    /// The instructions before this absolute index were fused into this one.
    pub skip_to: Option<usize>,
}
