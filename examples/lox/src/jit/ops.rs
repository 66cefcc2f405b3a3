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
use super::x64::{mem, mem_index, Alu, Cond, Label, Mem, Reg, Section, Sse, Xmm};
use crate::bytecode::{op, read_u32, IcKind};
use crate::heap::layout::{self, array, instance, Tag};
use crate::heap::memory;
use crate::value::{Value, OBJ_TAG, SIGN};
use crate::vm::region::{self, ctx, ic};
use crate::vm::stack::frame;
use crate::vm::Site;

type R = Result<Next, String>;

fn next() -> R {
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
                self.flush_all();
                let none_open = self.a.new_label();
                self.a
                    .alu_rm(Alu::Cmp, Reg::R15, Self::ctx(ctx::OPEN_UPVALUES));
                self.a.jcc(Cond::E, none_open);
                self.arg_ctx();
                self.a.load(Reg::Rsi, Self::frame_field(frame::BASE));
                self.a.alu_ri(Alu::Add, Reg::Rsi, self.top() as i32);
                self.call_helper(rt::RT_CLOSE_UPVALUES);
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
        let hint = self.closure_proto(self.cx.vm.region.global(g));
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

    // ---- properties ----

    /// rax = address of the instance in `receiver`, rcx = its shape (word 1); a jump to `miss`
    /// unless `receiver` is an object.
    fn load_shape(&mut self, receiver: Reg, miss: Label) {
        self.check_object(receiver, miss);
        self.a.mov_rr32(Reg::Rax, receiver);
        self.a.alu_rr(Alu::Add, Reg::Rax, Reg::R13);
        self.a
            .load(Reg::Rcx, mem(Reg::Rax, 8 * instance::SHAPE as i32));
    }

    /// Word `word` of the cache entry r11 points at.
    fn entry_word(word: usize) -> Mem {
        mem(Reg::R11, 8 * word as i32)
    }

    /// Cold code at `start`: looks for the key in rcx among entries 1… of cache `ic_index`
    /// (entry 0 was tested inline); on a match r11 points at the entry and control goes to
    /// `found`, else to `miss`. rdx is clobbered.
    fn scan_entries(&mut self, ic_index: usize, start: Label, found: Label, miss: Label) {
        let again = self.a.new_label();
        self.a.bind(start);
        self.a
            .lea(Reg::R11, Self::ic(ic_index, ic::ENTRY_WORDS + ic::KEY));
        self.a.bind(again);
        self.a.alu_rm(Alu::Cmp, Reg::Rcx, mem(Reg::R11, 0));
        self.a.jcc(Cond::E, found);
        self.a
            .alu_ri(Alu::Add, Reg::R11, 8 * ic::ENTRY_WORDS as i32);
        self.a.lea(Reg::Rdx, Self::ic(ic_index, ic::WORDS));
        self.a.alu_rr(Alu::Cmp, Reg::R11, Reg::Rdx);
        self.a.jcc(Cond::B, again);
        self.a.jmp(miss);
    }

    /// Cold code at `start`: r11 = entry 0 of cache `ic_index`, then `found` (entry 0 is for
    /// the shape, with a kind the inline path does not handle).
    fn entry_zero(&mut self, ic_index: usize, start: Label, found: Label) {
        self.a.bind(start);
        self.a.lea(Reg::R11, Self::ic(ic_index, ic::KEY));
        self.a.jmp(found);
    }

    /// Compares the kind of the entry r11 points at with `kind`.
    fn cmp_entry_kind(&mut self, kind: IcKind) {
        self.a
            .alu_mi(Alu::Cmp, Self::entry_word(ic::KIND), kind.to_raw() as i32);
    }

    /// rax = address of the overflow array of the instance at rax.
    fn overflow_array(&mut self) {
        self.a
            .load(Reg::Rax, mem(Reg::Rax, 8 * instance::OVERFLOW as i32));
        self.a.mov_rr32(Reg::Rax, Reg::Rax);
        self.a.alu_rr(Alu::Add, Reg::Rax, Reg::R13);
    }

    fn count_hit(&mut self, site: Site) {
        self.a.inc_m(Self::ctx(ctx::JIT_IC_HITS + 8 * site as i32));
    }

    /// Entry 0 tested inline for `kind`: jumps to `scan` when the key differs, to `other` when
    /// the key matches with another kind.
    fn test_entry_zero(&mut self, ic_index: usize, kind: IcKind, scan: Label, other: Label) {
        self.a
            .alu_rm(Alu::Cmp, Reg::Rcx, Self::ic(ic_index, ic::KEY));
        self.a.jcc(Cond::Ne, scan);
        self.a
            .alu_mi(Alu::Cmp, Self::ic(ic_index, ic::KIND), kind.to_raw() as i32);
        self.a.jcc(Cond::Ne, other);
    }

    fn get_property(&mut self, ic_index: usize, ip: usize) -> R {
        let top = self.top();
        let r = self.in_reg(top);
        let [slow, scan, other, found, overflow, hit, done] = self.labels_n();
        self.load_shape(r, slow);
        self.test_entry_zero(ic_index, IcKind::InlineField, scan, other);
        self.a.load(Reg::Rdx, Self::ic(ic_index, ic::SLOT));
        self.a.load(r, mem_index(Reg::Rax, Reg::Rdx, 8, 0));
        self.a.bind(hit);
        self.count_hit(Site::GetProperty);
        self.a.bind(done);

        let was = self.a.switch_to(Section::Cold);
        self.entry_zero(ic_index, other, found);
        self.scan_entries(ic_index, scan, found, slow);
        self.a.bind(found);
        self.a.load(Reg::Rdx, Self::entry_word(ic::SLOT));
        self.cmp_entry_kind(IcKind::InlineField);
        self.a.jcc(Cond::Ne, overflow);
        self.a.load(r, mem_index(Reg::Rax, Reg::Rdx, 8, 0));
        self.a.jmp(hit);
        self.a.bind(overflow);
        self.cmp_entry_kind(IcKind::OverflowField);
        self.a.jcc(Cond::Ne, slow);
        self.overflow_array();
        self.a.load(
            r,
            mem_index(Reg::Rax, Reg::Rdx, 8, 8 * array::ELEMENTS as i32),
        );
        self.a.jmp(hit);
        // A method (bound by the helper, which allocates), or a miss.
        self.a.bind(slow);
        self.spill_below(1);
        self.a.store(Self::slot(top), r);
        self.sync_sp(top + 1);
        self.set_ip(ip)?;
        self.a.mov_ri(Reg::Rsi, ic_index as u64);
        self.arg_ctx();
        self.call_helper(rt::RT_GET_PROPERTY);
        self.reload_below(1);
        self.a.load(r, Self::slot(top));
        self.a.jmp(done);
        self.a.switch_to(was);
        self.entries[top].hint = None;
        next()
    }

    fn labels_n<const N: usize>(&mut self) -> [Label; N] {
        std::array::from_fn(|_| self.a.new_label())
    }

    fn set_property(&mut self, ic_index: usize, ip: usize) -> R {
        let top = self.top();
        let receiver = self.in_reg(top - 1);
        let value = self.in_reg(top);
        let [slow, scan, other, found, not_inline, not_overflow, hit, done] = self.labels_n();
        self.load_shape(receiver, slow);
        self.test_entry_zero(ic_index, IcKind::InlineField, scan, other);
        self.a.load(Reg::Rdx, Self::ic(ic_index, ic::SLOT));
        self.a.store(mem_index(Reg::Rax, Reg::Rdx, 8, 0), value);
        self.a.bind(hit);
        self.count_hit(Site::SetProperty);
        self.a.bind(done);

        let was = self.a.switch_to(Section::Cold);
        self.entry_zero(ic_index, other, found);
        self.scan_entries(ic_index, scan, found, slow);
        self.a.bind(found);
        self.a.load(Reg::Rdx, Self::entry_word(ic::SLOT));
        self.cmp_entry_kind(IcKind::InlineField);
        self.a.jcc(Cond::Ne, not_inline);
        self.a.store(mem_index(Reg::Rax, Reg::Rdx, 8, 0), value);
        self.a.jmp(hit);
        self.a.bind(not_inline);
        self.cmp_entry_kind(IcKind::OverflowField);
        self.a.jcc(Cond::Ne, not_overflow);
        self.overflow_array();
        self.a.store(
            mem_index(Reg::Rax, Reg::Rdx, 8, 8 * array::ELEMENTS as i32),
            value,
        );
        self.a.jmp(hit);
        // A field added to the instance: the store, then the new shape.
        self.a.bind(not_overflow);
        self.cmp_entry_kind(IcKind::AddInlineField);
        self.a.jcc(Cond::Ne, slow);
        self.a.store(mem_index(Reg::Rax, Reg::Rdx, 8, 0), value);
        self.a.load(Reg::Rdx, Self::entry_word(ic::TARGET));
        self.a
            .store(mem(Reg::Rax, 8 * instance::SHAPE as i32), Reg::Rdx);
        self.a.jmp(hit);
        self.a.bind(slow);
        self.spill_below(2);
        self.a.store(Self::slot(top - 1), receiver);
        self.a.store(Self::slot(top), value);
        self.sync_sp(top + 1);
        self.set_ip(ip)?;
        self.a.mov_ri(Reg::Rsi, ic_index as u64);
        self.arg_ctx();
        self.call_helper(rt::RT_SET_PROPERTY);
        self.reload_below(2);
        self.a.load(value, Self::slot(top - 1));
        self.a.jmp(done);
        self.a.switch_to(was);

        // [receiver, value] → [value]
        self.entries.pop();
        self.pop();
        self.push(Loc::Reg(value), None);
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
        let _ = (a, b);
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
        self.arg_ctx();
        self.a.load(Reg::Rsi, Self::frame_field(frame::BASE));
        self.call_helper(rt::RT_CLOSE_UPVALUES);
        self.a.load(Reg::Rax, Self::slot(top));
        self.a.jmp(leave);
        self.a.switch_to(was);
        Ok(Next {
            ends_block: true,
            skip_to: None,
        })
    }

    // ---- calls ----

    /// Calls the closure in rdx (with rax free) whose slot 0 is stack slot `k` and that takes
    /// `argc` arguments; the result goes to slot `k`. `hint` is the prototype it is expected
    /// to be: then a guarded direct call, else (and on a guard miss) through the entry table.
    /// Binds `enter` at the start, and returns after storing the result.
    fn call_closure(&mut self, enter: Label, k: usize, argc: usize, hint: Option<u32>) {
        self.a.bind(enter);
        self.a.mov_rr32(Reg::Rax, Reg::Rdx);
        self.a.load(Reg::Rax, mem_index(Reg::R13, Reg::Rax, 1, 8));
        let after = self.a.new_label();
        let direct = hint.and_then(|p| self.direct_target(p).map(|t| (p, t)));
        let set_args = |g: &mut Self| {
            g.a.load(Reg::Rdi, Self::frame_field(frame::BASE));
            g.a.alu_ri(Alu::Add, Reg::Rdi, k as i32);
            g.a.mov_ri(Reg::Rsi, argc as u64);
        };
        if let Some((proto, target)) = direct {
            let generic = self.a.new_label();
            self.a.alu_ri(Alu::Cmp, Reg::Rax, proto as i32);
            self.a.jcc(Cond::Ne, generic);
            set_args(self);
            match target {
                DirectTarget::Itself => self.a.call_label(self.start),
                DirectTarget::Symbol(name) => self.a.call_symbol(&name),
            }
            self.a.jmp(after);
            self.a.bind(generic);
        }
        set_args(self);
        self.a.call_m(mem_index(
            Reg::R12,
            Reg::Rax,
            8,
            region::ENTRIES_OFFSET as i32,
        ));
        self.a.bind(after);
        self.after_call();
        self.a.store(Self::slot(k), Reg::Rax);
    }

    /// Where a direct call to prototype `proto` goes, if it is compiled (or is this function).
    fn direct_target(&self, proto: u32) -> Option<DirectTarget> {
        if proto as usize == self.proto_index {
            return Some(DirectTarget::Itself);
        }
        (self.cx.symbol_of)(proto as usize).map(DirectTarget::Symbol)
    }

    /// The cold half of a call whose fast guard failed: a helper decides (and reports errors);
    /// it returns the closure to enter, or 0 when the call is done (the result in slot `k`).
    fn call_slow_path(
        &mut self,
        slow: Label,
        enter: Label,
        done: Label,
        args: impl FnOnce(&mut Self),
        helper: &str,
    ) {
        let was = self.a.switch_to(Section::Cold);
        self.a.bind(slow);
        self.sync_sp(self.depth());
        args(self);
        self.arg_ctx();
        self.call_helper(helper);
        self.a.test_rr(Reg::Rax, Reg::Rax);
        self.a.jcc(Cond::E, done);
        self.a.mov_rr(Reg::Rdx, Reg::Rax);
        self.a.jmp(enter);
        self.a.switch_to(was);
    }

    fn finish_call(&mut self, k: usize) -> R {
        self.entries.truncate(k);
        self.push(Loc::Stack, None);
        next()
    }

    fn call(&mut self, argc: usize, ip: usize) -> R {
        self.flush_all();
        let k = self.depth() - 1 - argc;
        let hint = self.entries[k].hint;
        self.set_ip(ip)?;
        let [slow, enter, done, not_closure] = self.labels_n();
        self.a.load(Reg::Rdx, Self::slot(k));
        self.check_object(Reg::Rdx, slow);
        self.a.mov_rr32(Reg::Rax, Reg::Rdx);
        self.a
            .cmp_m8(mem_index(Reg::R13, Reg::Rax, 1, 0), Tag::Closure as u8);
        self.a.jcc(Cond::Ne, not_closure);
        self.call_closure(enter, k, argc, hint);
        self.a.bind(done);

        let was = self.a.switch_to(Section::Cold);
        self.a.bind(not_closure);
        self.a
            .cmp_m8(mem_index(Reg::R13, Reg::Rax, 1, 0), Tag::Class as u8);
        self.a.jcc(Cond::Ne, slow);
        self.instantiate(k, argc, ip, [enter, done, slow])?;
        self.a.switch_to(was);
        self.call_slow_path(
            slow,
            enter,
            done,
            |g| g.a.mov_ri(Reg::Rsi, argc as u64),
            rt::RT_CALL_VALUE,
        );
        self.finish_call(k)
    }

    /// Cold code: calling the class whose offset is in rax allocates the instance inline (a
    /// bump of the space's `top`, to `slow` when it reaches the limit) in place of the class
    /// in slot `k`, then calls `init` (through `enter`, with rdx = the closure) or, without
    /// one, is done.
    fn instantiate(
        &mut self,
        k: usize,
        argc: usize,
        ip: usize,
        [enter, done, slow]: [Label; 3],
    ) -> Result<(), String> {
        let fill = self.a.new_label();
        let field = |word: usize| 8 * word as i32;
        // r11 = the class; rcx = its root shape; rax = the shape's inline capacity.
        self.a.lea(Reg::R11, mem_index(Reg::R13, Reg::Rax, 1, 0));
        self.a
            .load(Reg::Rcx, mem(Reg::R11, field(layout::class::ROOT_SHAPE)));
        self.a.mov_rr32(Reg::Rax, Reg::Rcx);
        self.a.load(
            Reg::Rax,
            mem_index(Reg::R13, Reg::Rax, 1, field(layout::shape::COUNTS)),
        );
        self.a.shr_ri(Reg::Rax, 32);
        // rsi = words; rdi = top; r8 = the new top.
        self.a.lea(Reg::Rsi, mem(Reg::Rax, instance::FIELDS as i32));
        self.a
            .load(Reg::Rdi, mem(Reg::R13, field(memory::TOP_WORD)));
        self.a.lea(Reg::R8, mem_index(Reg::Rdi, Reg::Rsi, 1, 0));
        self.a
            .alu_rm(Alu::Cmp, Reg::R8, mem(Reg::R13, field(memory::LIMIT_WORD)));
        self.a.jcc(Cond::A, slow);
        self.a
            .store(mem(Reg::R13, field(memory::TOP_WORD)), Reg::R8);
        // Header, shape, then nil in the overflow word and every inline field.
        self.a.mov_rr(Reg::R9, Reg::Rsi);
        self.a.shl_ri(Reg::R9, 8);
        self.a.alu_ri(Alu::Or, Reg::R9, Tag::Instance as i32);
        self.a.lea(Reg::R10, mem_index(Reg::R13, Reg::Rdi, 8, 0));
        self.a.store(mem(Reg::R10, 0), Reg::R9);
        self.a
            .store(mem(Reg::R10, field(instance::SHAPE)), Reg::Rcx);
        self.a.alu_ri(Alu::Add, Reg::R10, field(instance::OVERFLOW));
        self.a.alu_ri(Alu::Add, Reg::Rax, 1);
        self.a.bind(fill);
        self.a.store(mem(Reg::R10, 0), Reg::R15);
        self.a.alu_ri(Alu::Add, Reg::R10, 8);
        self.a.alu_ri(Alu::Sub, Reg::Rax, 1);
        self.a.jcc(Cond::Ne, fill);
        self.a.shl_ri(Reg::Rsi, 3);
        self.a
            .alu_mr(Alu::Add, Self::ctx(ctx::JIT_ALLOCATED), Reg::Rsi);
        // The instance replaces the class in slot k.
        self.a.shl_ri(Reg::Rdi, 3);
        self.a.mov_ri(Reg::Rax, OBJ_TAG);
        self.a.alu_rr(Alu::Or, Reg::Rdi, Reg::Rax);
        self.a.store(Self::slot(k), Reg::Rdi);
        self.a
            .load(Reg::Rdx, mem(Reg::R11, field(layout::class::INITIALIZER)));
        self.a.alu_rr(Alu::Cmp, Reg::Rdx, Reg::R15);
        self.a.jcc(Cond::Ne, enter);
        if argc == 0 {
            self.a.jmp(done);
        } else {
            let arity = self.error_exit(rt::ERROR_ARITY, 0, argc as u64, ip)?;
            self.a.jmp(arity);
        }
        Ok(())
    }

    fn method_hint(&self, ic_index: usize) -> Option<u32> {
        let region = &self.cx.vm.region;
        (region.ic_kind(ic_index) == IcKind::Method)
            .then(|| self.closure_proto(Value(region.ic_target(ic_index))))
            .flatten()
    }

    /// The method of cache `ic_index` for the key in rcx into rdx (entry 0 inline, the others
    /// scanned in cold code), counted as a hit; a jump to `slow` on a miss.
    fn cached_method(&mut self, ic_index: usize, site: Site, slow: Label) {
        let [scan, found, hit] = self.labels_n();
        self.test_entry_zero(ic_index, IcKind::Method, scan, slow);
        self.a.load(Reg::Rdx, Self::ic(ic_index, ic::TARGET));
        self.a.bind(hit);
        self.count_hit(site);
        let was = self.a.switch_to(Section::Cold);
        self.scan_entries(ic_index, scan, found, slow);
        self.a.bind(found);
        self.cmp_entry_kind(IcKind::Method);
        self.a.jcc(Cond::Ne, slow);
        self.a.load(Reg::Rdx, Self::entry_word(ic::TARGET));
        self.a.jmp(hit);
        self.a.switch_to(was);
    }

    fn invoke(&mut self, ic_index: usize, argc: usize, ip: usize) -> R {
        self.flush_all();
        let k = self.depth() - 1 - argc;
        self.set_ip(ip)?;
        let [slow, enter, done] = self.labels_n();
        self.a.load(Reg::Rdx, Self::slot(k));
        self.load_shape(Reg::Rdx, slow);
        self.cached_method(ic_index, Site::Invoke, slow);
        let hint = self.method_hint(ic_index);
        self.call_closure(enter, k, argc, hint);
        self.a.bind(done);
        self.call_slow_path(
            slow,
            enter,
            done,
            |g| {
                g.a.mov_ri(Reg::Rsi, ic_index as u64);
                g.a.mov_ri(Reg::Rdx, argc as u64);
            },
            rt::RT_INVOKE,
        );
        self.finish_call(k)
    }

    fn super_invoke(&mut self, ic_index: usize, argc: usize, ip: usize) -> R {
        self.flush_all();
        let top = self.top();
        let k = top - 1 - argc;
        self.set_ip(ip)?;
        let [slow, enter, done] = self.labels_n();
        self.a.load(Reg::Rcx, Self::slot(top));
        self.cached_method(ic_index, Site::Super, slow);
        let hint = self.method_hint(ic_index);
        self.call_closure(enter, k, argc, hint);
        self.a.bind(done);
        self.call_slow_path(
            slow,
            enter,
            done,
            |g| {
                g.a.mov_ri(Reg::Rsi, ic_index as u64);
                g.a.mov_ri(Reg::Rdx, argc as u64);
            },
            rt::RT_SUPER_INVOKE,
        );
        self.finish_call(k)
    }
}

enum DirectTarget {
    Itself,
    Symbol(String),
}
