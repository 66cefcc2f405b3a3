//! The single-pass compiler: a Pratt parser that emits bytecode as it parses, with clox's
//! grammar, error recovery, messages and limits.
//!
//! `expr.rs` compiles expressions, `stmt.rs` statements and declarations; this file holds the
//! parser state, the per-function state, scopes and variable resolution, and emission.

mod expr;
mod stmt;

use std::io::Write;

use crate::bytecode::{op, Proto};
use crate::scanner::{Scanner, Token, TokenKind};
use crate::value::Value;
use crate::vm::Vm;

/// clox's limits.
const MAX_LOCALS: usize = 256;
const MAX_UPVALUES: usize = 256;
const MAX_CONSTANTS: usize = 256;
const MAX_JUMP: usize = u16::MAX as usize;
/// Nesting of expressions and statements beyond which compiling stops with an error instead of
/// exhausting the native stack (clox has no such limit: it crashes, far deeper than any program
/// written by hand).
const MAX_NESTING: usize = 10_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FunctionKind {
    Function,
    Initializer,
    Method,
    Script,
}

#[derive(Clone, Copy)]
struct Local<'src> {
    name: &'src [u8],
    /// Scope depth, or -1 while its initializer is being compiled.
    depth: i32,
    captured: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UpvalueRef {
    pub index: u8,
    pub is_local: bool,
}

/// A position in the code being emitted, in our bytes and in the bytes clox would have emitted.
#[derive(Clone, Copy)]
struct Mark {
    ours: usize,
    clox: usize,
}

/// A function being compiled.
struct FunctionState<'src> {
    kind: FunctionKind,
    /// Index of its (reserved) prototype.
    proto: usize,
    name: Option<Box<[u8]>>,
    arity: usize,
    code: Vec<u8>,
    lines: Vec<u32>,
    /// Length of the code in clox's encoding, for clox's jump limits.
    clox_len: usize,
    /// Constants clox would have added to this function's chunk.
    clox_constants: usize,
    /// Value-stack slots in use at the current point, and the most so far.
    stack_depth: i64,
    max_stack: i64,
    locals: Vec<Local<'src>>,
    upvalues: Vec<UpvalueRef>,
    scope_depth: i32,
}

struct ClassState {
    has_superclass: bool,
}

pub struct Compiler<'src, 'vm> {
    scanner: Scanner<'src>,
    current: Token<'src>,
    previous: Token<'src>,
    had_error: bool,
    panic_mode: bool,
    nesting: usize,
    vm: &'vm mut Vm,
    functions: Vec<FunctionState<'src>>,
    classes: Vec<ClassState>,
}

/// Compiles a script; returns the index of its prototype, or `None` after reporting errors
/// on stderr. On error, everything the attempt added to the program is taken back.
pub fn compile(vm: &mut Vm, source: &[u8]) -> Option<usize> {
    let checkpoint = vm.program_checkpoint();
    let eof = Token {
        kind: TokenKind::Eof,
        text: b"",
        line: 1,
    };
    let mut c = Compiler {
        scanner: Scanner::new(source),
        current: eof,
        previous: eof,
        had_error: false,
        panic_mode: false,
        nesting: 0,
        vm,
        functions: Vec::new(),
        classes: Vec::new(),
    };
    c.begin_function(FunctionKind::Script);
    c.advance();
    while !c.matches(TokenKind::Eof) {
        c.declaration();
    }
    let (proto, _) = c.end_function();
    if c.had_error {
        c.vm.program_rollback(checkpoint);
        None
    } else {
        Some(proto)
    }
}

