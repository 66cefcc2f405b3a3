//! The expression language of check lines, parsed into an [`Expr`].
//!
//! Grammar (whitespace is allowed between any two tokens):
//!
//! ```text
//! check   := expr '=' expr
//! expr    := simple (binop simple)*            binop: + - & | << >>
//! simple  := primary ('[' NUM ':' NUM ']')*
//! primary := NUM | SYMBOL | '(' expr ')'
//!          | '*' '{' NUM '}' expr              a load: its address is the whole chain to its right
//!          | decode_operand '(' expr ',' expr ')'
//!          | next_pc '(' expr ')'
//!          | stub_addr '(' FILE ',' SYMBOL ')' | got_addr '(' FILE ',' SYMBOL ')'
//!          | section_addr '(' FILE ',' SECTION ')'
//! ```
//!
//! Binary operators have no precedence: a chain is evaluated left to right, as llvm-jitlink's
//! checker does (`1+2<<3` is 24, `0x30|0xff&0x0f` is 0xf). A load takes everything to its right
//! up to a `)`, `,` or `=`: `*{4}d + 4` loads from `d + 4`; write `(*{4}d) + 4` for the other
//! reading. A slice binds to the primary just before it: `a + b[7:0]` slices `b` only.

use std::fmt;

/// A binary operator.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    And,
    Or,
    Shl,
    Shr,
}

impl BinOp {
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::And => "&",
            BinOp::Or => "|",
            BinOp::Shl => "<<",
            BinOp::Shr => ">>",
        }
    }
}

/// A parsed expression. Values are 64-bit and wrap on overflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Num(u64),
    /// The address of a symbol.
    Symbol(String),
    /// `*{size}addr`: `size` bytes, little-endian, from the linked memory.
    Load {
        size: u8,
        addr: Box<Expr>,
    },
    /// `value[hi:lo]`: bits `hi` down to `lo`, inclusive, shifted down to bit 0.
    Slice {
        value: Box<Expr>,
        hi: u32,
        lo: u32,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// Operand `index` of the instruction at `addr`, numbered as llvm-jitlink (LLVM's MC layer)
    /// numbers them.
    DecodeOperand {
        addr: Box<Expr>,
        index: Box<Expr>,
    },
    /// The address just after the instruction at the operand.
    NextPc(Box<Expr>),
    StubAddr {
        file: String,
        symbol: String,
    },
    GotAddr {
        file: String,
        symbol: String,
    },
    SectionAddr {
        file: String,
        section: String,
    },
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Num(n) if *n < 10 => write!(f, "{n}"),
            Expr::Num(n) => write!(f, "{n:#x}"),
            Expr::Symbol(s) => f.write_str(s),
            Expr::Load { size, addr } => write!(f, "(*{{{size}}}({addr}))"),
            Expr::Slice { value, hi, lo } => write!(f, "({value})[{hi}:{lo}]"),
            Expr::Binary { op, lhs, rhs } => write!(f, "({lhs} {} {rhs})", op.as_str()),
            Expr::DecodeOperand { addr, index } => write!(f, "decode_operand({addr}, {index})"),
            Expr::NextPc(a) => write!(f, "next_pc({a})"),
            Expr::StubAddr { file, symbol } => write!(f, "stub_addr({file}, {symbol})"),
            Expr::GotAddr { file, symbol } => write!(f, "got_addr({file}, {symbol})"),
            Expr::SectionAddr { file, section } => write!(f, "section_addr({file}, {section})"),
        }
    }
}

/// A check: `lhs = rhs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub lhs: Expr,
    pub rhs: Expr,
}

/// A syntax error at a byte offset of the expression text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub pos: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.pos + 1, self.message)
    }
}

impl std::error::Error for ParseError {}

/// The functions the dialect knows.
pub const FUNCTIONS: [&str; 5] = [
    "decode_operand",
    "next_pc",
    "stub_addr",
    "got_addr",
    "section_addr",
];

/// Limits that keep evaluation (which recurses over the tree) within a small stack: user input
/// never overflows it.
const MAX_NODES: usize = 1000;
const MAX_DEPTH: usize = 64;

