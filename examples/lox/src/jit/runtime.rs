//! Runtime helpers: the Rust functions JIT'd code calls for what it does not do inline, and
//! how they find the VM without `unsafe`.
//!
//! While machine code runs, the VM is *parked*: `call_compiled` moves the `Box<Vm>` into a
//! thread-local slot before it enters the code, and takes it back when the code returns. A
//! helper (an `extern "C" fn`, whose first argument is the address of the VM region, `ctx`)
//! takes the VM out of the slot, checks that it is the VM that `ctx` belongs to, works on it,
//! and puts it back before returning to the machine code. Ownership moves; nothing is shared,
//! nothing is borrowed across the machine code, so no `unsafe` is needed anywhere.
//!
//! The helpers' contract with the code: the values they look at are in their stack slots, the
//! stack's end is in `ctx::JIT_SP`, the top frame's ip is current. A helper that fails builds
//! the runtime error (with the stack trace, from the frame records) right away, leaves it in
//! `Vm::pending_error`, sets the context block's error flag, and returns; the code unwinds.

use std::cell::Cell;
use std::rc::Rc;

use super::call_interpreted;
use crate::value::Value;
use crate::vm::objects::{Call, Fault};
use crate::vm::region::ctx;
use crate::vm::Vm;

thread_local! {
    static PARKED: Cell<Option<Box<Vm>>> = const { Cell::new(None) };
}

/// Hands the VM over while machine code runs.
pub fn park(vm: Box<Vm>) {
    let previous = PARKED.replace(Some(vm));
    assert!(previous.is_none(), "kiln-lox: two VMs parked on one thread");
}

/// Takes the VM back.
pub fn unpark() -> Box<Vm> {
    PARKED
        .take()
        .unwrap_or_else(|| fail("machine code returned without the VM parked"))
}

/// A broken invariant of the JIT's protocol: no way to go on.
#[cold]
fn fail(what: &str) -> ! {
    eprintln!("kiln-lox: {what}");
    std::process::abort()
}

/// Takes the VM that `ctx` names out of its slot for `f`, and back.
fn with_parked(ctx: u64, f: impl FnOnce(Box<Vm>) -> (Box<Vm>, u64)) -> u64 {
    let vm = unpark();
    if vm.region.base_address() != ctx {
        fail("a runtime helper was called for another VM");
    }
    let (vm, result) = f(vm);
    park(vm);
    result
}

/// For helpers that run no Lox code: `f` sees the VM with `sp` set from the machine code's
/// stack; a fault becomes the pending runtime error. Inline-cache counts the slow paths make
/// are the JIT's.
fn with_vm(ctx: u64, f: impl FnOnce(&mut Vm) -> Result<u64, Fault>) -> u64 {
    with_parked(ctx, |mut vm| {
        vm.sp = vm.region.stack_slot_of(vm.region.ctx_word(ctx::JIT_SP));
        let (hits, misses) = (vm.stats.ic_hits, vm.stats.ic_misses);
        let result = f(&mut vm);
        if let Some(jit) = vm.jit.as_mut() {
            for site in 0..4 {
                jit.stats.ic_hits[site] += vm.stats.ic_hits[site] - hits[site];
                jit.stats.ic_misses[site] += vm.stats.ic_misses[site] - misses[site];
            }
        }
        vm.stats.ic_hits = hits;
        vm.stats.ic_misses = misses;
        match result {
            Ok(value) => (vm, value),
            Err(message) => {
                let program = Rc::clone(&vm.program);
                let error = vm.runtime_error(&program, &message);
                vm.raise_in_machine_code(error);
                (vm, 0)
            }
        }
    })
}

