//! Declarations and statements, with clox's panic-mode recovery.

use super::{ClassState, Compiler, FunctionKind};
use crate::bytecode::op;
use crate::scanner::TokenKind;

impl<'src> Compiler<'src, '_> {
    pub(super) fn declaration(&mut self) {
        if !self.enter_nesting() {
            // Consume a token so that a block of too-deep statements still ends.
            self.advance();
            self.synchronize();
            return;
        }
        if self.matches(TokenKind::Class) {
            self.class_declaration();
        } else if self.matches(TokenKind::Fun) {
            self.fun_declaration();
        } else if self.matches(TokenKind::Var) {
            self.var_declaration();
        } else {
            self.statement();
        }
        if self.panic_mode {
            self.synchronize();
        }
        self.leave_nesting();
    }

    /// Skips tokens to a likely statement boundary after an error.
    fn synchronize(&mut self) {
        use TokenKind as K;
        self.panic_mode = false;
        while self.current.kind != K::Eof {
            if self.previous.kind == K::Semicolon {
                return;
            }
            if matches!(
                self.current.kind,
                K::Class | K::Fun | K::Var | K::For | K::If | K::While | K::Print | K::Return
            ) {
                return;
            }
            self.advance();
        }
    }

    fn class_declaration(&mut self) {
        self.consume(TokenKind::Identifier, "Expect class name.");
        let class_name = self.previous.text;
        let name_constant = self.string_constant(class_name);
        let global = self.global_slot(class_name);
        self.declare_variable();
        self.emit_op_u32(op::CLASS, name_constant, 2);
        self.define_variable(global);

        self.classes.push(ClassState {
            has_superclass: false,
        });
        if self.matches(TokenKind::Less) {
            self.consume(TokenKind::Identifier, "Expect superclass name.");
            self.named_variable(self.previous.text, false);
            if class_name == self.previous.text {
                self.error("A class can't inherit from itself.");
            }
            self.begin_scope();
            self.add_local(b"super");
            self.define_variable(0);
            self.named_variable(class_name, false);
            self.emit_op(op::INHERIT);
            if let Some(class) = self.classes.last_mut() {
                class.has_superclass = true;
            }
        }

        self.named_variable(class_name, false);
        self.consume(TokenKind::LeftBrace, "Expect '{' before class body.");
        while !self.check(TokenKind::RightBrace) && !self.check(TokenKind::Eof) {
            self.method();
        }
        self.consume(TokenKind::RightBrace, "Expect '}' after class body.");
        self.emit_op(op::POP);

        if self.classes.pop().is_some_and(|class| class.has_superclass) {
            self.end_scope();
        }
    }

    fn method(&mut self) {
        self.consume(TokenKind::Identifier, "Expect method name.");
        let name = self.string_constant(self.previous.text);
        let kind = if self.previous.text == b"init" {
            FunctionKind::Initializer
        } else {
            FunctionKind::Method
        };
        self.function(kind);
        self.emit_op_u32(op::METHOD, name, 2);
    }

    fn fun_declaration(&mut self) {
        let global = self.parse_variable("Expect function name.");
        self.mark_initialized();
        self.function(FunctionKind::Function);
        self.define_variable(global);
    }

    fn var_declaration(&mut self) {
        let global = self.parse_variable("Expect variable name.");
        if self.matches(TokenKind::Equal) {
            self.expression();
        } else {
            self.emit_op(op::NIL);
        }
        self.consume(
            TokenKind::Semicolon,
            "Expect ';' after variable declaration.",
        );
        self.define_variable(global);
    }

    fn statement(&mut self) {
        if self.matches(TokenKind::Print) {
            self.expression();
            self.consume(TokenKind::Semicolon, "Expect ';' after value.");
            self.emit_op(op::PRINT);
        } else if self.matches(TokenKind::For) {
            self.for_statement();
        } else if self.matches(TokenKind::If) {
            self.if_statement();
        } else if self.matches(TokenKind::Return) {
            self.return_statement();
        } else if self.matches(TokenKind::While) {
            self.while_statement();
        } else if self.matches(TokenKind::LeftBrace) {
            self.begin_scope();
            self.block();
            self.end_scope();
        } else {
            self.expression_statement();
        }
    }

    pub(super) fn block(&mut self) {
        while !self.check(TokenKind::RightBrace) && !self.check(TokenKind::Eof) {
            self.declaration();
        }
        self.consume(TokenKind::RightBrace, "Expect '}' after block.");
    }

    fn expression_statement(&mut self) {
        self.expression();
        self.consume(TokenKind::Semicolon, "Expect ';' after expression.");
        self.emit_op(op::POP);
    }

    fn if_statement(&mut self) {
        self.consume(TokenKind::LeftParen, "Expect '(' after 'if'.");
        self.expression();
        self.consume(TokenKind::RightParen, "Expect ')' after condition.");

        let then_jump = self.emit_jump(op::JUMP_IF_FALSE);
        let with_condition = self.stack_depth();
        self.emit_op(op::POP);
        self.statement();
        let else_jump = self.emit_jump(op::JUMP);

        self.patch_jump(then_jump);
        // The else branch starts where the condition jumped, with the condition on the stack.
        self.set_stack_depth(with_condition);
        self.emit_op(op::POP);
        if self.matches(TokenKind::Else) {
            self.statement();
        }
        self.patch_jump(else_jump);
    }

    fn while_statement(&mut self) {
        let loop_start = self.mark();
        self.consume(TokenKind::LeftParen, "Expect '(' after 'while'.");
        self.expression();
        self.consume(TokenKind::RightParen, "Expect ')' after condition.");

        let exit_jump = self.emit_jump(op::JUMP_IF_FALSE);
        let with_condition = self.stack_depth();
        self.emit_op(op::POP);
        self.statement();
        self.emit_loop(loop_start);

        self.patch_jump(exit_jump);
        self.set_stack_depth(with_condition);
        self.emit_op(op::POP);
    }

    fn for_statement(&mut self) {
        self.begin_scope();
        self.consume(TokenKind::LeftParen, "Expect '(' after 'for'.");
        if self.matches(TokenKind::Semicolon) {
            // No initializer.
        } else if self.matches(TokenKind::Var) {
            self.var_declaration();
        } else {
            self.expression_statement();
        }

        let mut loop_start = self.mark();
        let mut exit = None;
        if !self.matches(TokenKind::Semicolon) {
            self.expression();
            self.consume(TokenKind::Semicolon, "Expect ';' after loop condition.");
            let jump = self.emit_jump(op::JUMP_IF_FALSE);
            exit = Some((jump, self.stack_depth()));
            self.emit_op(op::POP);
        }

        if !self.matches(TokenKind::RightParen) {
            let body_jump = self.emit_jump(op::JUMP);
            let increment_start = self.mark();
            self.expression();
            self.emit_op(op::POP);
            self.consume(TokenKind::RightParen, "Expect ')' after for clauses.");
            self.emit_loop(loop_start);
            loop_start = increment_start;
            self.patch_jump(body_jump);
        }

        self.statement();
        self.emit_loop(loop_start);

        if let Some((jump, with_condition)) = exit {
            self.patch_jump(jump);
            self.set_stack_depth(with_condition);
            self.emit_op(op::POP);
        }
        self.end_scope();
    }

    fn return_statement(&mut self) {
        if self.function_state().kind == FunctionKind::Script {
            self.error("Can't return from top-level code.");
        }
        if self.matches(TokenKind::Semicolon) {
            self.emit_return();
        } else {
            if self.function_state().kind == FunctionKind::Initializer {
                self.error("Can't return a value from an initializer.");
            }
            self.expression();
            self.consume(TokenKind::Semicolon, "Expect ';' after return value.");
            self.emit_op(op::RETURN);
        }
    }
}