/// Parse `lhs = rhs`.
pub fn parse_check(src: &str) -> Result<Check, ParseError> {
    let mut p = Parser::new(src);
    p.skip_ws();
    if p.at_end() {
        return Err(p.error("empty check: expected `EXPR = EXPR`"));
    }
    let lhs = p.expr()?;
    p.skip_ws();
    match p.peek() {
        Some(b'=') if p.src[p.pos..].starts_with("==") => {
            return Err(p.error("`==`: a check compares with a single `=`"))
        }
        Some(b'=') => p.pos += 1,
        None => return Err(p.error("expected `=` and the expected value after the expression")),
        Some(_) => return Err(p.unexpected("`=` or a binary operator (+ - & | << >>)")),
    }
    let rhs = p.expr()?;
    p.skip_ws();
    if !p.at_end() {
        if p.peek() == Some(b'=') {
            return Err(p.error("a check has exactly one `=`"));
        }
        return Err(p.unexpected("a binary operator (+ - & | << >>) or the end of the check"));
    }
    Ok(Check { lhs, rhs })
}

/// Parse a lone expression (the whole text).
pub fn parse_expr(src: &str) -> Result<Expr, ParseError> {
    let mut p = Parser::new(src);
    let e = p.expr()?;
    p.skip_ws();
    if !p.at_end() {
        return Err(p.unexpected("a binary operator (+ - & | << >>) or the end"));
    }
    Ok(e)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    /// Expressions made so far, and how deeply parentheses, loads and calls nest now.
    nodes: usize,
    depth: usize,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || matches!(c, b'_' | b'.' | b'$')
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'$')
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser {
            src,
            pos: 0,
            nodes: 0,
            depth: 0,
        }
    }

    /// Count one more expression node.
    fn node(&mut self) -> Result<(), ParseError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.error(format!(
                "the check is too long (more than {MAX_NODES} terms): split it"
            )));
        }
        Ok(())
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            pos: self.pos,
            message: message.into(),
        }
    }

    /// "unexpected X, expected WHAT" at the current position.
    fn unexpected(&self, what: &str) -> ParseError {
        match self.src[self.pos..].chars().next() {
            None => self.error(format!("unexpected end of the check, expected {what}")),
            Some(c) => self.error(format!("unexpected `{c}`, expected {what}")),
        }
    }

    fn expect(&mut self, c: u8, context: &str) -> Result<(), ParseError> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{}` {context}", c as char)))
        }
    }

    fn binop(&mut self) -> Result<Option<BinOp>, ParseError> {
        self.skip_ws();
        let rest = &self.src[self.pos..];
        let (op, len) = match rest.as_bytes().first() {
            Some(b'+') => (BinOp::Add, 1),
            Some(b'-') => (BinOp::Sub, 1),
            Some(b'&') => (BinOp::And, 1),
            Some(b'|') => (BinOp::Or, 1),
            Some(b'<') if rest.starts_with("<<") => (BinOp::Shl, 2),
            Some(b'>') if rest.starts_with(">>") => (BinOp::Shr, 2),
            Some(b'<' | b'>') => {
                return Err(self.error("comparisons are not supported: the operators are + - & | << >>, and a check compares with `=`"))
            }
            Some(b'*' | b'/' | b'%' | b'^') => {
                return Err(self.error(format!(
                    "`{}` is not an operator of the dialect (+ - & | << >>)",
                    &rest[..1]
                )))
            }
            _ => return Ok(None),
        };
        self.pos += len;
        Ok(Some(op))
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!(
                "expressions nest more than {MAX_DEPTH} deep (parentheses, loads, calls)"
            )));
        }
        let e = self.chain();
        self.depth -= 1;
        e
    }

    fn chain(&mut self) -> Result<Expr, ParseError> {
        let mut lhs = self.simple()?;
        while let Some(op) = self.binop()? {
            let rhs = self.simple()?;
            self.node()?;
            lhs = Expr::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            };
        }
        Ok(lhs)
    }

    fn simple(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.primary()?;
        loop {
            self.skip_ws();
            if self.peek() != Some(b'[') {
                return Ok(e);
            }
            let start = self.pos;
            self.pos += 1;
            self.skip_ws();
            let hi = self.number()?;
            self.expect(b':', "between the bits of a slice `[HI:LO]`")?;
            self.skip_ws();
            let lo = self.number()?;
            self.expect(b']', "to close the slice `[HI:LO]`")?;
            if hi > 63 || lo > hi {
                return Err(ParseError {
                    pos: start,
                    message: format!(
                        "bad slice [{hi}:{lo}]: bits are numbered 63 (top) to 0 and HI must not be \
                         below LO"
                    ),
                });
            }
            self.node()?;
            e = Expr::Slice {
                value: Box::new(e),
                hi: hi as u32,
                lo: lo as u32,
            };
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        self.skip_ws();
        self.node()?;
        match self.peek() {
            None => Err(self
                .error("unexpected end of the check, expected a number, a symbol, `(` or `*{N}`")),
            Some(b'(') => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect(b')', "to close `(`")?;
                Ok(e)
            }
            Some(b'*') => {
                let start = self.pos;
                self.pos += 1;
                self.expect(b'{', "after `*`: a load is written `*{SIZE}ADDRESS`")?;
                self.skip_ws();
                let size = self.number()?;
                self.expect(b'}', "after the size of a load")?;
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return Err(ParseError {
                        pos: start,
                        message: format!("a load reads 1, 2, 4 or 8 bytes, not {size}"),
                    });
                }
                let addr = self.expr()?;
                Ok(Expr::Load {
                    size: size as u8,
                    addr: Box::new(addr),
                })
            }
            Some(c) if c.is_ascii_digit() => Ok(Expr::Num(self.number()?)),
            Some(c) if is_ident_start(c) => self.identifier_expr(),
            Some(b'-') => Err(self
                .error("there is no unary minus (llvm-jitlink has none): write `0 - N`, or N - M")),
            Some(_) => Err(self.unexpected("a number, a symbol, `(` or `*{N}`")),
        }
    }

    fn number(&mut self) -> Result<u64, ParseError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let hex = self.src[start..].starts_with("0x") || self.src[start..].starts_with("0X");
        let digits_start = if hex { start + 2 } else { start };
        let mut end = digits_start;
        while end < bytes.len() && bytes[end].is_ascii_alphanumeric() {
            end += 1;
        }
        let digits = &self.src[digits_start..end];
        let text = &self.src[start..end];
        if !bytes.get(start).is_some_and(u8::is_ascii_digit) {
            return Err(self.unexpected("a number"));
        }
        let err = |message: String| ParseError {
            pos: start,
            message,
        };
        let value = if hex {
            if digits.is_empty() {
                return Err(err(format!("`{text}`: no hex digits after 0x")));
            }
            u64::from_str_radix(digits, 16)
        } else {
            if digits.len() > 1
                && digits.starts_with('0')
                && digits.bytes().all(|c| c.is_ascii_digit())
            {
                return Err(err(format!(
                    "`{text}`: a leading zero would be octal in llvm-jitlink; write it in decimal \
                     without the zero, or in hex (0x...)"
                )));
            }
            digits.parse::<u64>()
        };
        let value = value.map_err(|e| {
            use std::num::IntErrorKind::*;
            match e.kind() {
                PosOverflow => err(format!("`{text}` does not fit in 64 bits")),
                _ => err(format!(
                    "`{text}` is not a number (decimal, or hex with 0x)"
                )),
            }
        })?;
        self.pos = end;
        Ok(value)
    }

    fn identifier(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(is_ident_char) {
            self.pos += 1;
        }
        &self.src[start..self.pos]
    }

    fn identifier_expr(&mut self) -> Result<Expr, ParseError> {
        let start = self.pos;
        let name = self.identifier();
        let after = self.pos;
        self.skip_ws();
        if self.peek() != Some(b'(') {
            self.pos = after;
            if FUNCTIONS.contains(&name) {
                return Err(ParseError {
                    pos: start,
                    message: format!("`{name}` is a function: write `{name}(...)`"),
                });
            }
            return Ok(Expr::Symbol(name.to_string()));
        }
        self.pos += 1;
        let e = match name {
            "decode_operand" => {
                let addr = self.expr()?;
                self.expect(b',', "between the address and the operand number of decode_operand(ADDRESS, OPERAND)")?;
                let index = self.expr()?;
                Expr::DecodeOperand {
                    addr: Box::new(addr),
                    index: Box::new(index),
                }
            }
            "next_pc" => Expr::NextPc(Box::new(self.expr()?)),
            "stub_addr" | "got_addr" => {
                let file = self.raw_arg(true, name, "FILE")?;
                self.pos += 1;
                let symbol = self.raw_arg(false, name, "SYMBOL")?;
                if name == "stub_addr" {
                    Expr::StubAddr { file, symbol }
                } else {
                    Expr::GotAddr { file, symbol }
                }
            }
            "section_addr" => {
                let file = self.raw_arg(true, name, "FILE")?;
                self.pos += 1;
                let section = self.raw_arg(false, name, "SECTION")?;
                Expr::SectionAddr { file, section }
            }
            _ => {
                return Err(ParseError {
                    pos: start,
                    message: format!(
                        "unknown function `{name}`; the functions are {}",
                        FUNCTIONS.join(", ")
                    ),
                })
            }
        };
        self.expect(b')', &format!("to close {name}(...)"))?;
        Ok(e)
    }

    /// A file, symbol or section name: the text up to the `,` (if `first`) or `)` that ends the
    /// argument, with balanced parentheses inside (`libz.a(crc32.o)`). Leaves the position on
    /// that `,` or `)`.
    fn raw_arg(&mut self, first: bool, func: &str, what: &str) -> Result<String, ParseError> {
        let usage = if func == "section_addr" {
            "section_addr(FILE, SECTION)"
        } else if func == "stub_addr" {
            "stub_addr(FILE, SYMBOL)"
        } else {
            "got_addr(FILE, SYMBOL)"
        };
        self.skip_ws();
        let start = self.pos;
        let mut depth = 0usize;
        loop {
            match self.peek() {
                None => {
                    return Err(self.error(format!("unexpected end of the check inside {usage}")))
                }
                Some(b'(') => depth += 1,
                Some(b')') if depth > 0 => depth -= 1,
                Some(b')') => {
                    if first {
                        return Err(self.error(format!("{usage} takes two arguments")));
                    }
                    break;
                }
                Some(b',') if depth == 0 => {
                    if !first {
                        return Err(self.error(format!("{usage} takes two arguments")));
                    }
                    break;
                }
                _ => {}
            }
            self.pos += 1;
        }
        let text = self.src[start..self.pos].trim();
        if text.is_empty() {
            return Err(ParseError {
                pos: start,
                message: format!("missing {what} in {usage}"),
            });
        }
        Ok(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: u64) -> Box<Expr> {
        Box::new(Expr::Num(n))
    }

    fn sym(s: &str) -> Box<Expr> {
        Box::new(Expr::Symbol(s.into()))
    }

    #[test]
    fn chains_are_left_to_right() {
        let e = parse_expr("1 + 2 << 3").unwrap();
        assert_eq!(
            e,
            Expr::Binary {
                op: BinOp::Shl,
                lhs: Box::new(Expr::Binary {
                    op: BinOp::Add,
                    lhs: num(1),
                    rhs: num(2)
                }),
                rhs: num(3)
            }
        );
        // Parentheses group.
        let e = parse_expr("1+(2<<3)").unwrap();
        assert!(matches!(e, Expr::Binary { op: BinOp::Add, .. }));
    }

    #[test]
    fn load_takes_the_rest_of_the_chain() {
        let e = parse_expr("*{4}d + 4").unwrap();
        assert_eq!(
            e,
            Expr::Load {
                size: 4,
                addr: Box::new(Expr::Binary {
                    op: BinOp::Add,
                    lhs: sym("d"),
                    rhs: num(4)
                })
            }
        );
        let e = parse_expr("(*{4}d) + 4").unwrap();
        assert!(matches!(e, Expr::Binary { op: BinOp::Add, .. }));
        // Inside parentheses, the load stops at the `)`.
        let e = parse_expr("(*{8}x) - 1").unwrap();
        assert!(matches!(e, Expr::Binary { op: BinOp::Sub, .. }));
    }

    #[test]
    fn slices_bind_to_the_primary_before_them() {
        let e = parse_expr("a + b[7:0]").unwrap();
        let Expr::Binary { rhs, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(
            *rhs,
            Expr::Slice {
                value: sym("b"),
                hi: 7,
                lo: 0
            }
        );
        assert!(parse_expr("x[3:5]").is_err());
        assert!(parse_expr("x[64:0]").is_err());
        assert!(parse_expr("x[63:0]").is_ok());
    }

    #[test]
    fn functions() {
        let c = parse_check("decode_operand(f + 2, 4) = got_addr(lib.a(m.o), foo) - next_pc(f)")
            .unwrap();
        assert_eq!(
            c.lhs,
            Expr::DecodeOperand {
                addr: Box::new(Expr::Binary {
                    op: BinOp::Add,
                    lhs: sym("f"),
                    rhs: num(2)
                }),
                index: num(4)
            }
        );
        let Expr::Binary { lhs, rhs, .. } = c.rhs else {
            panic!()
        };
        assert_eq!(
            *lhs,
            Expr::GotAddr {
                file: "lib.a(m.o)".into(),
                symbol: "foo".into()
            }
        );
        assert_eq!(*rhs, Expr::NextPc(sym("f")));
        assert_eq!(
            parse_expr("section_addr( t.o , .text.hot )").unwrap(),
            Expr::SectionAddr {
                file: "t.o".into(),
                section: ".text.hot".into()
            }
        );
        assert_eq!(
            parse_expr("stub_addr(t.o,far)").unwrap(),
            Expr::StubAddr {
                file: "t.o".into(),
                symbol: "far".into()
            }
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_expr("0x10").unwrap(), Expr::Num(16));
        assert_eq!(parse_expr("0XfF").unwrap(), Expr::Num(255));
        assert_eq!(parse_expr("0").unwrap(), Expr::Num(0));
        assert_eq!(
            parse_expr("18446744073709551615").unwrap(),
            Expr::Num(u64::MAX)
        );
        for bad in [
            "010",
            "0x",
            "12ab",
            "18446744073709551616",
            "0x1_0",
            "0x10000000000000000",
        ] {
            assert!(parse_expr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_say_where_and_what() {
        let cases = [
            ("", "empty"),
            ("a", "expected `=`"),
            ("a = ", "unexpected end"),
            ("a == b", "single `=`"),
            ("a = b = c", "exactly one"),
            ("a = b # comment", "unexpected `#`"),
            ("(a = b", "`)`"),
            ("*{3}a = 0", "1, 2, 4 or 8"),
            ("*4 a = 0", "`{`"),
            ("-1 = 0", "unary minus"),
            ("a * 2 = 0", "not an operator"),
            ("a < b = 0", "comparisons"),
            ("frob(a) = 0", "unknown function `frob`"),
            ("next_pc = 0", "is a function"),
            ("got_addr(t.o) = 0", "two arguments"),
            ("got_addr(t.o, a, b) = 0", "two arguments"),
            ("got_addr(, a) = 0", "missing FILE"),
            ("stub_addr(t.o, ) = 0", "missing SYMBOL"),
            ("decode_operand(a) = 0", "`,`"),
            ("section_addr(t.o, .text", "unexpected end"),
            ("a[1:2 = 0", "`]`"),
            ("a = 0 1", "unexpected `1`"),
            ("@ = 0", "unexpected `@`"),
        ];
        for (src, want) in cases {
            let e = parse_check(src).unwrap_err();
            assert!(
                e.message.contains(want),
                "{src:?}: {e} does not mention {want:?}"
            );
            assert!(e.pos <= src.len(), "{src:?}: position {}", e.pos);
        }
    }

    #[test]
    fn deep_or_long_input_is_refused_not_a_stack_overflow() {
        let deep = format!("{}a{} = 0", "(".repeat(100_000), ")".repeat(100_000));
        assert!(parse_check(&deep).unwrap_err().message.contains("nest"));
        let loads = format!("{}a = 0", "*{8}".repeat(100_000));
        assert!(parse_check(&loads).unwrap_err().message.contains("nest"));
        let long = format!("a{} = 0", " + 1".repeat(100_000));
        assert!(parse_check(&long).unwrap_err().message.contains("too long"));
        let slices = format!("a{} = 0", "[1:0]".repeat(100_000));
        assert!(parse_check(&slices)
            .unwrap_err()
            .message
            .contains("too long"));
        // Within the limits, fine.
        let ok = format!("{}a{} = a", "(".repeat(60), ")".repeat(60));
        assert!(parse_check(&ok).is_ok());
        let ok = format!("a{} = a", " + 1".repeat(400));
        assert!(parse_check(&ok).is_ok());
    }

    #[test]
    fn whitespace_anywhere() {
        let a = parse_check("*{ 8 } ( a + 1 ) [ 7 : 0 ] = b-1").unwrap();
        let b = parse_check("*{8}(a+1)[7:0]=b - 1").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn display_round_trips() {
        for src in [
            "decode_operand(f + 2, 4) - got_addr(t.o, x)",
            "*{8}(a + 1)[7:0]",
            "section_addr(lib.a(m.o), .data) | 1 << 3",
            "stub_addr(t.o, far) >> 2 & 0xff",
        ] {
            let e = parse_expr(src).unwrap();
            assert_eq!(parse_expr(&e.to_string()).unwrap(), e, "{src} -> {e}");
        }
    }
}
