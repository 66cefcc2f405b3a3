//! Expressions: precedence climbing over clox's rule table.

use super::{Compiler, FunctionKind};
use crate::bytecode::op;
use crate::scanner::TokenKind;
use crate::value::Value;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) enum Precedence {
    None,
    Assignment,
    Or,
    And,
    Equality,
    Comparison,
    Term,
    Factor,
    Unary,
    Call,
    Primary,
}

impl Precedence {
    fn next(self) -> Precedence {
        use Precedence as P;
        match self {
            P::None => P::Assignment,
            P::Assignment => P::Or,
            P::Or => P::And,
            P::And => P::Equality,
            P::Equality => P::Comparison,
            P::Comparison => P::Term,
            P::Term => P::Factor,
            P::Factor => P::Unary,
            P::Unary => P::Call,
            P::Call | P::Primary => P::Primary,
        }
    }
}

/// Precedence of `kind` as an infix operator.
fn infix_precedence(kind: TokenKind) -> Precedence {
    use Precedence as P;
    use TokenKind as K;
    match kind {
        K::LeftParen | K::Dot => P::Call,
        K::Minus | K::Plus => P::Term,
        K::Slash | K::Star => P::Factor,
        K::BangEqual | K::EqualEqual => P::Equality,
        K::Greater | K::GreaterEqual | K::Less | K::LessEqual => P::Comparison,
        K::And => P::And,
        K::Or => P::Or,
        _ => P::None,
    }
}

