//! Toy: a small language of `i64`s compiled with cranelift-frontend.
//!
//! ```text
//! program := ("fn" name "(" names ")" block)*
//! block   := "{" stmt* "}"
//! stmt    := "let" name "=" expr ";" | name "=" expr ";" | "return" expr ";" | expr ";"
//!          | "if" expr block ("else" (block | stmt-if))? | "while" expr block
//! expr    := comparison of sums of products of unary minus of
//!            number | name | name "(" exprs ")" | "(" expr ")"
//! ```
//! Comparisons give 0 or 1; `if` and `while` test for non-zero; a function that falls off its
//! end returns 0.

use cranelift_codegen::ir::{condcodes::IntCC, types::I64, AbiParam, InstBuilder, Value};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_module::{FuncId, Linkage, Module};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(i64),
    Name(String),
    Sym(&'static str),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    const SYMS: [&str; 19] = [
        "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "(", ")", "{", "}", ",", ";",
        "=", "!",
    ];
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    'next: while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Tok::Num(src[start..i].parse().map_err(|e| format!("{e}"))?));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Name(src[start..i].to_string()));
        } else {
            for s in SYMS {
                if src[i..].starts_with(s) {
                    out.push(Tok::Sym(s));
                    i += s.len();
                    continue 'next;
                }
            }
            return Err(format!("unexpected character {:?} at {i}", c as char));
        }
    }
    Ok(out)
}