pub const RT_ERROR: &str = "lox_rt_error";
pub const RT_ADD: &str = "lox_rt_add";
pub const RT_GET_PROPERTY: &str = "lox_rt_get_property";
pub const RT_SET_PROPERTY: &str = "lox_rt_set_property";
pub const RT_GET_SUPER: &str = "lox_rt_get_super";
pub const RT_CALL_VALUE: &str = "lox_rt_call_value";
pub const RT_INVOKE: &str = "lox_rt_invoke";
pub const RT_SUPER_INVOKE: &str = "lox_rt_super_invoke";
pub const RT_CLOSURE: &str = "lox_rt_closure";
pub const RT_PRINT: &str = "lox_rt_print";
pub const RT_CLASS: &str = "lox_rt_class";
pub const RT_INHERIT: &str = "lox_rt_inherit";
pub const RT_METHOD: &str = "lox_rt_method";

/// Every helper by the name JIT'd code calls it, with its address.
pub fn helpers() -> Vec<(&'static str, u64)> {
    vec![
        (RT_ERROR, lox_rt_error as *const () as u64),
        (RT_ADD, lox_rt_add as *const () as u64),
        (RT_GET_PROPERTY, lox_rt_get_property as *const () as u64),
        (RT_SET_PROPERTY, lox_rt_set_property as *const () as u64),
        (RT_GET_SUPER, lox_rt_get_super as *const () as u64),
        (RT_CALL_VALUE, lox_rt_call_value as *const () as u64),
        (RT_INVOKE, lox_rt_invoke as *const () as u64),
        (RT_SUPER_INVOKE, lox_rt_super_invoke as *const () as u64),
        (RT_CLOSURE, lox_rt_closure as *const () as u64),
        (RT_PRINT, lox_rt_print as *const () as u64),
        (RT_CLASS, lox_rt_class as *const () as u64),
        (RT_INHERIT, lox_rt_inherit as *const () as u64),
        (RT_METHOD, lox_rt_method as *const () as u64),
        (
            super::backend::CALL_INTERPRETED,
            lox_rt_call_interpreted as *const () as u64,
        ),
    ]
}

// Kinds of runtime errors machine code raises by itself (`lox_rt_error`).
pub const ERROR_OPERANDS_NUMBERS: u32 = 0;
pub const ERROR_OPERAND_NUMBER: u32 = 1;
/// a: the global's slot.
pub const ERROR_UNDEFINED_VARIABLE: u32 = 2;
/// a: expected, b: got.
pub const ERROR_ARITY: u32 = 3;
pub const ERROR_STACK_OVERFLOW: u32 = 4;

extern "C" fn lox_rt_error(ctx: u64, kind: u64, a: u64, b: u64) -> u64 {
    with_vm(ctx, |vm| {
        Err(match kind as u32 {
            ERROR_OPERANDS_NUMBERS => b"Operands must be numbers.".to_vec(),
            ERROR_OPERAND_NUMBER => b"Operand must be a number.".to_vec(),
            ERROR_UNDEFINED_VARIABLE => vm.undefined_variable(a as usize),
            ERROR_ARITY => format!("Expected {a} arguments but got {b}.").into_bytes(),
            _ => b"Stack overflow.".to_vec(),
        })
    })
}

/// `+` on anything but two numbers: two strings concatenate, the rest is an error.
extern "C" fn lox_rt_add(ctx: u64) -> u64 {
    with_vm(ctx, |vm| {
        vm.add_slow()?;
        Ok(0)
    })
}

/// A property read whose cache entries did not hold an inline or overflow field: a method
/// (bound here), or a miss.
extern "C" fn lox_rt_get_property(ctx: u64, ic: u64) -> u64 {
    with_vm(ctx, |vm| {
        let shape = super::receiver_shape(vm, 0);
        vm.get_property_slow(ic as usize)?;
        super::learn_property(vm, ic as usize, shape);
        Ok(0)
    })
}

/// A property write whose cache entries did not hold the shape.
extern "C" fn lox_rt_set_property(ctx: u64, ic: u64) -> u64 {
    with_vm(ctx, |vm| {
        let shape = super::receiver_shape(vm, 1);
        vm.set_property_slow(ic as usize)?;
        super::learn_property(vm, ic as usize, shape);
        Ok(0)
    })
}

