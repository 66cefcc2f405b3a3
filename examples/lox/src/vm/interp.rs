//! The bytecode loop.
//!
//! The loop keeps `ip`, `sp`, `base` (slot 0 of the running frame) and `fc` (frames in use) in
//! locals; the frame records hold the rest. Before anything that can allocate, throw or look at
//! the stack from outside (`sync!`), the locals are written back to the VM; after it, `sp` is
//! read again. Heap references are never kept in locals across such a call.
//!
//! The fast paths of calls, globals, arithmetic and the inline caches are here; what allocates
//! or searches is in `objects.rs`.

use super::objects::{is_string, Call};
use super::stack::{FRAMES_MAX, STACK_SLOTS};
use super::{RuntimeError, Site, Vm};
use crate::bytecode::{op, read_u32, IcKind, Program};
use crate::heap::layout::{array, closure, instance, upvalue, Tag};
use crate::value::{values_equal, Value};

impl Vm {
    /// Runs from the top frame until the frame count drops to zero.
    pub(super) fn run(&mut self) -> Result<(), RuntimeError> {
        let program = std::mem::take(&mut self.program);
        let result = if self.count_instructions {
            self.run_loop::<true>(&program)
        } else {
            self.run_loop::<false>(&program)
        };
        self.program = program;
        result
    }

