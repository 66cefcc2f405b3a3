//! The bytecode loop.
//!
//! The loop keeps `ip`, `sp`, `base` (slot 0 of the running frame) and `fc` (frames in use) in
//! locals; the frame records hold the rest. Before anything that can allocate, throw or look at
//! the stack from outside (`sync!`), the locals are written back to the VM; after it, `sp` is
//! read again. Heap references are never kept in locals across such a call.
//!
//! Machine code runs with the VM handed over (`jit::call_compiled` parks it where the runtime
//! helpers find it), so the loop returns (`Exit::Compiled`) when it must call a compiled
//! function or continue a hot loop in machine code, and `Vm::run`, which owns the VM, does it
//! and enters the loop again. Machine code that calls a function still interpreted comes back
//! through a helper, into a `Vm::run` of its own that stops when that function returns
//! (`stop`).
//!
//! The fast paths of calls, globals, arithmetic and the inline caches are here; what allocates
//! or searches is in `objects.rs`.

use std::rc::Rc;

use super::objects::{is_string, Call};
use super::stack::{FRAMES_MAX, STACK_SLOTS};
use super::{RuntimeError, Site, Vm};
use crate::bytecode::{op, read_u32, IcKind, Program};
use crate::heap::layout::{array, closure, instance, upvalue, Tag};
use crate::jit;
use crate::value::{values_equal, Value};

/// What a run ends with: the VM back, and the value the frame it was started for returned.
pub type RunResult = (Box<Vm>, Result<Value, RuntimeError>);

/// Why the loop stopped.
enum Exit {
    /// The frame at index `stop` returned this value.
    Returned(Value),
    Failed(RuntimeError),
    /// Machine code must run: a compiled function (its frame not pushed yet, slot 0 at
    /// `base`), or, with `osr`, the running frame (slot 0 at `base`) from the start of a loop.
    /// The loop's state is written back; the frame records say where to resume.
    Compiled {
        entry: u64,
        base: usize,
        argc: usize,
        closure: Value,
        osr: bool,
    },
}

impl Vm {
    /// Runs from the top frame until the frame count drops to `stop`, and returns what the
    /// frame at index `stop` returned (`sp` is then that frame's base).
    ///
    /// The loop itself borrows the VM; when machine code must run, it returns here, where the
    /// VM is owned and can be handed over, and is entered again afterwards (it takes its state
    /// back from the frame records).
    pub fn run(self: Box<Self>, stop: usize) -> RunResult {
        let program = Rc::clone(&self.program);
        let mut vm = self;
        loop {
            let exit = if vm.count_instructions {
                run_loop::<true>(&mut vm, &program, stop)
            } else {
                run_loop::<false>(&mut vm, &program, stop)
            };
            let (entry, base, argc, closure, osr) = match exit {
                Exit::Returned(value) => return (vm, Ok(value)),
                Exit::Failed(error) => return (vm, Err(error)),
                Exit::Compiled {
                    entry,
                    base,
                    argc,
                    closure,
                    osr,
                } => (entry, base, argc, closure, osr),
            };
            let (back, result) = jit::call_compiled(vm, entry, base, argc, closure);
            vm = back;
            let value = match result {
                Ok(value) => value,
                Err(error) => return (vm, Err(error)),
            };
            // The callee's frame (with `osr`, the frame that was running) has returned: its
            // result replaces its slot 0 on the caller's stack.
            vm.sp = base;
            if osr && vm.region.frame_count() == stop {
                return (vm, Ok(value));
            }
            vm.region.set_stack(base, value);
            vm.sp = base + 1;
        }
    }
}

