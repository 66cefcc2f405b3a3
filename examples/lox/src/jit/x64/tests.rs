//! The encoder's forms, decoded back with iced-x86 and compared with what was meant.

use super::Reg::*;
use super::*;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

/// Decodes `bytes` as one instruction each call and formats it as Intel syntax.
fn disassemble(bytes: &[u8]) -> Vec<String> {
    let mut decoder = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    formatter.options_mut().set_hex_prefix("0x");
    formatter.options_mut().set_hex_suffix("");
    formatter.options_mut().set_uppercase_hex(false);
    formatter
        .options_mut()
        .set_space_after_operand_separator(true);
    formatter.options_mut().set_branch_leading_zeros(false);
    formatter.options_mut().set_show_branch_size(false);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        assert!(
            !instruction.is_invalid(),
            "invalid encoding in {bytes:02x?}"
        );
        let mut text = String::new();
        formatter.format(&instruction, &mut text);
        out.push(text);
    }
    out
}

fn check(emit: impl Fn(&mut Asm), want: &[&str]) {
    let mut asm = Asm::new();
    emit(&mut asm);
    let hot_len = asm.len();
    let code = asm.finish().expect("finish");
    assert_eq!(disassemble(&code.bytes[..hot_len]), want);
}

#[test]
fn memory_operands_every_base() {
    // Every base register (rsp/r12 need a SIB, rbp/r13 a displacement), with and without
    // index, 8- and 32-bit displacements.
    check(
        |a| {
            a.load(Rax, mem(R12, 0));
            a.load(Rax, mem(Rsp, 8));
            a.load(R9, mem(R13, 0));
            a.load(Rcx, mem(Rbp, -8));
            a.load(Rdx, mem(Rbx, 0x1000));
            a.load(R15, mem_index(R13, Rax, 1, 8));
            a.load(Rsi, mem_index(R12, Rdx, 8, 0x2000));
            a.store(mem_index(Rax, R11, 8, 0), R10);
            a.store(mem(R14, 16), Rdi);
            a.lea(Rbx, mem_index(R12, Rdi, 8, 0x2000));
            a.lea(Rax, mem_index(R15, Rax, 2, 1));
        },
        &[
            "mov rax, [r12]",
            "mov rax, [rsp+8]",
            "mov r9, [r13]",
            "mov rcx, [rbp-8]",
            "mov rdx, [rbx+0x1000]",
            "mov r15, [r13+rax+8]",
            "mov rsi, [r12+rdx*8+0x2000]",
            "mov [rax+r11*8], r10",
            "mov [r14+0x10], rdi",
            "lea rbx, [r12+rdi*8+0x2000]",
            "lea rax, [r15+rax*2+1]",
        ],
    );
}

#[test]
fn moves_and_immediates() {
    check(
        |a| {
            a.mov_rr(Rax, R9);
            a.mov_rr(R12, Rdi);
            a.mov_rr32(Rax, R10);
            a.mov_rr32(Rcx, Rdx);
            a.mov_ri(Rax, 7);
            a.mov_ri(R8, 0xffff_ffff);
            a.mov_ri(Rdx, (-2i64) as u64);
            a.mov_ri(R15, 0x7ffc_0000_0000_0000);
            a.store_imm(mem(R14, 8), 1234);
            a.store_imm(mem_index(Rbx, Rax, 8, 0), -1);
            a.movzx_r8(Rax, Rax);
            a.movzx_r8(R9, Rcx);
        },
        &[
            "mov rax, r9",
            "mov r12, rdi",
            "mov eax, r10d",
            "mov ecx, edx",
            "mov eax, 7",
            "mov r8d, 0xffffffff",
            "mov rdx, 0xfffffffffffffffe",
            "mov r15, 0x7ffc000000000000",
            "mov qword ptr [r14+8], 0x4d2",
            "mov qword ptr [rbx+rax*8], 0xffffffffffffffff",
            "movzx eax, al",
            "movzx r9d, cl",
        ],
    );
}