impl<'src> Compiler<'src, '_> {
    // ---- tokens and errors ----

    fn advance(&mut self) {
        self.previous = self.current;
        loop {
            self.current = self.scanner.next_token();
            if self.current.kind != TokenKind::Error {
                break;
            }
            let message = self.current.text;
            self.error_at(self.current, message);
        }
    }

    fn consume(&mut self, kind: TokenKind, message: &str) {
        if self.current.kind == kind {
            self.advance();
        } else {
            self.error_at_current(message);
        }
    }

    fn check(&self, kind: TokenKind) -> bool {
        self.current.kind == kind
    }

    fn matches(&mut self, kind: TokenKind) -> bool {
        if !self.check(kind) {
            return false;
        }
        self.advance();
        true
    }

    fn error(&mut self, message: &str) {
        self.error_at(self.previous, message.as_bytes());
    }

    fn error_at_current(&mut self, message: &str) {
        self.error_at(self.current, message.as_bytes());
    }

    fn error_at(&mut self, token: Token<'src>, message: &[u8]) {
        if self.panic_mode {
            return;
        }
        self.panic_mode = true;
        self.had_error = true;
        let mut text = format!("[line {}] Error", token.line).into_bytes();
        match token.kind {
            TokenKind::Eof => text.extend_from_slice(b" at end"),
            TokenKind::Error => {}
            _ => {
                text.extend_from_slice(b" at '");
                text.extend_from_slice(token.text);
                text.push(b'\'');
            }
        }
        text.extend_from_slice(b": ");
        text.extend_from_slice(message);
        text.push(b'\n');
        // Nothing sensible to do if stderr is gone; the exit status still says what happened.
        let _ = std::io::stderr().write_all(&text);
    }

    /// Counts one level of recursion; false (after an error) when too deep.
    fn enter_nesting(&mut self) -> bool {
        if self.nesting == MAX_NESTING {
            self.error_at_current("Too much nesting.");
            return false;
        }
        self.nesting += 1;
        true
    }

    fn leave_nesting(&mut self) {
        self.nesting -= 1;
    }

    // ---- functions ----

    fn function_state(&mut self) -> &mut FunctionState<'src> {
        let last = self.functions.len() - 1;
        &mut self.functions[last]
    }

    fn begin_function(&mut self, kind: FunctionKind) {
        let proto = self.vm.program.protos.len();
        if proto >= crate::vm::region::MAX_PROTOS {
            // kiln-lox only: the VM region's table of code entries holds 2 million functions.
            self.error("Too many functions in the program.");
        }
        self.vm.program_mut().protos.push(Proto::default());
        let name = (kind != FunctionKind::Script).then(|| Box::<[u8]>::from(self.previous.text));
        let slot_zero: &'static [u8] = if kind == FunctionKind::Function {
            b""
        } else {
            b"this"
        };
        self.functions.push(FunctionState {
            kind,
            proto,
            name,
            arity: 0,
            code: Vec::new(),
            lines: Vec::new(),
            clox_len: 0,
            clox_constants: 0,
            stack_depth: 1,
            max_stack: 1,
            locals: vec![Local {
                name: slot_zero,
                depth: 0,
                captured: false,
            }],
            upvalues: Vec::new(),
            scope_depth: 0,
        });
    }

    /// Finishes the innermost function: its prototype is complete and its code is in the
    /// program. Returns the prototype's index and the upvalues its closures capture.
    fn end_function(&mut self) -> (usize, Vec<UpvalueRef>) {
        self.emit_return();
        let Some(f) = self.functions.pop() else {
            unreachable!("a function is being compiled")
        };
        let program = self.vm.program_mut();
        let proto = Proto {
            name: f.name,
            arity: f.arity,
            upvalue_count: f.upvalues.len(),
            code_start: program.code.len(),
            code_len: f.code.len(),
            // Two slots of headroom: slow paths park a value on the stack while allocating.
            max_stack: f.max_stack as usize + 2,
        };
        program.code.extend_from_slice(&f.code);
        program.lines.extend_from_slice(&f.lines);
        program.protos[f.proto] = proto;
        (f.proto, f.upvalues)
    }

    fn begin_scope(&mut self) {
        self.function_state().scope_depth += 1;
    }

    fn end_scope(&mut self) {
        self.function_state().scope_depth -= 1;
        loop {
            let f = self.function_state();
            let Some(local) = f.locals.last().copied() else {
                break;
            };
            if local.depth <= f.scope_depth {
                break;
            }
            f.locals.pop();
            let opcode = if local.captured {
                op::CLOSE_UPVALUE
            } else {
                op::POP
            };
            self.emit_op(opcode);
        }
    }

    // ---- variables ----

    fn resolve_local(&mut self, function: usize, name: &[u8]) -> Option<usize> {
        let found = self.functions[function]
            .locals
            .iter()
            .rposition(|l| l.name == name)?;
        if self.functions[function].locals[found].depth == -1 {
            self.error("Can't read local variable in its own initializer.");
        }
        Some(found)
    }

    fn resolve_upvalue(&mut self, function: usize, name: &[u8]) -> Option<usize> {
        if function == 0 {
            return None;
        }
        if let Some(local) = self.resolve_local(function - 1, name) {
            self.functions[function - 1].locals[local].captured = true;
            return Some(self.add_upvalue(function, local as u8, true));
        }
        let upvalue = self.resolve_upvalue(function - 1, name)?;
        Some(self.add_upvalue(function, upvalue as u8, false))
    }

    fn add_upvalue(&mut self, function: usize, index: u8, is_local: bool) -> usize {
        let wanted = UpvalueRef { index, is_local };
        if let Some(i) = self.functions[function]
            .upvalues
            .iter()
            .position(|&u| u == wanted)
        {
            return i;
        }
        if self.functions[function].upvalues.len() == MAX_UPVALUES {
            self.error("Too many closure variables in function.");
            return 0;
        }
        self.functions[function].upvalues.push(wanted);
        self.functions[function].upvalues.len() - 1
    }

    fn add_local(&mut self, name: &'src [u8]) {
        if self.function_state().locals.len() == MAX_LOCALS {
            self.error("Too many local variables in function.");
            return;
        }
        self.function_state().locals.push(Local {
            name,
            depth: -1,
            captured: false,
        });
    }

    fn declare_variable(&mut self) {
        if self.function_state().scope_depth == 0 {
            return;
        }
        let name = self.previous.text;
        let f = self.function_state();
        let duplicate = f
            .locals
            .iter()
            .rev()
            .take_while(|l| l.depth == -1 || l.depth >= f.scope_depth)
            .any(|l| l.name == name);
        if duplicate {
            self.error("Already a variable with this name in this scope.");
        }
        self.add_local(name);
    }

    /// Parses a variable name; returns its global slot at top level (0 for a local).
    fn parse_variable(&mut self, message: &str) -> u32 {
        self.consume(TokenKind::Identifier, message);
        self.declare_variable();
        if self.function_state().scope_depth > 0 {
            return 0;
        }
        self.count_constant();
        self.global_slot(self.previous.text)
    }

    fn mark_initialized(&mut self) {
        let f = self.function_state();
        if f.scope_depth == 0 {
            return;
        }
        let depth = f.scope_depth;
        if let Some(local) = f.locals.last_mut() {
            local.depth = depth;
        }
    }

    fn define_variable(&mut self, global: u32) {
        if self.function_state().scope_depth > 0 {
            self.mark_initialized();
            return;
        }
        self.emit_op_u32(op::DEFINE_GLOBAL, global, 2);
    }

    // ---- constants ----

    /// Counts a constant in the function's chunk as clox does, reporting clox's error when the
    /// chunk would hold more than 256.
    fn count_constant(&mut self) {
        let f = self.function_state();
        f.clox_constants += 1;
        if f.clox_constants > MAX_CONSTANTS {
            self.error("Too many constants in one chunk.");
        }
    }

    /// Adds `value` to the VM's constants (a GC root), counting it in the function's chunk.
    fn add_constant(&mut self, value: Value) -> u32 {
        self.count_constant();
        self.vm.add_constant(value).unwrap_or_else(|| {
            // kiln-lox only: the VM region holds 4 million constants in all.
            self.error("Too many constants in the program.");
            0
        })
    }

    /// Interns `bytes` and adds the string as a constant.
    fn string_constant(&mut self, bytes: &[u8]) -> u32 {
        match self.vm.intern(bytes) {
            Ok(s) => self.add_constant(s),
            Err(_) => {
                self.error("Out of memory.");
                self.add_constant(Value::NIL)
            }
        }
    }

    /// A new inline cache for the property named by constant `name`.
    fn new_inline_cache(&mut self, name: u32) -> u32 {
        self.vm.add_inline_cache(name).unwrap_or_else(|| {
            // kiln-lox only: the VM region holds 2 million property sites in all.
            self.error("Too many property accesses in the program.");
            0
        })
    }

    /// The slot of global `name`.
    fn global_slot(&mut self, name: &[u8]) -> u32 {
        self.vm.global_slot(name).unwrap_or_else(|| {
            // kiln-lox only: the VM region holds a million globals.
            self.error("Too many global variables in the program.");
            0
        })
    }

    // ---- emission ----

    fn mark(&mut self) -> Mark {
        let f = self.function_state();
        Mark {
            ours: f.code.len(),
            clox: f.clox_len,
        }
    }

    /// Appends an instruction: `bytes` in our encoding, `clox_size` bytes in clox's, moving the
    /// stack depth by `effect`.
    fn emit(&mut self, bytes: &[u8], clox_size: usize, effect: i64) {
        let line = self.previous.line;
        let f = self.function_state();
        f.code.extend_from_slice(bytes);
        f.lines.extend(std::iter::repeat_n(line, bytes.len()));
        f.clox_len += clox_size;
        f.stack_depth += effect;
        f.max_stack = f.max_stack.max(f.stack_depth);
    }

    fn emit_op(&mut self, opcode: u8) {
        self.emit(&[opcode], 1, stack_effect(opcode));
    }

    fn emit_op_u8(&mut self, opcode: u8, operand: u8) {
        self.emit(&[opcode, operand], 2, stack_effect(opcode));
    }

    fn emit_op_u32(&mut self, opcode: u8, operand: u32, clox_size: usize) {
        let [a, b, c, d] = operand.to_le_bytes();
        self.emit(&[opcode, a, b, c, d], clox_size, stack_effect(opcode));
    }

    /// An instruction with a u32 and a u8 operand (invokes); `effect` depends on the count.
    fn emit_op_u32_u8(&mut self, opcode: u8, operand: u32, count: u8, effect: i64) {
        let [a, b, c, d] = operand.to_le_bytes();
        self.emit(&[opcode, a, b, c, d, count], 3, effect);
    }

    /// Emits a forward jump with a placeholder distance; returns where to patch.
    fn emit_jump(&mut self, opcode: u8) -> Mark {
        self.emit_op_u32(opcode, u32::MAX, 3);
        let end = self.mark();
        Mark {
            ours: end.ours - 4,
            clox: end.clox - 2,
        }
    }

    fn patch_jump(&mut self, jump: Mark) {
        let here = self.mark();
        if here.clox - jump.clox - 2 > MAX_JUMP {
            self.error("Too much code to jump over.");
        }
        let distance = (here.ours - jump.ours - 4) as u32;
        self.function_state().code[jump.ours..jump.ours + 4]
            .copy_from_slice(&distance.to_le_bytes());
    }

    fn emit_loop(&mut self, start: Mark) {
        let here = self.mark();
        if here.clox + 3 - start.clox > MAX_JUMP {
            self.error("Loop body too large.");
        }
        let distance = (here.ours + 5 - start.ours) as u32;
        self.emit_op_u32(op::LOOP, distance, 3);
    }

    fn emit_return(&mut self) {
        if self.function_state().kind == FunctionKind::Initializer {
            self.emit_op_u8(op::GET_LOCAL, 0);
        } else {
            self.emit_op(op::NIL);
        }
        self.emit_op(op::RETURN);
    }

    /// Sets the stack depth where control merges from a jump that skipped a pop.
    fn set_stack_depth(&mut self, depth: i64) {
        let f = self.function_state();
        f.stack_depth = depth;
        f.max_stack = f.max_stack.max(depth);
    }

    fn stack_depth(&mut self) -> i64 {
        self.function_state().stack_depth
    }
}

/// Stack effect of an instruction with a fixed effect (calls and invokes pass theirs).
fn stack_effect(opcode: u8) -> i64 {
    match opcode {
        op::CONSTANT
        | op::NIL
        | op::TRUE
        | op::FALSE
        | op::GET_LOCAL
        | op::GET_GLOBAL
        | op::GET_UPVALUE
        | op::CLOSURE
        | op::CLASS => 1,
        op::POP
        | op::DEFINE_GLOBAL
        | op::SET_PROPERTY
        | op::GET_SUPER
        | op::EQUAL
        | op::GREATER
        | op::LESS
        | op::ADD
        | op::SUBTRACT
        | op::MULTIPLY
        | op::DIVIDE
        | op::PRINT
        | op::CLOSE_UPVALUE
        | op::RETURN
        | op::INHERIT
        | op::METHOD => -1,
        _ => 0,
    }
}
