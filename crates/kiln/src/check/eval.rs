//! Evaluation of check expressions against what a link produced.

use super::disasm::{self, MAX_INSTRUCTION_LEN};
use super::expr::{BinOp, Expr};

/// What check expressions can ask about a linked unit. Errors are messages for the user.
pub trait CheckEnv {
    /// The address of a symbol.
    fn symbol(&self, name: &str) -> Result<u64, String>;
    /// Exactly `len` bytes at `addr` of the final memory.
    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, String>;
    /// Up to `max` bytes at `addr` (fewer where the linked content ends), for decoding.
    fn code(&self, addr: u64, max: usize) -> Result<Vec<u8>, String>;
    fn stub_addr(&self, file: &str, symbol: &str) -> Result<u64, String>;
    fn got_addr(&self, file: &str, symbol: &str) -> Result<u64, String>;
    fn section_addr(&self, file: &str, section: &str) -> Result<u64, String>;
}

/// Evaluate `e`. Arithmetic wraps at 64 bits; shifts by 64 or more give 0.
pub fn eval(e: &Expr, env: &dyn CheckEnv) -> Result<u64, String> {
    Ok(match e {
        Expr::Num(n) => *n,
        Expr::Symbol(s) => env.symbol(s)?,
        Expr::Load { size, addr } => {
            let a = eval(addr, env)?;
            let bytes = env.read(a, usize::from(*size))?;
            let mut word = [0u8; 8];
            word[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
            u64::from_le_bytes(word)
        }
        Expr::Slice { value, hi, lo } => {
            let v = eval(value, env)?;
            if lo > hi || *hi > 63 {
                return Err(format!("bad slice [{hi}:{lo}]"));
            }
            let width = hi - lo + 1;
            let mask = if width >= 64 {
                u64::MAX
            } else {
                (1u64 << width) - 1
            };
            (v >> lo) & mask
        }
        Expr::Binary { op, lhs, rhs } => {
            let (l, r) = (eval(lhs, env)?, eval(rhs, env)?);
            match op {
                BinOp::Add => l.wrapping_add(r),
                BinOp::Sub => l.wrapping_sub(r),
                BinOp::And => l & r,
                BinOp::Or => l | r,
                BinOp::Shl => u32::try_from(r)
                    .ok()
                    .and_then(|r| l.checked_shl(r))
                    .unwrap_or(0),
                BinOp::Shr => u32::try_from(r)
                    .ok()
                    .and_then(|r| l.checked_shr(r))
                    .unwrap_or(0),
            }
        }
        Expr::DecodeOperand { addr, index } => {
            let a = eval(addr, env)?;
            let i = eval(index, env)?;
            decode_at(a, env)?.operand(i)?
        }
        Expr::NextPc(addr) => {
            let a = eval(addr, env)?;
            decode_at(a, env)?.next_pc
        }
        Expr::StubAddr { file, symbol } => env.stub_addr(file, symbol)?,
        Expr::GotAddr { file, symbol } => env.got_addr(file, symbol)?,
        Expr::SectionAddr { file, section } => env.section_addr(file, section)?,
    })
}

fn decode_at(addr: u64, env: &dyn CheckEnv) -> Result<disasm::Decoded, String> {
    let bytes = env.code(addr, MAX_INSTRUCTION_LEN)?;
    disasm::decode(&bytes, addr)
}