#[test]
fn arithmetic_and_logic() {
    check(
        |a| {
            a.alu_rr(Alu::Add, Rax, R15);
            a.alu_rr(Alu::And, R10, Rax);
            a.alu_rr(Alu::Cmp, Rsi, Rdi);
            a.alu_ri(Alu::Or, Rax, 1);
            a.alu_ri(Alu::Cmp, R9, 0x12345);
            a.alu_ri(Alu::Sub, Rsp, 8);
            a.alu_ri32(Alu::Cmp, Rax, 0x3fff);
            a.alu_rm(Alu::Cmp, Rcx, mem(R12, 0x400_0000));
            a.alu_rm(Alu::Add, R8, mem(Rbx, 8));
            a.alu_mr(Alu::Add, mem(R12, 0x60), Rsi);
            a.alu_mi(Alu::Cmp, mem(R12, 0x400_0008), 3);
            a.alu_mi(Alu::Cmp, mem(R12, 64), 1000);
            a.cmp_m8(mem(R12, 32), 0);
            a.test_rr(Rax, Rax);
            a.inc_m(mem(R12, 64));
            a.dec_m(mem(R12, 16));
            a.shr_ri(Rax, 50);
            a.shl_ri(R14, 5);
            a.btc_ri(R9, 63);
            a.setcc(Cond::A, Rax);
            a.setcc(Cond::Np, Rcx);
            a.and_r8(Rax, Rcx);
        },
        &[
            "add rax, r15",
            "and r10, rax",
            "cmp rsi, rdi",
            "or rax, 1",
            "cmp r9, 0x12345",
            "sub rsp, 8",
            "cmp eax, 0x3fff",
            "cmp rcx, [r12+0x4000000]",
            "add r8, [rbx+8]",
            "add [r12+0x60], rsi",
            "cmp qword ptr [r12+0x4000008], 3",
            "cmp qword ptr [r12+0x40], 0x3e8",
            "cmp byte ptr [r12+0x20], 0",
            "test rax, rax",
            "inc qword ptr [r12+0x40]",
            "dec qword ptr [r12+0x10]",
            "shr rax, 0x32",
            "shl r14, 5",
            "btc r9, 0x3f",
            "seta al",
            "setnp cl",
            "and al, cl",
        ],
    );
}

#[test]
fn sse2() {
    check(
        |a| {
            a.movq_xr(Xmm(0), Rsi);
            a.movq_xr(Xmm(1), R10);
            a.sse_rr(Sse::Add, Xmm(0), Xmm(1));
            a.sse_rr(Sse::Sub, Xmm(0), Xmm(1));
            a.sse_rr(Sse::Mul, Xmm(1), Xmm(0));
            a.sse_rr(Sse::Div, Xmm(0), Xmm(1));
            a.ucomisd(Xmm(1), Xmm(0));
            a.movq_rx(R9, Xmm(0));
            a.movq_rx(Rax, Xmm(1));
        },
        &[
            "movq xmm0, rsi",
            "movq xmm1, r10",
            "addsd xmm0, xmm1",
            "subsd xmm0, xmm1",
            "mulsd xmm1, xmm0",
            "divsd xmm0, xmm1",
            "ucomisd xmm1, xmm0",
            "movq r9, xmm0",
            "movq rax, xmm1",
        ],
    );
}

#[test]
fn stack_calls_and_jumps() {
    check(
        |a| {
            a.push(Rbp);
            a.push(R14);
            a.pop(R12);
            a.pop(Rbx);
            a.call_m(mem_index(R12, Rax, 8, 0x800_0000));
            a.call_r(R11);
            a.call_r(Rax);
            a.ret();
        },
        &[
            "push rbp",
            "push r14",
            "pop r12",
            "pop rbx",
            "call qword ptr [r12+rax*8+0x8000000]",
            "call r11",
            "call rax",
            "ret",
        ],
    );
}

#[test]
fn labels_across_sections_and_edges() {
    let mut a = Asm::new();
    let top = a.new_label();
    let cold = a.new_label();
    a.bind(top);
    a.jcc(Cond::Ne, cold); // 0: 6 bytes
    a.call_symbol("lox_rt_add"); // 6: e8 + rel32 at 7
    a.jmp(top); // 11
    a.switch_to(Section::Cold);
    a.bind(cold);
    a.call_label(top);
    a.switch_to(Section::Hot);
    let code = a.finish().expect("finish");
    assert_eq!(code.offset(cold), Some(16), "cold starts 16-byte aligned");
    assert_eq!(
        code.edges,
        vec![Edge {
            offset: 7,
            target: "lox_rt_add".into()
        }]
    );
    // jne to 16 from the end of a 6-byte jcc; jmp back to 0 from 16; call back to 0.
    assert_eq!(&code.bytes[0..6], &[0x0f, 0x85, 10, 0, 0, 0]);
    assert_eq!(&code.bytes[11..16], &[0xe9, 0xf0, 0xff, 0xff, 0xff]);
    assert_eq!(&code.bytes[16..21], &[0xe8, 0xeb, 0xff, 0xff, 0xff]);
}

#[test]
fn unbound_label_is_an_error() {
    let mut a = Asm::new();
    let nowhere = a.new_label();
    a.jmp(nowhere);
    assert!(a.finish().is_err());
}
