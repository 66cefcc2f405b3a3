//! The scanner: source bytes to tokens, on demand.
//!
//! Source is bytes, not UTF-8: Lox strings may hold any byte, identifiers are ASCII, and any
//! other byte outside a string or comment is an "Unexpected character.". A NUL byte ends the
//! source, as it ends the C string clox scans.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TokenKind {
    LeftParen,
    RightParen,
    LeftBrace,
    RightBrace,
    Comma,
    Dot,
    Minus,
    Plus,
    Semicolon,
    Slash,
    Star,
    Bang,
    BangEqual,
    Equal,
    EqualEqual,
    Greater,
    GreaterEqual,
    Less,
    LessEqual,
    Identifier,
    String,
    Number,
    And,
    Class,
    Else,
    False,
    For,
    Fun,
    If,
    Nil,
    Or,
    Print,
    Return,
    Super,
    This,
    True,
    Var,
    While,
    /// A scanning error; the token's text is the message.
    Error,
    Eof,
}

#[derive(Clone, Copy, Debug)]
pub struct Token<'src> {
    pub kind: TokenKind,
    /// The lexeme (for `Error`, the message).
    pub text: &'src [u8],
    pub line: u32,
}

pub struct Scanner<'src> {
    source: &'src [u8],
    start: usize,
    current: usize,
    line: u32,
}

impl<'src> Scanner<'src> {
    pub fn new(source: &'src [u8]) -> Scanner<'src> {
        let end = source.iter().position(|&b| b == 0).unwrap_or(source.len());
        Scanner {
            source: &source[..end],
            start: 0,
            current: 0,
            line: 1,
        }
    }

    pub fn next_token(&mut self) -> Token<'src> {
        self.skip_whitespace();
        self.start = self.current;
        let Some(c) = self.advance() else {
            return self.make(TokenKind::Eof);
        };
        if is_alpha(c) {
            return self.identifier();
        }
        if c.is_ascii_digit() {
            return self.number();
        }
        use TokenKind as K;
        let kind = match c {
            b'(' => K::LeftParen,
            b')' => K::RightParen,
            b'{' => K::LeftBrace,
            b'}' => K::RightBrace,
            b';' => K::Semicolon,
            b',' => K::Comma,
            b'.' => K::Dot,
            b'-' => K::Minus,
            b'+' => K::Plus,
            b'/' => K::Slash,
            b'*' => K::Star,
            b'!' => self.pick(b'=', K::BangEqual, K::Bang),
            b'=' => self.pick(b'=', K::EqualEqual, K::Equal),
            b'<' => self.pick(b'=', K::LessEqual, K::Less),
            b'>' => self.pick(b'=', K::GreaterEqual, K::Greater),
            b'"' => return self.string(),
            _ => return self.error("Unexpected character."),
        };
        self.make(kind)
    }

    fn peek(&self) -> Option<u8> {
        self.source.get(self.current).copied()
    }

    fn peek_next(&self) -> Option<u8> {
        self.source.get(self.current + 1).copied()
    }

    fn advance(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.current += 1;
        Some(c)
    }

    fn pick(&mut self, next: u8, two: TokenKind, one: TokenKind) -> TokenKind {
        if self.peek() == Some(next) {
            self.current += 1;
            two
        } else {
            one
        }
    }

    fn make(&self, kind: TokenKind) -> Token<'src> {
        Token {
            kind,
            text: &self.source[self.start..self.current],
            line: self.line,
        }
    }

    fn error(&self, message: &'static str) -> Token<'src> {
        Token {
            kind: TokenKind::Error,
            text: message.as_bytes(),
            line: self.line,
        }
    }

    fn skip_whitespace(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\r' | b'\t') => self.current += 1,
                Some(b'\n') => {
                    self.line += 1;
                    self.current += 1;
                }
                Some(b'/') if self.peek_next() == Some(b'/') => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.current += 1;
                    }
                }
                _ => return,
            }
        }
    }

    fn string(&mut self) -> Token<'src> {
        loop {
            match self.advance() {
                None => return self.error("Unterminated string."),
                Some(b'"') => return self.make(TokenKind::String),
                Some(b'\n') => self.line += 1,
                Some(_) => {}
            }
        }
    }

    fn number(&mut self) -> Token<'src> {
        self.skip_digits();
        if self.peek() == Some(b'.') && self.peek_next().is_some_and(|c| c.is_ascii_digit()) {
            self.current += 1;
            self.skip_digits();
        }
        self.make(TokenKind::Number)
    }

    fn skip_digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.current += 1;
        }
    }

    fn identifier(&mut self) -> Token<'src> {
        while self
            .peek()
            .is_some_and(|c| is_alpha(c) || c.is_ascii_digit())
        {
            self.current += 1;
        }
        let kind = keyword(&self.source[self.start..self.current]);
        self.make(kind)
    }
}

fn is_alpha(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn keyword(text: &[u8]) -> TokenKind {
    use TokenKind as K;
    match text {
        b"and" => K::And,
        b"class" => K::Class,
        b"else" => K::Else,
        b"false" => K::False,
        b"for" => K::For,
        b"fun" => K::Fun,
        b"if" => K::If,
        b"nil" => K::Nil,
        b"or" => K::Or,
        b"print" => K::Print,
        b"return" => K::Return,
        b"super" => K::Super,
        b"this" => K::This,
        b"true" => K::True,
        b"var" => K::Var,
        b"while" => K::While,
        _ => K::Identifier,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<TokenKind> {
        let mut s = Scanner::new(src.as_bytes());
        let mut out = Vec::new();
        loop {
            let t = s.next_token();
            out.push(t.kind);
            if t.kind == TokenKind::Eof {
                return out;
            }
        }
    }

    #[test]
    fn scans_operators_keywords_and_literals() {
        use TokenKind as K;
        assert_eq!(
            kinds("var x = 1.5 >= 2; // c\n\"s\" fun_ 3."),
            [
                K::Var,
                K::Identifier,
                K::Equal,
                K::Number,
                K::GreaterEqual,
                K::Number,
                K::Semicolon,
                K::String,
                K::Identifier,
                K::Number,
                K::Dot,
                K::Eof
            ]
        );
    }

    #[test]
    fn nul_ends_the_source_and_strings_count_lines() {
        let mut s = Scanner::new(b"\"a\nb\" x\0 y");
        assert_eq!(s.next_token().line, 2);
        assert_eq!(s.next_token().text, b"x");
        assert_eq!(s.next_token().kind, TokenKind::Eof);
    }
}