    /// One function on purpose: the dispatch loop keeps `ip`, `sp`, `base` and `fc` in
    /// registers across all the fast paths; splitting the arms into functions would spill them
    /// at every instruction. What is not a fast path is a call into `objects.rs`. `COUNT`
    /// selects the copy that counts instructions for `--stats`.
    fn run_loop<const COUNT: bool>(&mut self, program: &Program) -> Result<(), RuntimeError> {
        let code = &program.code[..];
        let protos = &program.protos[..];
        let mut fc = self.region.frame_count();
        let mut ip = self.region.frame_ip(fc - 1);
        let mut base = self.region.frame_base(fc - 1);
        let mut sp = self.sp;

        macro_rules! sync {
            () => {{
                self.sp = sp;
                self.region.set_frame_count(fc);
            }};
        }
        macro_rules! fail {
            ($message:expr) => {{
                self.region.set_frame_ip(fc - 1, ip);
                self.sp = sp;
                self.region.set_frame_count(fc);
                let message: Vec<u8> = $message.into();
                return Err(self.runtime_error(program, &message));
            }};
        }
        macro_rules! check {
            ($result:expr) => {{
                match $result {
                    Ok(value) => {
                        sp = self.sp;
                        value
                    }
                    Err(message) => fail!(message),
                }
            }};
        }
        macro_rules! push {
            ($value:expr) => {{
                let value: Value = $value;
                self.region.set_stack(sp, value);
                sp += 1;
            }};
        }
        macro_rules! pop {
            () => {{
                sp -= 1;
                self.region.stack(sp)
            }};
        }
        macro_rules! peek {
            ($distance:expr) => {
                self.region.stack(sp - 1 - $distance)
            };
        }
        macro_rules! read_u32 {
            () => {{
                let value = read_u32(code, ip) as usize;
                ip += 4;
                value
            }};
        }
        // Pushes a frame for `callee` (a closure) whose slot 0 and arguments are in place.
        macro_rules! enter {
            ($callee:expr, $argc:expr) => {{
                let callee: Value = $callee;
                let argc: usize = $argc;
                let proto = &protos[self.heap.mem.load(callee.as_obj(), closure::PROTO) as usize];
                if argc != proto.arity {
                    fail!(format!(
                        "Expected {} arguments but got {}.",
                        proto.arity, argc
                    ));
                }
                let new_base = sp - argc - 1;
                if fc == FRAMES_MAX || new_base + proto.max_stack > STACK_SLOTS {
                    fail!("Stack overflow.");
                }
                self.region.set_frame_ip(fc - 1, ip);
                self.region
                    .set_frame(fc, callee, proto.code_start, new_base);
                fc += 1;
                ip = proto.code_start;
                base = new_base;
                self.stats.calls += 1;
            }};
        }
        macro_rules! numbers {
            ($op:tt, $wrap:expr) => {{
                let (a, b) = (peek!(1), peek!(0));
                if !a.is_number() || !b.is_number() {
                    fail!("Operands must be numbers.");
                }
                sp -= 1;
                self.region.set_stack(sp - 1, $wrap(a.as_number() $op b.as_number()));
            }};
        }

        loop {
            if COUNT {
                self.stats.instructions += 1;
            }
            let opcode = code[ip];
            ip += 1;
            match opcode {
                op::CONSTANT => {
                    let k = read_u32!();
                    push!(self.constant(k));
                }
                op::NIL => push!(Value::NIL),
                op::TRUE => push!(Value::TRUE),
                op::FALSE => push!(Value::FALSE),
                op::POP => sp -= 1,
                op::GET_LOCAL => {
                    let slot = usize::from(code[ip]);
                    ip += 1;
                    push!(self.region.stack(base + slot));
                }
                op::SET_LOCAL => {
                    let slot = usize::from(code[ip]);
                    ip += 1;
                    self.region.set_stack(base + slot, peek!(0));
                }
                op::GET_GLOBAL => {
                    let slot = read_u32!();
                    let value = self.region.global(slot);
                    if value == Value::UNDEFINED {
                        fail!(self.undefined_variable(slot));
                    }
                    push!(value);
                }
                op::DEFINE_GLOBAL => {
                    let slot = read_u32!();
                    let value = pop!();
                    self.region.set_global(slot, value);
                }
                op::SET_GLOBAL => {
                    let slot = read_u32!();
                    if self.region.global(slot) == Value::UNDEFINED {
                        fail!(self.undefined_variable(slot));
                    }
                    self.region.set_global(slot, peek!(0));
                }
                op::GET_UPVALUE => {
                    let index = usize::from(code[ip]);
                    ip += 1;
                    let up = self
                        .heap
                        .mem
                        .load_value(
                            self.region.frame_closure(fc - 1).as_obj(),
                            closure::UPVALUES + index,
                        )
                        .as_obj();
                    let slot = self.heap.mem.load_value(up, upvalue::SLOT);
                    let value = if slot.is_nil() {
                        self.heap.mem.load_value(up, upvalue::CLOSED)
                    } else {
                        self.region.stack(slot.0 as usize)
                    };
                    push!(value);
                }
                op::SET_UPVALUE => {
                    let index = usize::from(code[ip]);
                    ip += 1;
                    let up = self
                        .heap
                        .mem
                        .load_value(
                            self.region.frame_closure(fc - 1).as_obj(),
                            closure::UPVALUES + index,
                        )
                        .as_obj();
                    let slot = self.heap.mem.load_value(up, upvalue::SLOT);
                    if slot.is_nil() {
                        self.heap.mem.store_value(up, upvalue::CLOSED, peek!(0));
                    } else {
                        self.region.set_stack(slot.0 as usize, peek!(0));
                    }
                }
                op::GET_PROPERTY => {
                    let ic = read_u32!();
                    let receiver = peek!(0);
                    let (key, kind, slot) = (
                        self.region.ic_key(ic),
                        self.region.ic_kind(ic),
                        self.region.ic_slot(ic),
                    );
                    let mem = &self.heap.mem;
                    if receiver.is_obj()
                        && mem.load(receiver.as_obj(), instance::SHAPE) == key
                        && kind != IcKind::Empty
                    {
                        self.stats.ic_hits[Site::GetProperty as usize] += 1;
                        match kind {
                            IcKind::InlineField => self
                                .region
                                .set_stack(sp - 1, mem.load_value(receiver.as_obj(), slot)),
                            IcKind::OverflowField => {
                                let overflow = mem
                                    .load_value(receiver.as_obj(), instance::OVERFLOW)
                                    .as_obj();
                                self.region.set_stack(
                                    sp - 1,
                                    mem.load_value(overflow, array::ELEMENTS + slot),
                                );
                            }
                            _ => {
                                let method = Value(self.region.ic_target(ic));
                                sync!();
                                check!(self.bind_method(method));
                            }
                        }
                    } else {
                        sync!();
                        check!(self.get_property_slow(ic));
                    }
                }
                op::SET_PROPERTY => {
                    let ic = read_u32!();
                    let receiver = peek!(1);
                    let (key, kind, slot, target) = (
                        self.region.ic_key(ic),
                        self.region.ic_kind(ic),
                        self.region.ic_slot(ic),
                        self.region.ic_target(ic),
                    );
                    if receiver.is_obj()
                        && self.heap.mem.load(receiver.as_obj(), instance::SHAPE) == key
                        && kind != IcKind::Empty
                    {
                        self.stats.ic_hits[Site::SetProperty as usize] += 1;
                        let value = pop!();
                        let mem = &mut self.heap.mem;
                        match kind {
                            IcKind::InlineField => mem.store_value(receiver.as_obj(), slot, value),
                            IcKind::AddInlineField => {
                                mem.store_value(receiver.as_obj(), slot, value);
                                mem.store(receiver.as_obj(), instance::SHAPE, target);
                            }
                            _ => {
                                let overflow = mem
                                    .load_value(receiver.as_obj(), instance::OVERFLOW)
                                    .as_obj();
                                mem.store_value(overflow, array::ELEMENTS + slot, value);
                            }
                        }
                        self.region.set_stack(sp - 1, value);
                    } else {
                        sync!();
                        check!(self.set_property_slow(ic));
                    }
                }
                op::GET_SUPER => {
                    let ic = read_u32!();
                    let superclass = pop!();
                    sync!();
                    check!(self.get_super(ic, superclass));
                }
                op::EQUAL => {
                    let b = pop!();
                    let a = peek!(0);
                    self.region
                        .set_stack(sp - 1, Value::bool(values_equal(a, b)));
                }
                op::GREATER => numbers!(>, Value::bool),
                op::LESS => numbers!(<, Value::bool),
                op::ADD => {
                    let (a, b) = (peek!(1), peek!(0));
                    if a.is_number() && b.is_number() {
                        sp -= 1;
                        self.region
                            .set_stack(sp - 1, Value::number(a.as_number() + b.as_number()));
                    } else if is_string(&self.heap.mem, a) && is_string(&self.heap.mem, b) {
                        sync!();
                        check!(self.concatenate());
                    } else {
                        fail!("Operands must be two numbers or two strings.");
                    }
                }
                op::SUBTRACT => numbers!(-, Value::number),
                op::MULTIPLY => numbers!(*, Value::number),
                op::DIVIDE => numbers!(/, Value::number),
                op::NOT => {
                    let v = peek!(0);
                    self.region.set_stack(sp - 1, Value::bool(v.is_falsey()));
                }
                op::NEGATE => {
                    let v = peek!(0);
                    if !v.is_number() {
                        fail!("Operand must be a number.");
                    }
                    self.region.set_stack(sp - 1, Value::number(-v.as_number()));
                }
                op::PRINT => {
                    let v = pop!();
                    self.write_value(v, protos);
                }
                op::JUMP => {
                    let distance = read_u32!();
                    ip += distance;
                }
                op::JUMP_IF_FALSE => {
                    let distance = read_u32!();
                    if peek!(0).is_falsey() {
                        ip += distance;
                    }
                }
                op::LOOP => {
                    let distance = read_u32!();
                    ip -= distance;
                }
                op::CALL => {
                    let argc = usize::from(code[ip]);
                    ip += 1;
                    let callee = peek!(argc);
                    if self.heap.mem.has_tag(callee, Tag::Closure) {
                        enter!(callee, argc);
                    } else {
                        sync!();
                        if let Call::Enter(method) = check!(self.call_slow(argc)) {
                            enter!(method, argc);
                        }
                    }
                }
                op::INVOKE => {
                    let ic = read_u32!();
                    let argc = usize::from(code[ip]);
                    ip += 1;
                    let receiver = peek!(argc);
                    if receiver.is_obj()
                        && self.heap.mem.load(receiver.as_obj(), instance::SHAPE)
                            == self.region.ic_key(ic)
                        && self.region.ic_kind(ic) == IcKind::Method
                    {
                        self.stats.ic_hits[Site::Invoke as usize] += 1;
                        enter!(Value(self.region.ic_target(ic)), argc);
                    } else {
                        sync!();
                        if let Call::Enter(method) = check!(self.invoke_slow(ic, argc)) {
                            enter!(method, argc);
                        }
                    }
                }
                op::SUPER_INVOKE => {
                    let ic = read_u32!();
                    let argc = usize::from(code[ip]);
                    ip += 1;
                    let superclass = pop!();
                    if self.region.ic_key(ic) == superclass.0
                        && self.region.ic_kind(ic) == IcKind::Method
                    {
                        self.stats.ic_hits[Site::Super as usize] += 1;
                        enter!(Value(self.region.ic_target(ic)), argc);
                    } else {
                        sync!();
                        if let Call::Enter(method) = check!(self.super_invoke_slow(ic, superclass))
                        {
                            enter!(method, argc);
                        }
                    }
                }
                op::CLOSURE => {
                    let proto = read_u32!();
                    let pairs = 2 * protos[proto].upvalue_count;
                    sync!();
                    check!(self.new_closure(proto, &code[ip..ip + pairs], base));
                    ip += pairs;
                }
                op::CLOSE_UPVALUE => {
                    self.close_upvalues(sp - 1);
                    sp -= 1;
                }
                op::RETURN => {
                    let result = pop!();
                    if !self.region.open_upvalues().is_nil() {
                        self.close_upvalues(base);
                    }
                    fc -= 1;
                    sp = base;
                    if fc == 0 {
                        sync!();
                        return Ok(());
                    }
                    push!(result);
                    ip = self.region.frame_ip(fc - 1);
                    base = self.region.frame_base(fc - 1);
                }
                op::CLASS => {
                    let name = read_u32!();
                    sync!();
                    check!(self.new_class(name));
                }
                op::INHERIT => {
                    sync!();
                    check!(self.inherit());
                }
                op::METHOD => {
                    let name = read_u32!();
                    sync!();
                    check!(self.define_method(name));
                }
                _ => invalid_opcode(),
            }
        }
    }

    #[cold]
    fn undefined_variable(&self, slot: usize) -> Vec<u8> {
        let mut text = b"Undefined variable '".to_vec();
        text.extend_from_slice(&self.global_names[slot]);
        text.extend_from_slice(b"'.");
        text
    }
}

/// The compiler emits only the opcodes above; anything else is a bug in it.
#[cold]
#[inline(never)]
fn invalid_opcode() -> ! {
    panic!("kiln-lox: invalid opcode (compiler bug)")
}