#[derive(Debug)]
enum Expr {
    Num(i64),
    Var(String),
    Call(String, Vec<Expr>),
    Neg(Box<Expr>),
    Bin(&'static str, Box<Expr>, Box<Expr>),
}

#[derive(Debug)]
enum Stmt {
    Let(String, Expr),
    Assign(String, Expr),
    Return(Expr),
    Expr(Expr),
    If(Expr, Vec<Stmt>, Vec<Stmt>),
    While(Expr, Vec<Stmt>),
}

#[derive(Debug)]
pub struct Func {
    name: String,
    params: Vec<String>,
    body: Vec<Stmt>,
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    fn next(&mut self) -> Result<Tok, String> {
        let t = self.toks.get(self.at).cloned().ok_or("unexpected end")?;
        self.at += 1;
        Ok(t)
    }
    fn eat(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.at += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, s: &str) -> Result<(), String> {
        if self.eat(s) {
            Ok(())
        } else {
            Err(format!("expected {s:?}, found {:?}", self.peek()))
        }
    }
    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Name(x)) if x == k) {
            self.at += 1;
            true
        } else {
            false
        }
    }
    fn name(&mut self) -> Result<String, String> {
        match self.next()? {
            Tok::Name(n) => Ok(n),
            t => Err(format!("expected a name, found {t:?}")),
        }
    }

    fn program(&mut self) -> Result<Vec<Func>, String> {
        let mut funcs = Vec::new();
        while self.peek().is_some() {
            if !self.keyword("fn") {
                return Err(format!("expected fn, found {:?}", self.peek()));
            }
            let name = self.name()?;
            self.expect("(")?;
            let mut params = Vec::new();
            while !self.eat(")") {
                params.push(self.name()?);
                if !self.eat(",") {
                    self.expect(")")?;
                    break;
                }
            }
            let body = self.block()?;
            funcs.push(Func { name, params, body });
        }
        Ok(funcs)
    }

    fn block(&mut self) -> Result<Vec<Stmt>, String> {
        self.expect("{")?;
        let mut out = Vec::new();
        while !self.eat("}") {
            out.push(self.stmt()?);
        }
        Ok(out)
    }

    fn stmt(&mut self) -> Result<Stmt, String> {
        if self.keyword("let") {
            let n = self.name()?;
            self.expect("=")?;
            let e = self.expr()?;
            self.expect(";")?;
            return Ok(Stmt::Let(n, e));
        }
        if self.keyword("return") {
            let e = self.expr()?;
            self.expect(";")?;
            return Ok(Stmt::Return(e));
        }
        if self.keyword("if") {
            let c = self.expr()?;
            let then = self.block()?;
            let otherwise = if self.keyword("else") {
                if matches!(self.peek(), Some(Tok::Name(k)) if k == "if") {
                    vec![self.stmt()?]
                } else {
                    self.block()?
                }
            } else {
                Vec::new()
            };
            return Ok(Stmt::If(c, then, otherwise));
        }
        if self.keyword("while") {
            let c = self.expr()?;
            return Ok(Stmt::While(c, self.block()?));
        }
        if let (Some(Tok::Name(n)), Some(Tok::Sym("="))) =
            (self.toks.get(self.at), self.toks.get(self.at + 1))
        {
            let n = n.clone();
            self.at += 2;
            let e = self.expr()?;
            self.expect(";")?;
            return Ok(Stmt::Assign(n, e));
        }
        let e = self.expr()?;
        self.expect(";")?;
        Ok(Stmt::Expr(e))
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let l = self.sum()?;
        for op in ["==", "!=", "<=", ">=", "<", ">"] {
            if self.eat(op) {
                return Ok(Expr::Bin(op, Box::new(l), Box::new(self.sum()?)));
            }
        }
        Ok(l)
    }

    fn binary(
        &mut self,
        ops: &[&'static str],
        sub: fn(&mut Self) -> Result<Expr, String>,
    ) -> Result<Expr, String> {
        let mut l = sub(self)?;
        'more: loop {
            for op in ops {
                if self.eat(op) {
                    l = Expr::Bin(op, Box::new(l), Box::new(sub(self)?));
                    continue 'more;
                }
            }
            return Ok(l);
        }
    }

    fn sum(&mut self) -> Result<Expr, String> {
        self.binary(&["+", "-"], Self::product)
    }

    fn product(&mut self) -> Result<Expr, String> {
        self.binary(&["*", "/", "%"], Self::unary)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("-") {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        match self.next()? {
            Tok::Num(n) => Ok(Expr::Num(n)),
            Tok::Sym("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Name(n) if self.eat("(") => {
                let mut args = Vec::new();
                while !self.eat(")") {
                    args.push(self.expr()?);
                    if !self.eat(",") {
                        self.expect(")")?;
                        break;
                    }
                }
                Ok(Expr::Call(n, args))
            }
            Tok::Name(n) => Ok(Expr::Var(n)),
            t => Err(format!("unexpected {t:?}")),
        }
    }
}

pub fn parse(src: &str) -> Result<Vec<Func>, String> {
    Parser {
        toks: lex(src)?,
        at: 0,
    }
    .program()
}

/// Declare and define every function of `src` in `m` (not finalized). Functions may call each
/// other and any function declared in `m` before (by name, with `i64` parameters).
pub fn compile<M: Module>(m: &mut M, src: &str) -> Result<HashMap<String, FuncId>, String> {
    let funcs = parse(src)?;
    let mut ids = HashMap::new();
    for f in &funcs {
        let sig = signature(m, f.params.len());
        let id = m
            .declare_function(&f.name, Linkage::Export, &sig)
            .map_err(|e| e.to_string())?;
        ids.insert(f.name.clone(), id);
    }
    for f in &funcs {
        let id = ids[&f.name];
        let config = m.target_config();
        let mut ctx = m.make_context();
        ctx.func.signature = signature(m, f.params.len());
        let mut fctx = FunctionBuilderContext::new();
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let mut g = Gen {
            vars: HashMap::new(),
        };
        for (i, p) in f.params.iter().enumerate() {
            let v = b.declare_var(I64);
            let arg = b.block_params(entry)[i];
            b.def_var(v, arg);
            g.vars.insert(p.clone(), v);
        }
        g.stmts(m, &mut b, &f.body)?;
        let zero = b.ins().iconst(I64, 0);
        b.ins().return_(&[zero]);
        b.seal_all_blocks();
        b.finalize(config);
        m.define_function(id, &mut ctx)
            .map_err(|e| format!("{}: {e:?}", f.name))?;
    }
    Ok(ids)
}

fn signature<M: Module>(m: &M, params: usize) -> cranelift_codegen::ir::Signature {
    let mut s = m.make_signature();
    s.params.extend((0..params).map(|_| AbiParam::new(I64)));
    s.returns.push(AbiParam::new(I64));
    s
}

struct Gen {
    vars: HashMap<String, Variable>,
}

impl Gen {
    fn stmts<M: Module>(
        &mut self,
        m: &mut M,
        b: &mut FunctionBuilder,
        stmts: &[Stmt],
    ) -> Result<(), String> {
        for s in stmts {
            match s {
                Stmt::Let(n, e) => {
                    let v = self.expr(m, b, e)?;
                    let var = b.declare_var(I64);
                    b.def_var(var, v);
                    self.vars.insert(n.clone(), var);
                }
                Stmt::Assign(n, e) => {
                    let v = self.expr(m, b, e)?;
                    let var = *self
                        .vars
                        .get(n)
                        .ok_or(format!("assignment to unknown {n}"))?;
                    b.def_var(var, v);
                }
                Stmt::Return(e) => {
                    let v = self.expr(m, b, e)?;
                    b.ins().return_(&[v]);
                    // Whatever follows is unreachable; it still needs a block to live in.
                    let dead = b.create_block();
                    b.switch_to_block(dead);
                }
                Stmt::Expr(e) => {
                    self.expr(m, b, e)?;
                }
                Stmt::If(c, then, otherwise) => {
                    let c = self.expr(m, b, c)?;
                    let (t, e, join) = (b.create_block(), b.create_block(), b.create_block());
                    b.ins().brif(c, t, &[], e, &[]);
                    b.switch_to_block(t);
                    self.stmts(m, b, then)?;
                    b.ins().jump(join, &[]);
                    b.switch_to_block(e);
                    self.stmts(m, b, otherwise)?;
                    b.ins().jump(join, &[]);
                    b.switch_to_block(join);
                }
                Stmt::While(c, body) => {
                    let (head, inner, exit) =
                        (b.create_block(), b.create_block(), b.create_block());
                    b.ins().jump(head, &[]);
                    b.switch_to_block(head);
                    let c = self.expr(m, b, c)?;
                    b.ins().brif(c, inner, &[], exit, &[]);
                    b.switch_to_block(inner);
                    self.stmts(m, b, body)?;
                    b.ins().jump(head, &[]);
                    b.switch_to_block(exit);
                }
            }
        }
        Ok(())
    }

    fn expr<M: Module>(
        &mut self,
        m: &mut M,
        b: &mut FunctionBuilder,
        e: &Expr,
    ) -> Result<Value, String> {
        Ok(match e {
            Expr::Num(n) => b.ins().iconst(I64, *n),
            Expr::Var(n) => b.use_var(*self.vars.get(n).ok_or(format!("unknown variable {n}"))?),
            Expr::Neg(x) => {
                let v = self.expr(m, b, x)?;
                b.ins().ineg(v)
            }
            Expr::Call(name, args) => {
                let Some(cranelift_module::FuncOrDataId::Func(id)) = m.get_name(name) else {
                    return Err(format!("unknown function {name}"));
                };
                let vals = args
                    .iter()
                    .map(|a| self.expr(m, b, a))
                    .collect::<Result<Vec<_>, _>>()?;
                let f = m.declare_func_in_func(id, b.func);
                let c = b.ins().call(f, &vals);
                b.inst_results(c)[0]
            }
            Expr::Bin(op, l, r) => {
                let (l, r) = (self.expr(m, b, l)?, self.expr(m, b, r)?);
                let cmp = |b: &mut FunctionBuilder, cc| {
                    let c = b.ins().icmp(cc, l, r);
                    b.ins().uextend(I64, c)
                };
                match *op {
                    "+" => b.ins().iadd(l, r),
                    "-" => b.ins().isub(l, r),
                    "*" => b.ins().imul(l, r),
                    "/" => b.ins().sdiv(l, r),
                    "%" => b.ins().srem(l, r),
                    "==" => cmp(b, IntCC::Equal),
                    "!=" => cmp(b, IntCC::NotEqual),
                    "<" => cmp(b, IntCC::SignedLessThan),
                    "<=" => cmp(b, IntCC::SignedLessThanOrEqual),
                    ">" => cmp(b, IntCC::SignedGreaterThan),
                    ">=" => cmp(b, IntCC::SignedGreaterThanOrEqual),
                    other => return Err(format!("unknown operator {other}")),
                }
            }
        })
    }
}