impl<'src> Compiler<'src, '_> {
    pub(super) fn expression(&mut self) {
        self.parse_precedence(Precedence::Assignment);
    }

    fn parse_precedence(&mut self, precedence: Precedence) {
        if !self.enter_nesting() {
            return;
        }
        self.advance();
        let can_assign = precedence <= Precedence::Assignment;
        if self.prefix(self.previous.kind, can_assign) {
            while precedence <= infix_precedence(self.current.kind) {
                self.advance();
                self.infix(self.previous.kind, can_assign);
            }
            if can_assign && self.matches(TokenKind::Equal) {
                self.error("Invalid assignment target.");
            }
        } else {
            self.error("Expect expression.");
        }
        self.leave_nesting();
    }

    /// Compiles the prefix expression starting with `kind`; false when there is none.
    fn prefix(&mut self, kind: TokenKind, can_assign: bool) -> bool {
        use TokenKind as K;
        match kind {
            K::LeftParen => self.grouping(),
            K::Minus | K::Bang => self.unary(kind),
            K::Number => self.number(),
            K::String => self.string(),
            K::Nil => self.emit_op(op::NIL),
            K::True => self.emit_op(op::TRUE),
            K::False => self.emit_op(op::FALSE),
            K::Identifier => self.named_variable(self.previous.text, can_assign),
            K::This => self.this(),
            K::Super => self.super_(),
            _ => return false,
        }
        true
    }

    fn infix(&mut self, kind: TokenKind, can_assign: bool) {
        use TokenKind as K;
        match kind {
            K::LeftParen => {
                let count = self.argument_list();
                self.emit(&[op::CALL, count], 2, -i64::from(count));
            }
            K::Dot => self.dot(can_assign),
            K::And => self.and(),
            K::Or => self.or(),
            _ => self.binary(kind),
        }
    }

    fn grouping(&mut self) {
        self.expression();
        self.consume(TokenKind::RightParen, "Expect ')' after expression.");
    }

    fn unary(&mut self, operator: TokenKind) {
        self.parse_precedence(Precedence::Unary);
        self.emit_op(if operator == TokenKind::Minus {
            op::NEGATE
        } else {
            op::NOT
        });
    }

    fn binary(&mut self, operator: TokenKind) {
        use TokenKind as K;
        self.parse_precedence(infix_precedence(operator).next());
        match operator {
            K::BangEqual => {
                self.emit_op(op::EQUAL);
                self.emit_op(op::NOT);
            }
            K::EqualEqual => self.emit_op(op::EQUAL),
            K::Greater => self.emit_op(op::GREATER),
            K::GreaterEqual => {
                self.emit_op(op::LESS);
                self.emit_op(op::NOT);
            }
            K::Less => self.emit_op(op::LESS),
            K::LessEqual => {
                self.emit_op(op::GREATER);
                self.emit_op(op::NOT);
            }
            K::Plus => self.emit_op(op::ADD),
            K::Minus => self.emit_op(op::SUBTRACT),
            K::Star => self.emit_op(op::MULTIPLY),
            K::Slash => self.emit_op(op::DIVIDE),
            _ => unreachable!("binary() is only called for binary operators"),
        }
    }

    fn and(&mut self) {
        let end = self.emit_jump(op::JUMP_IF_FALSE);
        self.emit_op(op::POP);
        self.parse_precedence(Precedence::And);
        self.patch_jump(end);
    }

    fn or(&mut self) {
        let else_jump = self.emit_jump(op::JUMP_IF_FALSE);
        let end = self.emit_jump(op::JUMP);
        self.patch_jump(else_jump);
        self.emit_op(op::POP);
        self.parse_precedence(Precedence::Or);
        self.patch_jump(end);
    }

    fn number(&mut self) {
        // The scanner only lets digits and one inner '.' through: always a valid float.
        let value = std::str::from_utf8(self.previous.text)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
        let k = self.add_constant(Value::number(value));
        self.emit_op_u32(op::CONSTANT, k, 2);
    }

    fn string(&mut self) {
        let text = self.previous.text;
        let k = self.string_constant(&text[1..text.len() - 1]);
        self.emit_op_u32(op::CONSTANT, k, 2);
    }

    fn argument_list(&mut self) -> u8 {
        let mut count: usize = 0;
        if !self.check(TokenKind::RightParen) {
            loop {
                self.expression();
                if count == 255 {
                    self.error("Can't have more than 255 arguments.");
                }
                count += 1;
                if !self.matches(TokenKind::Comma) {
                    break;
                }
            }
        }
        self.consume(TokenKind::RightParen, "Expect ')' after arguments.");
        // clox keeps the count in a byte: 256 arguments wrap to 0 (after the error).
        count as u8
    }

    fn dot(&mut self, can_assign: bool) {
        self.consume(TokenKind::Identifier, "Expect property name after '.'.");
        let name = self.string_constant(self.previous.text);
        let ic = self.new_inline_cache(name);
        if can_assign && self.matches(TokenKind::Equal) {
            self.expression();
            self.emit_op_u32(op::SET_PROPERTY, ic, 2);
        } else if self.matches(TokenKind::LeftParen) {
            let count = self.argument_list();
            self.emit_op_u32_u8(op::INVOKE, ic, count, -i64::from(count));
        } else {
            self.emit_op_u32(op::GET_PROPERTY, ic, 2);
        }
    }

    /// Compiles a read of (or, with `=`, an assignment to) the variable `name`.
    pub(super) fn named_variable(&mut self, name: &'src [u8], can_assign: bool) {
        let function = self.functions.len() - 1;
        let (get, set, operand) = if let Some(slot) = self.resolve_local(function, name) {
            (op::GET_LOCAL, op::SET_LOCAL, slot as u32)
        } else if let Some(index) = self.resolve_upvalue(function, name) {
            (op::GET_UPVALUE, op::SET_UPVALUE, index as u32)
        } else {
            self.count_constant();
            (op::GET_GLOBAL, op::SET_GLOBAL, self.global_slot(name))
        };
        let opcode = if can_assign && self.matches(TokenKind::Equal) {
            self.expression();
            set
        } else {
            get
        };
        if opcode == op::GET_GLOBAL || opcode == op::SET_GLOBAL {
            self.emit_op_u32(opcode, operand, 2);
        } else {
            // Locals and upvalues number below 256.
            self.emit_op_u8(opcode, operand as u8);
        }
    }

    fn this(&mut self) {
        if self.classes.is_empty() {
            self.error("Can't use 'this' outside of a class.");
            return;
        }
        self.named_variable(self.previous.text, false);
    }

    fn super_(&mut self) {
        match self.classes.last() {
            None => self.error("Can't use 'super' outside of a class."),
            Some(class) if !class.has_superclass => {
                self.error("Can't use 'super' in a class with no superclass.")
            }
            Some(_) => {}
        }
        self.consume(TokenKind::Dot, "Expect '.' after 'super'.");
        self.consume(TokenKind::Identifier, "Expect superclass method name.");
        let name = self.string_constant(self.previous.text);
        let ic = self.new_inline_cache(name);
        self.named_variable(b"this", false);
        if self.matches(TokenKind::LeftParen) {
            let count = self.argument_list();
            self.named_variable(b"super", false);
            self.emit_op_u32_u8(op::SUPER_INVOKE, ic, count, -i64::from(count) - 1);
        } else {
            self.named_variable(b"super", false);
            self.emit_op_u32(op::GET_SUPER, ic, 2);
        }
    }

    /// Compiles a function's parameters and body, then the closure that creates it.
    pub(super) fn function(&mut self, kind: FunctionKind) {
        self.begin_function(kind);
        self.begin_scope();
        self.consume(TokenKind::LeftParen, "Expect '(' after function name.");
        if !self.check(TokenKind::RightParen) {
            loop {
                self.function_state().arity += 1;
                if self.function_state().arity > 255 {
                    self.error_at_current("Can't have more than 255 parameters.");
                }
                let global = self.parse_variable("Expect parameter name.");
                self.define_variable(global);
                let depth = self.stack_depth() + 1;
                self.set_stack_depth(depth);
                if !self.matches(TokenKind::Comma) {
                    break;
                }
            }
        }
        self.consume(TokenKind::RightParen, "Expect ')' after parameters.");
        self.consume(TokenKind::LeftBrace, "Expect '{' before function body.");
        self.block();
        let (proto, upvalues) = self.end_function();

        self.count_constant();
        let mut bytes = vec![op::CLOSURE];
        bytes.extend_from_slice(&(proto as u32).to_le_bytes());
        for upvalue in &upvalues {
            bytes.extend_from_slice(&[u8::from(upvalue.is_local), upvalue.index]);
        }
        self.emit(&bytes, 2 + 2 * upvalues.len(), 1);
    }
}