/// `super.name`: [this, superclass] → [bound method].
extern "C" fn lox_rt_get_super(ctx: u64, ic: u64) -> u64 {
    with_vm(ctx, |vm| {
        vm.sp -= 1;
        let superclass = vm.region.stack(vm.sp);
        vm.get_super(ic as usize, superclass)?;
        Ok(0)
    })
}

/// What a call needs besides entering a closure: the closure to enter, or 0 when done.
fn call_outcome(call: Call) -> u64 {
    match call {
        Call::Enter(closure) => closure.0,
        Call::Done => 0,
    }
}

/// Calling a value that is not a closure: bound method, class, native, or an error.
extern "C" fn lox_rt_call_value(ctx: u64, argc: u64) -> u64 {
    with_vm(ctx, |vm| vm.call_slow(argc as usize).map(call_outcome))
}

/// `receiver.name(args)` whose cache missed.
extern "C" fn lox_rt_invoke(ctx: u64, ic: u64, argc: u64) -> u64 {
    with_vm(ctx, |vm| {
        let shape = super::receiver_shape(vm, argc as usize);
        let outcome = vm.invoke_slow(ic as usize, argc as usize).map(call_outcome);
        if outcome.is_ok() {
            super::learn_property(vm, ic as usize, shape);
        }
        outcome
    })
}

/// `super.name(args)` whose cache missed: [this, args…, superclass].
extern "C" fn lox_rt_super_invoke(ctx: u64, ic: u64, _argc: u64) -> u64 {
    with_vm(ctx, |vm| {
        vm.sp -= 1;
        let superclass = vm.region.stack(vm.sp);
        vm.super_invoke_slow(ic as usize, superclass)
            .map(call_outcome)
    })
}

/// A new closure of prototype `proto`, its upvalue pairs at bytecode index `pairs`.
extern "C" fn lox_rt_closure(ctx: u64, proto: u64, pairs: u64) -> u64 {
    with_vm(ctx, |vm| {
        let program = Rc::clone(&vm.program);
        let count = program.protos[proto as usize].upvalue_count;
        let pairs = &program.code[pairs as usize..pairs as usize + 2 * count];
        let base = vm.region.frame_base(vm.region.frame_count() - 1);
        vm.new_closure(proto as usize, pairs, base)?;
        Ok(0)
    })
}

extern "C" fn lox_rt_print(ctx: u64, value: u64) -> u64 {
    with_vm(ctx, |vm| {
        let program = Rc::clone(&vm.program);
        vm.write_value(Value(value), &program.protos);
        Ok(0)
    })
}

extern "C" fn lox_rt_class(ctx: u64, name: u64) -> u64 {
    with_vm(ctx, |vm| {
        vm.new_class(name as usize)?;
        Ok(0)
    })
}

extern "C" fn lox_rt_inherit(ctx: u64) -> u64 {
    with_vm(ctx, |vm| {
        vm.inherit()?;
        Ok(0)
    })
}

extern "C" fn lox_rt_method(ctx: u64, name: u64) -> u64 {
    with_vm(ctx, |vm| {
        vm.define_method(name as usize)?;
        Ok(0)
    })
}

/// The interpreter bridge's helper: runs the closure (whose slot 0 is stack slot `base`, with
/// `argc` arguments after it) in the interpreter, or compiles it first if it just became hot,
/// and returns its result.
extern "C" fn lox_rt_call_interpreted(ctx: u64, base: u64, argc: u64, closure: u64) -> u64 {
    with_parked(ctx, |vm| {
        let (mut vm, result) = call_interpreted(vm, base as usize, argc as usize, Value(closure));
        match result {
            Ok(value) => (vm, value.0),
            Err(error) => {
                vm.raise_in_machine_code(error);
                (vm, 0)
            }
        }
    })
}