/// One function on purpose: the dispatch loop keeps `ip`, `sp`, `base` and `fc` in registers
/// across all the fast paths; splitting the arms into functions would spill them at every
/// instruction. What is not a fast path is a call into `objects.rs`. `COUNT` selects the copy
/// that counts instructions for `--stats`.
fn run_loop<const COUNT: bool>(vm: &mut Vm, program: &Program, stop: usize) -> Exit {
    let code = &program.code[..];
    let protos = &program.protos[..];
    let mut fc = vm.region.frame_count();
    let mut ip = vm.region.frame_ip(fc - 1);
    let mut base = vm.region.frame_base(fc - 1);
    let mut sp = vm.sp;

    macro_rules! sync {
        () => {{
            vm.sp = sp;
            vm.region.set_frame_count(fc);
        }};
    }
    macro_rules! fail {
        ($message:expr) => {{
            vm.region.set_frame_ip(fc - 1, ip);
            vm.sp = sp;
            vm.region.set_frame_count(fc);
            let message: Vec<u8> = $message.into();
            return Exit::Failed(vm.runtime_error(program, &message));
        }};
    }
    macro_rules! check {
        ($result:expr) => {{
            match $result {
                Ok(value) => {
                    sp = vm.sp;
                    value
                }
                Err(message) => fail!(message),
            }
        }};
    }
    macro_rules! push {
        ($value:expr) => {{
            let value: Value = $value;
            vm.region.set_stack(sp, value);
            sp += 1;
        }};
    }
    macro_rules! pop {
        () => {{
            sp -= 1;
            vm.region.stack(sp)
        }};
    }
    macro_rules! peek {
        ($distance:expr) => {
            vm.region.stack(sp - 1 - $distance)
        };
    }
    macro_rules! read_u32 {
        () => {{
            let value = read_u32(code, ip) as usize;
            ip += 4;
            value
        }};
    }
    // Pushes a frame for `callee` (a closure) whose slot 0 and arguments are in place, or
    // runs it to completion in machine code if it is compiled (or just became hot).
    macro_rules! enter {
        ($callee:expr, $argc:expr) => {{
            let callee: Value = $callee;
            let argc: usize = $argc;
            let proto_index = vm.heap.mem.load(callee.as_obj(), closure::PROTO) as usize;
            let proto = &protos[proto_index];
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
            vm.region.set_frame_ip(fc - 1, ip);
            if vm.jit.is_some() {
                // Off the interpreter's own path: keeps its registers where they are.
                std::hint::cold_path();
                if let Some(entry) = jit::entry_on_call(vm, proto_index) {
                    sync!();
                    return Exit::Compiled {
                        entry,
                        base: new_base,
                        argc,
                        closure: callee,
                        osr: false,
                    };
                }
            }
            vm.region.set_frame(fc, callee, proto.code_start, new_base);
            fc += 1;
            ip = proto.code_start;
            base = new_base;
            vm.stats.calls += 1;
        }};
    }
    macro_rules! numbers {
            ($op:tt, $wrap:expr) => {{
                let (a, b) = (peek!(1), peek!(0));
                if !a.is_number() || !b.is_number() {
                    fail!("Operands must be numbers.");
                }
                sp -= 1;
                vm.region.set_stack(sp - 1, $wrap(a.as_number() $op b.as_number()));
            }};
        }

    loop {
        if COUNT {
            vm.stats.instructions += 1;
        }
        let opcode = code[ip];
        ip += 1;
        match opcode {
            op::CONSTANT => {
                let k = read_u32!();
                push!(vm.constant(k));
            }
            op::NIL => push!(Value::NIL),
            op::TRUE => push!(Value::TRUE),
            op::FALSE => push!(Value::FALSE),
            op::POP => sp -= 1,
            op::GET_LOCAL => {
                let slot = usize::from(code[ip]);
                ip += 1;
                push!(vm.region.stack(base + slot));
            }
            op::SET_LOCAL => {
                let slot = usize::from(code[ip]);
                ip += 1;
                vm.region.set_stack(base + slot, peek!(0));
            }
            op::GET_GLOBAL => {
                let slot = read_u32!();
                let value = vm.region.global(slot);
                if value == Value::UNDEFINED {
                    fail!(vm.undefined_variable(slot));
                }
                push!(value);
            }
            op::DEFINE_GLOBAL => {
                let slot = read_u32!();
                let value = pop!();
                vm.region.set_global(slot, value);
            }
            op::SET_GLOBAL => {
                let slot = read_u32!();
                if vm.region.global(slot) == Value::UNDEFINED {
                    fail!(vm.undefined_variable(slot));
                }
                vm.region.set_global(slot, peek!(0));
            }
            op::GET_UPVALUE => {
                let index = usize::from(code[ip]);
                ip += 1;
                let up = vm
                    .heap
                    .mem
                    .load_value(
                        vm.region.frame_closure(fc - 1).as_obj(),
                        closure::UPVALUES + index,
                    )
                    .as_obj();
                let slot = vm.heap.mem.load_value(up, upvalue::SLOT);
                let value = if slot.is_nil() {
                    vm.heap.mem.load_value(up, upvalue::CLOSED)
                } else {
                    vm.region.stack(slot.0 as usize)
                };
                push!(value);
            }
            op::SET_UPVALUE => {
                let index = usize::from(code[ip]);
                ip += 1;
                let up = vm
                    .heap
                    .mem
                    .load_value(
                        vm.region.frame_closure(fc - 1).as_obj(),
                        closure::UPVALUES + index,
                    )
                    .as_obj();
                let slot = vm.heap.mem.load_value(up, upvalue::SLOT);
                if slot.is_nil() {
                    vm.heap.mem.store_value(up, upvalue::CLOSED, peek!(0));
                } else {
                    vm.region.set_stack(slot.0 as usize, peek!(0));
                }
            }
            op::GET_PROPERTY => {
                let ic = read_u32!();
                let receiver = peek!(0);
                let (key, kind, slot) = (
                    vm.region.ic_key(ic),
                    vm.region.ic_kind(ic),
                    vm.region.ic_slot(ic),
                );
                let mem = &vm.heap.mem;
                if receiver.is_obj()
                    && mem.load(receiver.as_obj(), instance::SHAPE) == key
                    && kind != IcKind::Empty
                {
                    vm.stats.ic_hits[Site::GetProperty as usize] += 1;
                    match kind {
                        IcKind::InlineField => vm
                            .region
                            .set_stack(sp - 1, mem.load_value(receiver.as_obj(), slot)),
                        IcKind::OverflowField => {
                            let overflow = mem
                                .load_value(receiver.as_obj(), instance::OVERFLOW)
                                .as_obj();
                            vm.region.set_stack(
                                sp - 1,
                                mem.load_value(overflow, array::ELEMENTS + slot),
                            );
                        }
                        _ => {
                            let method = Value(vm.region.ic_target(ic));
                            sync!();
                            check!(vm.bind_method(method));
                        }
                    }
                } else {
                    sync!();
                    check!(vm.get_property_slow(ic));
                }
            }
            op::SET_PROPERTY => {
                let ic = read_u32!();
                let receiver = peek!(1);
                let (key, kind, slot, target) = (
                    vm.region.ic_key(ic),
                    vm.region.ic_kind(ic),
                    vm.region.ic_slot(ic),
                    vm.region.ic_target(ic),
                );
                if receiver.is_obj()
                    && vm.heap.mem.load(receiver.as_obj(), instance::SHAPE) == key
                    && kind != IcKind::Empty
                {
                    vm.stats.ic_hits[Site::SetProperty as usize] += 1;
                    let value = pop!();
                    let mem = &mut vm.heap.mem;
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
                    vm.region.set_stack(sp - 1, value);
                } else {
                    sync!();
                    check!(vm.set_property_slow(ic));
                }
            }
            op::GET_SUPER => {
                let ic = read_u32!();
                let superclass = pop!();
                sync!();
                check!(vm.get_super(ic, superclass));
            }
            op::EQUAL => {
                let b = pop!();
                let a = peek!(0);
                vm.region.set_stack(sp - 1, Value::bool(values_equal(a, b)));
            }
            op::GREATER => numbers!(>, Value::bool),
            op::LESS => numbers!(<, Value::bool),
            op::ADD => {
                let (a, b) = (peek!(1), peek!(0));
                if a.is_number() && b.is_number() {
                    sp -= 1;
                    vm.region
                        .set_stack(sp - 1, Value::number(a.as_number() + b.as_number()));
                } else if is_string(&vm.heap.mem, a) && is_string(&vm.heap.mem, b) {
                    sync!();
                    check!(vm.concatenate());
                } else {
                    fail!("Operands must be two numbers or two strings.");
                }
            }
            op::SUBTRACT => numbers!(-, Value::number),
            op::MULTIPLY => numbers!(*, Value::number),
            op::DIVIDE => numbers!(/, Value::number),
            op::NOT => {
                let v = peek!(0);
                vm.region.set_stack(sp - 1, Value::bool(v.is_falsey()));
            }
            op::NEGATE => {
                let v = peek!(0);
                if !v.is_number() {
                    fail!("Operand must be a number.");
                }
                vm.region.set_stack(sp - 1, Value::number(-v.as_number()));
            }
            op::PRINT => {
                let v = pop!();
                vm.write_value(v, protos);
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
                if vm.jit.is_none() {
                    continue;
                }
                std::hint::cold_path();
                let closure_value = vm.region.frame_closure(fc - 1);
                let proto_index = vm.heap.mem.load(closure_value.as_obj(), closure::PROTO);
                if let Some(entry) = jit::osr_on_loop(vm, proto_index as usize, ip) {
                    // The frame goes on in machine code from the loop's start, and returns
                    // from there.
                    sync!();
                    vm.region.set_frame_ip(fc - 1, ip);
                    return Exit::Compiled {
                        entry,
                        base,
                        argc: 0,
                        closure: closure_value,
                        osr: true,
                    };
                }
            }
            op::CALL => {
                let argc = usize::from(code[ip]);
                ip += 1;
                let callee = peek!(argc);
                if vm.heap.mem.has_tag(callee, Tag::Closure) {
                    enter!(callee, argc);
                } else {
                    sync!();
                    if let Call::Enter(method) = check!(vm.call_slow(argc)) {
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
                    && vm.heap.mem.load(receiver.as_obj(), instance::SHAPE) == vm.region.ic_key(ic)
                    && vm.region.ic_kind(ic) == IcKind::Method
                {
                    vm.stats.ic_hits[Site::Invoke as usize] += 1;
                    enter!(Value(vm.region.ic_target(ic)), argc);
                } else {
                    sync!();
                    if let Call::Enter(method) = check!(vm.invoke_slow(ic, argc)) {
                        enter!(method, argc);
                    }
                }
            }
            op::SUPER_INVOKE => {
                let ic = read_u32!();
                let argc = usize::from(code[ip]);
                ip += 1;
                let superclass = pop!();
                if vm.region.ic_key(ic) == superclass.0 && vm.region.ic_kind(ic) == IcKind::Method {
                    vm.stats.ic_hits[Site::Super as usize] += 1;
                    enter!(Value(vm.region.ic_target(ic)), argc);
                } else {
                    sync!();
                    if let Call::Enter(method) = check!(vm.super_invoke_slow(ic, superclass)) {
                        enter!(method, argc);
                    }
                }
            }
            op::CLOSURE => {
                let proto = read_u32!();
                let pairs = 2 * protos[proto].upvalue_count;
                sync!();
                check!(vm.new_closure(proto, &code[ip..ip + pairs], base));
                ip += pairs;
            }
            op::CLOSE_UPVALUE => {
                vm.close_upvalues(sp - 1);
                sp -= 1;
            }
            op::RETURN => {
                let result = pop!();
                if !vm.region.open_upvalues().is_nil() {
                    vm.close_upvalues(base);
                }
                fc -= 1;
                sp = base;
                if fc == stop {
                    sync!();
                    return Exit::Returned(result);
                }
                push!(result);
                ip = vm.region.frame_ip(fc - 1);
                base = vm.region.frame_base(fc - 1);
            }
            op::CLASS => {
                let name = read_u32!();
                sync!();
                check!(vm.new_class(name));
            }
            op::INHERIT => {
                sync!();
                check!(vm.inherit());
            }
            op::METHOD => {
                let name = read_u32!();
                sync!();
                check!(vm.define_method(name));
            }
            _ => invalid_opcode(),
        }
    }
}

impl Vm {
    #[cold]
    pub(crate) fn undefined_variable(&self, slot: usize) -> Vec<u8> {
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
