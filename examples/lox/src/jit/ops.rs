//! One template per opcode (see `compile.rs` for the registers and the virtual stack).
//!
//! Fast paths are inline in the hot section: number arithmetic and comparisons on NaN-boxed
//! values, locals, constants, globals by slot, upvalues, jumps, inline-cache hits of property
//! gets and sets and of method calls, and calls of closures (direct to the callee's code when
//! the call site's closure is the one seen at compile time and it is compiled, else through the
//! entry table, which holds the interpreter bridge for functions not compiled yet). What
//! allocates, searches or fails goes to a runtime helper from the cold section.

use super::compile::{jump_target, Analysis, Gen, Insn, Loc, Next};
use super::runtime as rt;
use super::x64::{mem, mem_index, Alu, Cond, Label, Reg, Section, Sse, Xmm};
use crate::bytecode::{op, read_u32};
use crate::heap::layout::upvalue;
use crate::value::{Value, SIGN};
use crate::vm::region::{self, ctx};
use crate::vm::stack::frame;

pub(super) type R = Result<Next, String>;

pub(super) fn next() -> R {
    Ok(Next::default())
}

impl Gen<'_> {
    fn u8_operand(&self, insn: &Insn, at: usize) -> usize {
        self.program.code[insn.ip + at] as usize
    }

    fn u32_operand(&self, insn: &Insn, at: usize) -> usize {
        read_u32(&self.program.code, insn.ip + at) as usize
    }

    pub(super) fn instruction(&mut self, insn: &Insn, analysis: &Analysis) -> R {
        let end = insn.end();
        match insn.op {
            op::CONSTANT => {
                let k = self.u32_operand(insn, 1);
                let value = self.cx.vm.constant(k);
                if value.is_obj() {
                    self.push(Loc::Const(k as u32), None);
                } else {
                    self.push(Loc::Imm(value.0), None);
                }
                next()
            }
            op::NIL => self.push_imm(Value::NIL),
            op::TRUE => self.push_imm(Value::TRUE),
            op::FALSE => self.push_imm(Value::FALSE),
            op::POP => {
                self.pop();
                next()
            }
            op::GET_LOCAL => self.get_local(self.u8_operand(insn, 1)),
            op::SET_LOCAL => self.set_local(self.u8_operand(insn, 1)),
            op::GET_GLOBAL => self.get_global(self.u32_operand(insn, 1), end),
            op::DEFINE_GLOBAL => {
                let g = self.u32_operand(insn, 1);
                let r = self.in_reg(self.top());
                self.a.store(Self::global(g), r);
                self.pop();
                next()
            }
            op::SET_GLOBAL => self.set_global(self.u32_operand(insn, 1), end),
            op::GET_UPVALUE => self.upvalue(self.u8_operand(insn, 1), false),
            op::SET_UPVALUE => self.upvalue(self.u8_operand(insn, 1), true),
            op::GET_PROPERTY => self.get_property(self.u32_operand(insn, 1), end),
            op::SET_PROPERTY => self.set_property(self.u32_operand(insn, 1), end),
            op::GET_SUPER => {
                let ic = self.u32_operand(insn, 1);
                self.helper_with_stack(end, |g| g.a.mov_ri(Reg::Rsi, ic as u64), rt::RT_GET_SUPER)?;
                self.entries.pop();
                self.entries.pop();
                self.push(Loc::Stack, None);
                next()
            }
            op::EQUAL => self.equal(insn, analysis),
            op::GREATER | op::LESS => self.compare(insn, analysis),
            op::ADD => self.arithmetic(Sse::Add, end),
            op::SUBTRACT => self.arithmetic(Sse::Sub, end),
            op::MULTIPLY => self.arithmetic(Sse::Mul, end),
            op::DIVIDE => self.arithmetic(Sse::Div, end),
            op::NOT => self.not(insn, analysis),
            op::NEGATE => self.negate(end),
            op::PRINT => {
                self.flush_all();
                self.arg_ctx();
                self.a.load(Reg::Rsi, Self::slot(self.top()));
                self.call_helper(rt::RT_PRINT);
                self.pop();
                next()
            }
            op::JUMP | op::LOOP => {
                self.flush_all();
                let target = self.labels[&jump_target(self.program, insn)];
                self.a.jmp(target);
                Ok(Next {
                    ends_block: true,
                    skip_to: None,
                })
            }
            op::JUMP_IF_FALSE => self.jump_if_false(insn, analysis),
            op::CALL => {
                let argc = self.u8_operand(insn, 1);
                self.call(argc, end)
            }
            op::INVOKE => {
                let (ic, argc) = (self.u32_operand(insn, 1), self.u8_operand(insn, 5));
                self.invoke(ic, argc, end)
            }
            op::SUPER_INVOKE => {
                let (ic, argc) = (self.u32_operand(insn, 1), self.u8_operand(insn, 5));
                self.super_invoke(ic, argc, end)
            }
            op::CLOSURE => {
                let proto = self.u32_operand(insn, 1);
                let pairs = insn.ip + 5;
                self.helper_with_stack(
                    end,
                    |g| {
                        g.a.mov_ri(Reg::Rsi, proto as u64);
                        g.a.mov_ri(Reg::Rdx, pairs as u64);
                    },
                    rt::RT_CLOSURE,
                )?;
                self.push(Loc::Stack, None);
                next()
            }
            op::CLOSE_UPVALUE => {
                // Closing reads the slot and writes upvalues: no collection, no Lox code, so
                // only the top value must be in its slot.
                self.materialize(self.top());
                let none_open = self.a.new_label();
                self.a
                    .alu_rm(Alu::Cmp, Reg::R15, Self::ctx(ctx::OPEN_UPVALUES));
                self.a.jcc(Cond::E, none_open);
                self.a.load(Reg::R11, Self::frame_field(frame::BASE));
                self.a.alu_ri(Alu::Add, Reg::R11, self.top() as i32);
                self.close_upvalues(Reg::R11);
                self.a.bind(none_open);
                self.pop();
                next()
            }
            op::RETURN => self.return_(),
            op::CLASS => {
                let name = self.u32_operand(insn, 1);
                self.helper_with_stack(end, |g| g.a.mov_ri(Reg::Rsi, name as u64), rt::RT_CLASS)?;
                self.push(Loc::Stack, None);
                next()
            }
            op::INHERIT => {
                self.helper_with_stack(end, |_| {}, rt::RT_INHERIT)?;
                self.entries.pop();
                next()
            }
            op::METHOD => {
                let name = self.u32_operand(insn, 1);
                self.helper_with_stack(end, |g| g.a.mov_ri(Reg::Rsi, name as u64), rt::RT_METHOD)?;
                self.entries.pop();
                next()
            }
            other => Err(format!("opcode {other} has no template")),
        }
    }

    fn push_imm(&mut self, value: Value) -> R {
        self.push(Loc::Imm(value.0), None);
        next()
    }

    /// Everything to its slot, the frame's ip and the stack's end published, then a helper
    /// (ctx in rdi, the rest from `args`) that works on the stack as the interpreter would.
    fn helper_with_stack(
        &mut self,
        ip: usize,
        args: impl FnOnce(&mut Self),
        helper: &str,
    ) -> Result<(), String> {
        self.flush_all();
        self.sync_sp(self.depth());
        self.set_ip(ip)?;
        args(self);
        self.arg_ctx();
        self.call_helper(helper);
        Ok(())
    }

    // ---- variables ----

    fn get_local(&mut self, s: usize) -> R {
        let entry = self.entries[s];
        let loc = match entry.loc {
            Loc::Stack => Loc::Local(s as u32),
            Loc::Reg(_) => {
                self.materialize(s);
                Loc::Local(s as u32)
            }
            copy => copy,
        };
        self.push(loc, entry.hint);
        next()
    }

    fn set_local(&mut self, s: usize) -> R {
        let top = self.top();
        // Values that are lazy copies of slot `s` must be read before it changes.
        for j in 0..top {
            if self.entries[j].loc == Loc::Local(s as u32) {
                self.materialize(j);
            }
        }
        let r = self.in_reg(top);
        self.a.store(Self::slot(s), r);
        if let Loc::Reg(old) = self.entries[s].loc {
            self.free_reg(old);
        }
        self.entries[s].loc = Loc::Stack;
        self.entries[s].hint = self.entries[top].hint;
        next()
    }

    fn get_global(&mut self, g: usize, ip: usize) -> R {
        let r = self.alloc_reg();
        self.a.load(r, Self::global(g));
        let undefined = self.error_exit(rt::ERROR_UNDEFINED_VARIABLE, g as u64, 0, ip)?;
        self.a.lea(Reg::Rax, mem(Reg::R15, 4));
        self.a.alu_rr(Alu::Cmp, r, Reg::Rax);
        self.a.jcc(Cond::E, undefined);
        let hint = self
            .closure_proto(self.cx.vm.region.global(g))
            .or_else(|| (self.cx.declared)(g));
        self.push(Loc::Reg(r), hint);
        next()
    }

    fn set_global(&mut self, g: usize, ip: usize) -> R {
        let r = self.in_reg(self.top());
        let undefined = self.error_exit(rt::ERROR_UNDEFINED_VARIABLE, g as u64, 0, ip)?;
        self.a.lea(Reg::Rax, mem(Reg::R15, 4));
        self.a.alu_rm(Alu::Cmp, Reg::Rax, Self::global(g));
        self.a.jcc(Cond::E, undefined);
        self.a.store(Self::global(g), r);
        next()
    }

    /// Reads or writes upvalue `index` of the running closure: an open upvalue names a stack
    /// slot, a closed one holds the value.
    fn upvalue(&mut self, index: usize, set: bool) -> R {
        let r = if set {
            self.in_reg(self.top())
        } else {
            self.alloc_reg()
        };
        let closed = self.a.new_label();
        let done = self.a.new_label();
        self.a.load(Reg::Rax, Self::frame_field(frame::CLOSURE));
        self.a.mov_rr32(Reg::Rax, Reg::Rax);
        let field = 8 * (crate::heap::layout::closure::UPVALUES + index) as i32;
        self.a
            .load(Reg::Rax, mem_index(Reg::R13, Reg::Rax, 1, field));
        self.a.mov_rr32(Reg::Rax, Reg::Rax);
        self.a.alu_rr(Alu::Add, Reg::Rax, Reg::R13);
        self.a.load(Reg::Rcx, mem(Reg::Rax, 8));
        self.a.alu_rr(Alu::Cmp, Reg::Rcx, Reg::R15);
        self.a.jcc(Cond::E, closed);
        let open_slot = mem_index(Reg::R12, Reg::Rcx, 8, region::STACK_OFFSET as i32);
        let closed_value = mem(Reg::Rax, 16);
        if set {
            self.a.store(open_slot, r);
            self.a.jmp(done);
            self.a.bind(closed);
            self.a.store(closed_value, r);
        } else {
            self.a.load(r, open_slot);
            self.a.jmp(done);
            self.a.bind(closed);
            self.a.load(r, closed_value);
            self.push(Loc::Reg(r), None);
        }
        self.a.bind(done);
        next()
    }

    // ---- operators ----

    /// Both operands of a binary operator in registers, and a jump to `fail` unless both are
    /// numbers (immediate numbers need no test).
    fn number_operands(&mut self, fail: Label) -> (Reg, Reg) {
        let top = self.top();
        let a_known = self.imm_number(top - 1).is_some();
        let b_known = self.imm_number(top).is_some();
        let a = self.in_reg(top - 1);
        let b = self.in_reg(top);
        if !a_known {
            self.check_number(a, fail);
        }
        if !b_known {
            self.check_number(b, fail);
        }
        (a, b)
    }

    fn arithmetic(&mut self, operation: Sse, ip: usize) -> R {
        // `+` has a slow path that allocates (strings); the others only fail.
        let add = operation == Sse::Add;
        let top = self.top();
        let slow = if add {
            self.a.new_label()
        } else {
            self.error_exit(rt::ERROR_OPERANDS_NUMBERS, 0, 0, ip)?
        };
        let (a, b) = self.number_operands(slow);
        self.a.movq_xr(Xmm(0), a);
        self.a.movq_xr(Xmm(1), b);
        self.a.sse_rr(operation, Xmm(0), Xmm(1));
        self.a.movq_rx(a, Xmm(0));
        if add {
            let done = self.a.new_label();
            self.a.bind(done);
            let was = self.a.switch_to(Section::Cold);
            self.a.bind(slow);
            self.spill_below(2);
            self.a.store(Self::slot(top - 1), a);
            self.a.store(Self::slot(top), b);
            self.sync_sp(top + 1);
            self.set_ip(ip)?;
            self.arg_ctx();
            self.call_helper(rt::RT_ADD);
            self.reload_below(2);
            self.a.load(a, Self::slot(top - 1));
            self.a.jmp(done);
            self.a.switch_to(was);
        }
        self.pop();
        self.entries[top - 1] = super::compile::Entry {
            loc: Loc::Reg(a),
            hint: None,
        };
        next()
    }

    /// The instruction after `insn`, if it is a conditional jump that can branch on this
    /// result without keeping it: returns where to jump when the condition is false, and
    /// where to go on from.
    fn fused_branch(&self, insn: &Insn, analysis: &Analysis) -> Option<(Label, usize)> {
        let jump_ip = insn.end();
        if !analysis.fusable.contains(&jump_ip) || self.labels.contains_key(&jump_ip) {
            return None;
        }
        let jump = Insn {
            ip: jump_ip,
            op: op::JUMP_IF_FALSE,
            len: 5,
        };
        let false_target = self.labels[&(jump_target(self.program, &jump) + 1)];
        // Skip the jump and the POP after it.
        Some((false_target, jump.end() + 1))
    }

    fn compare(&mut self, insn: &Insn, analysis: &Analysis) -> R {
        let fused = self.fused_branch(insn, analysis);
        if fused.is_some() {
            self.flush_below(2);
        }
        let fail = self.error_exit(rt::ERROR_OPERANDS_NUMBERS, 0, 0, insn.end())?;
        let (a, b) = self.number_operands(fail);
        self.a.movq_xr(Xmm(0), a);
        self.a.movq_xr(Xmm(1), b);
        // a > b, or b > a for `<`: "above" is false when unordered (NaN), as it must be.
        if insn.op == op::GREATER {
            self.a.ucomisd(Xmm(0), Xmm(1));
        } else {
            self.a.ucomisd(Xmm(1), Xmm(0));
        }
        self.finish_condition(Cond::A, 2, fused)
    }

    /// After a test that set `cond` for "true": either branch (fused with the jump that
    /// follows) or replace the `operands` by the boolean.
    fn finish_condition(
        &mut self,
        cond: Cond,
        operands: usize,
        fused: Option<(Label, usize)>,
    ) -> R {
        for _ in 0..operands {
            self.pop();
        }
        match fused {
            Some((false_target, resume)) => {
                let negated = match cond {
                    Cond::A => Cond::Be,
                    Cond::E => Cond::Ne,
                    Cond::Ne => Cond::E,
                    other => return Err(format!("no negation for {other:?}")),
                };
                self.a.jcc(negated, false_target);
                Ok(Next {
                    ends_block: false,
                    skip_to: Some(resume),
                })
            }
            None => {
                self.a.setcc(cond, Reg::Rax);
                // The operands' registers were just freed: no spill (which could use rax).
                let r = self.alloc_reg();
                self.bool_from_al(r);
                self.push(Loc::Reg(r), None);
                next()
            }
        }
    }

    fn equal(&mut self, insn: &Insn, analysis: &Analysis) -> R {
        let fused = self.fused_branch(insn, analysis);
        if fused.is_some() {
            self.flush_below(2);
        }
        let top = self.top();
        let object_side = |g: &Self, i: usize| match g.entries[i].loc {
            Loc::Const(_) => true,
            Loc::Imm(bits) => !Value(bits).is_number(),
            _ => false,
        };
        let bits_only = object_side(self, top) || object_side(self, top - 1);
        let a = self.in_reg(top - 1);
        let b = self.in_reg(top);
        if bits_only {
            // One side is not a number: equal exactly when the bits are.
            self.a.alu_rr(Alu::Cmp, a, b);
            return self.finish_condition(Cond::E, 2, fused);
        }
        let bits = self.a.new_label();
        let decided = self.a.new_label();
        self.check_number(a, bits);
        self.check_number(b, bits);
        self.a.movq_xr(Xmm(0), a);
        self.a.movq_xr(Xmm(1), b);
        self.a.ucomisd(Xmm(0), Xmm(1));
        self.a.setcc(Cond::E, Reg::Rax);
        self.a.setcc(Cond::Np, Reg::Rcx);
        self.a.and_r8(Reg::Rax, Reg::Rcx);
        self.a.jmp(decided);
        self.a.bind(bits);
        self.a.alu_rr(Alu::Cmp, a, b);
        self.a.setcc(Cond::E, Reg::Rax);
        self.a.bind(decided);
        self.a.movzx_r8(Reg::Rax, Reg::Rax);
        self.a.test_rr(Reg::Rax, Reg::Rax);
        self.finish_condition(Cond::Ne, 2, fused)
    }

    /// ZF set when the value in `r` is falsey (nil or false); rax and rcx clobbered.
    fn test_falsey(&mut self, r: Reg) {
        self.a.mov_rr(Reg::Rax, r);
        self.a.alu_ri(Alu::Or, Reg::Rax, 1);
        self.a.lea(Reg::Rcx, mem(Reg::R15, 1));
        self.a.alu_rr(Alu::Cmp, Reg::Rax, Reg::Rcx);
    }

    fn not(&mut self, insn: &Insn, analysis: &Analysis) -> R {
        let fused = self.fused_branch(insn, analysis);
        if fused.is_some() {
            self.flush_below(1);
        }
        let r = self.in_reg(self.top());
        // `!x` is true when x is falsey (ZF set).
        self.test_falsey(r);
        self.finish_condition(Cond::E, 1, fused)
    }

    fn negate(&mut self, ip: usize) -> R {
        let top = self.top();
        if let Some(bits) = self.imm_number(top) {
            self.entries[top].loc = Loc::Imm(bits ^ SIGN);
            return next();
        }
        let fail = self.error_exit(rt::ERROR_OPERAND_NUMBER, 0, 0, ip)?;
        let r = self.in_reg(top);
        self.check_number(r, fail);
        self.a.btc_ri(r, 63);
        self.entries[top].hint = None;
        next()
    }

    // ---- control flow ----

    fn jump_if_false(&mut self, insn: &Insn, analysis: &Analysis) -> R {
        let target = jump_target(self.program, insn);
        if analysis.fusable.contains(&insn.ip) {
            // Both ways start by popping the value: branch on it and drop it here.
            self.flush_below(1);
            let r = self.in_reg(self.top());
            self.test_falsey(r);
            self.pop();
            let false_target = self.labels[&(target + 1)];
            self.a.jcc(Cond::E, false_target);
            return Ok(Next {
                ends_block: false,
                skip_to: Some(insn.end() + 1),
            });
        }
        self.flush_all();
        let top = self.top();
        self.a.load(Reg::R11, Self::slot(top));
        self.test_falsey(Reg::R11);
        let label = self.labels[&target];
        self.a.jcc(Cond::E, label);
        next()
    }

    /// Closes the open upvalues of stack slots `last` (a register holding a slot index, not
    /// rax, rcx or rdx) and above, as `Vm::close_upvalues` does: each takes its slot's value,
    /// and leaves the list (which is ordered by slot, highest first).
    fn close_upvalues(&mut self, last: Reg) {
        let [next_one, done] = self.labels_n();
        let field = |word: usize| 8 * word as i32;
        self.a.bind(next_one);
        self.a.load(Reg::Rax, Self::ctx(ctx::OPEN_UPVALUES));
        self.a.alu_rr(Alu::Cmp, Reg::Rax, Reg::R15);
        self.a.jcc(Cond::E, done);
        self.a.mov_rr32(Reg::Rax, Reg::Rax);
        self.a.alu_rr(Alu::Add, Reg::Rax, Reg::R13);
        self.a.load(Reg::Rcx, mem(Reg::Rax, field(upvalue::SLOT)));
        self.a.alu_rr(Alu::Cmp, Reg::Rcx, last);
        self.a.jcc(Cond::B, done);
        self.a.load(
            Reg::Rdx,
            mem_index(Reg::R12, Reg::Rcx, 8, region::STACK_OFFSET as i32),
        );
        self.a
            .store(mem(Reg::Rax, field(upvalue::CLOSED)), Reg::Rdx);
        self.a.store(mem(Reg::Rax, field(upvalue::SLOT)), Reg::R15);
        self.a.load(Reg::Rdx, mem(Reg::Rax, field(upvalue::NEXT)));
        self.a.store(Self::ctx(ctx::OPEN_UPVALUES), Reg::Rdx);
        self.a.store(mem(Reg::Rax, field(upvalue::NEXT)), Reg::R15);
        self.a.jmp(next_one);
        self.a.bind(done);
    }

    fn return_(&mut self) -> R {
        self.flush_below(1);
        let top = self.top();
        let loc = self.entries[top].loc;
        self.load_into(Reg::Rax, loc, top);
        let close = self.a.new_label();
        let leave = self.a.new_label();
        self.a
            .alu_rm(Alu::Cmp, Reg::R15, Self::ctx(ctx::OPEN_UPVALUES));
        self.a.jcc(Cond::Ne, close);
        self.a.bind(leave);
        self.return_rax();

        let was = self.a.switch_to(Section::Cold);
        self.a.bind(close);
        self.a.store(Self::slot(top), Reg::Rax);
        self.a.load(Reg::Rsi, Self::frame_field(frame::BASE));
        self.close_upvalues(Reg::Rsi);
        self.a.load(Reg::Rax, Self::slot(top));
        self.a.jmp(leave);
        self.a.switch_to(was);
        Ok(Next {
            ends_block: true,
            skip_to: None,
        })
    }
}
