//! A small x86-64 encoder: the instructions the template JIT emits, nothing more.
//!
//! Why our own rather than iced-x86's code assembler or dynasm-rs (docs/lox.md says more): the
//! JIT needs about forty instruction forms, and it needs to know exactly where each 32-bit
//! field lands (every `call` to a runtime helper or to another Lox function is an edge kiln
//! fixes up; kiln-jit's patchable call sites will want the same offsets). Encoding by hand keeps
//! those offsets obvious, costs no allocation per instruction, and adds no dependency to the
//! build; the tests decode every form with iced-x86 (already in the workspace, as a decoder)
//! and compare it with what the encoder meant.
//!
//! x86-64 in one paragraph, as far as this file needs it: an instruction is optional prefixes
//! (`66`, `F2`), a REX byte `0100WRXB` when a 64-bit operand size (W) or a register numbered
//! 8–15 (R for ModRM.reg, X for SIB.index, B for ModRM.rm / SIB.base / an opcode's low bits)
//! is used, the opcode, then ModRM `mod:2 reg:3 rm:3`. `mod` 11 names a register; otherwise
//! memory: `rm` 100 means a SIB byte `scale:2 index:3 base:3` follows (always for a base of
//! rsp/r12), `mod` 00 with base rbp/r13 means RIP-relative, so those bases take a zero 8-bit
//! displacement; `mod` 01 and 10 add an 8- or 32-bit displacement. Code is emitted in two
//! sections — hot (the fast paths, in bytecode order) and cold (slow paths and error exits,
//! after it) — that share one label space; `finish` lays them out and patches every rel32.

/// General-purpose registers by their encoding number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Reg {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Reg {
    fn low(self) -> u8 {
        self as u8 & 7
    }
}

/// An SSE register (only xmm0 and xmm1 are used).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Xmm(pub u8);

/// `[base + index*scale + disp]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mem {
    pub base: Reg,
    pub index: Option<(Reg, u8)>,
    pub disp: i32,
}

/// `[base + disp]`.
pub fn mem(base: Reg, disp: i32) -> Mem {
    Mem {
        base,
        index: None,
        disp,
    }
}

/// `[base + index*scale + disp]`; `index` must not be rsp.
pub fn mem_index(base: Reg, index: Reg, scale: u8, disp: i32) -> Mem {
    debug_assert!(index != Reg::Rsp && matches!(scale, 1 | 2 | 4 | 8));
    Mem {
        base,
        index: Some((index, scale)),
        disp,
    }
}

/// Condition codes (the low nibble of `Jcc`/`SETcc`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Cond {
    /// Below (CF=1).
    B = 0x2,
    /// Above or equal (CF=0).
    Ae = 0x3,
    E = 0x4,
    Ne = 0x5,
    /// Below or equal (CF=1 or ZF=1).
    Be = 0x6,
    /// Above (CF=0 and ZF=0).
    A = 0x7,
    /// Parity (an unordered `ucomisd`).
    P = 0xa,
    Np = 0xb,
}

/// Two-operand integer instructions: the `/r` opcode of `op r/m, r` and the ModRM extension of
/// `op r/m, imm`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Alu {
    Add,
    Or,
    And,
    Sub,
    Xor,
    Cmp,
}

impl Alu {
    fn rm_r(self) -> u8 {
        match self {
            Alu::Add => 0x01,
            Alu::Or => 0x09,
            Alu::And => 0x21,
            Alu::Sub => 0x29,
            Alu::Xor => 0x31,
            Alu::Cmp => 0x39,
        }
    }
    fn ext(self) -> u8 {
        match self {
            Alu::Add => 0,
            Alu::Or => 1,
            Alu::And => 4,
            Alu::Sub => 5,
            Alu::Xor => 6,
            Alu::Cmp => 7,
        }
    }
}

/// Scalar double arithmetic (`F2 0F op`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sse {
    Add = 0x58,
    Mul = 0x59,
    Sub = 0x5c,
    Div = 0x5e,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Label(u32);

/// Which section code goes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Section {
    Hot = 0,
    Cold = 1,
}

/// A 32-bit PC-relative field to be filled by the linker: `call name` (kiln's
/// `BranchPCRel32`, addend -4), at `offset` in the finished code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub offset: u32,
    pub target: String,
}

pub struct Asm {
    code: [Vec<u8>; 2],
    section: Section,
    /// Where each label is bound: section and offset.
    labels: Vec<Option<(Section, usize)>>,
    /// rel32 fields to patch: section, offset of the field, label.
    fixups: Vec<(Section, usize, Label)>,
    edges: Vec<(Section, usize, String)>,
    /// Patchable fields (kiln-jit sites): section, offset of the field, kind.
    sites: Vec<(Section, usize, SiteField)>,
    /// imm64 fields holding references to heap objects: section, offset.
    heap_refs: Vec<(Section, usize)>,
}

/// What a patchable field is: a call's rel32, or a `movabs`'s imm64.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SiteField {
    Rel32,
    Abs64,
}

/// Finished code: hot then cold, with the edges kiln resolves and where each label ended up.
pub struct Code {
    pub bytes: Vec<u8>,
    pub edges: Vec<Edge>,
    /// Offsets and kinds of the patchable fields (each aligned to its width), in the order
    /// `call_site` and `movabs_site` made them.
    pub sites: Vec<(u32, SiteField)>,
    /// Offsets of the 8-aligned imm64 fields that hold heap references (kiln-jit heap refs).
    pub heap_refs: Vec<u32>,
    label_offsets: Vec<Option<usize>>,
}

impl Code {
    /// Offset of `label` in `bytes` (labels that were never bound have none).
    pub fn offset(&self, label: Label) -> Option<usize> {
        self.label_offsets.get(label.0 as usize).copied().flatten()
    }
}

impl Default for Asm {
    fn default() -> Self {
        Asm::new()
    }
}

impl Asm {
    pub fn new() -> Asm {
        Asm {
            code: [Vec::with_capacity(1024), Vec::new()],
            section: Section::Hot,
            labels: Vec::new(),
            fixups: Vec::new(),
            edges: Vec::new(),
            sites: Vec::new(),
            heap_refs: Vec::new(),
        }
    }

    /// Bytes emitted so far into the current section.
    pub fn len(&self) -> usize {
        self.code[self.section as usize].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where code goes from now on; returns the section it was going to.
    pub fn switch_to(&mut self, section: Section) -> Section {
        std::mem::replace(&mut self.section, section)
    }

    pub fn new_label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() as u32 - 1)
    }

    /// Binds `label` here. A label is bound once.
    pub fn bind(&mut self, label: Label) {
        let here = (self.section, self.len());
        let slot = &mut self.labels[label.0 as usize];
        debug_assert!(slot.is_none(), "label bound twice");
        *slot = Some(here);
    }

    fn byte(&mut self, b: u8) {
        self.code[self.section as usize].push(b);
    }

    fn bytes(&mut self, bs: &[u8]) {
        self.code[self.section as usize].extend_from_slice(bs);
    }

    fn imm32(&mut self, v: i32) {
        self.bytes(&v.to_le_bytes());
    }

    /// REX with W, R (from `reg`), X and B (from the operand); omitted when all are clear and
    /// `force` is false.
    fn rex(&mut self, w: bool, reg: u8, index: u8, base: u8, force: bool) {
        let rex = 0x40
            | (u8::from(w) << 3)
            | ((reg >> 3) & 1) << 2
            | ((index >> 3) & 1) << 1
            | ((base >> 3) & 1);
        if rex != 0x40 || force {
            self.byte(rex);
        }
    }

    fn rex_mem(&mut self, w: bool, reg: u8, m: Mem) {
        let index = m.index.map_or(0, |(r, _)| r as u8);
        self.rex(w, reg, index, m.base as u8, false);
    }

    /// ModRM (and SIB and displacement) for `reg` and the memory operand `m`.
    fn modrm_mem(&mut self, reg: u8, m: Mem) {
        let reg = (reg & 7) << 3;
        // rbp/r13 as a base need a displacement (mod 00 would mean RIP-relative).
        let (md, disp8) = if m.disp == 0 && m.base.low() != 5 {
            (0b00, false)
        } else if i8::try_from(m.disp).is_ok() {
            (0b01, true)
        } else {
            (0b10, false)
        };
        match m.index {
            None if m.base.low() != 4 => self.byte(md << 6 | reg | m.base.low()),
            None => {
                // rsp/r12 as a base: a SIB with no index.
                self.byte(md << 6 | reg | 0b100);
                self.byte(0b00_100_000 | m.base.low());
            }
            Some((index, scale)) => {
                let ss = match scale {
                    1 => 0,
                    2 => 1,
                    4 => 2,
                    _ => 3,
                };
                self.byte(md << 6 | reg | 0b100);
                self.byte(ss << 6 | index.low() << 3 | m.base.low());
            }
        }
        match md {
            0b01 if disp8 => self.byte(m.disp as i8 as u8),
            0b10 => self.imm32(m.disp),
            _ => {}
        }
    }

    fn modrm_reg(&mut self, reg: u8, rm: Reg) {
        self.byte(0b11 << 6 | (reg & 7) << 3 | rm.low());
    }

    // ---- moves ----

    /// `mov dst, src` (64 bits).
    pub fn mov_rr(&mut self, dst: Reg, src: Reg) {
        self.rex(true, src as u8, 0, dst as u8, false);
        self.byte(0x89);
        self.modrm_reg(src as u8, dst);
    }

    /// `mov dst32, src32`: the low 32 bits, zero-extended (unboxes a heap offset).
    pub fn mov_rr32(&mut self, dst: Reg, src: Reg) {
        self.rex(false, src as u8, 0, dst as u8, false);
        self.byte(0x89);
        self.modrm_reg(src as u8, dst);
    }

    /// `mov dst, [m]`.
    pub fn load(&mut self, dst: Reg, m: Mem) {
        self.rex_mem(true, dst as u8, m);
        self.byte(0x8b);
        self.modrm_mem(dst as u8, m);
    }

    /// `mov [m], src`.
    pub fn store(&mut self, m: Mem, src: Reg) {
        self.rex_mem(true, src as u8, m);
        self.byte(0x89);
        self.modrm_mem(src as u8, m);
    }

    /// `mov qword [m], imm32` (sign-extended).
    pub fn store_imm(&mut self, m: Mem, imm: i32) {
        self.rex_mem(true, 0, m);
        self.byte(0xc7);
        self.modrm_mem(0, m);
        self.imm32(imm);
    }

    /// `dst = imm`, in the shortest form.
    pub fn mov_ri(&mut self, dst: Reg, imm: u64) {
        if let Ok(imm32) = u32::try_from(imm) {
            // mov r32, imm32 zero-extends.
            self.rex(false, 0, 0, dst as u8, false);
            self.byte(0xb8 + dst.low());
            self.imm32(imm32 as i32);
        } else if let Ok(imm32) = i32::try_from(imm as i64) {
            self.rex(true, 0, 0, dst as u8, false);
            self.byte(0xc7);
            self.modrm_reg(0, dst);
            self.imm32(imm32);
        } else {
            self.rex(true, 0, 0, dst as u8, false);
            self.byte(0xb8 + dst.low());
            self.bytes(&imm.to_le_bytes());
        }
    }

    /// `lea dst, [m]`.
    pub fn lea(&mut self, dst: Reg, m: Mem) {
        self.rex_mem(true, dst as u8, m);
        self.byte(0x8d);
        self.modrm_mem(dst as u8, m);
    }

    /// `movzx dst32, src8` for src in al/cl/dl/bl.
    pub fn movzx_r8(&mut self, dst: Reg, src: Reg) {
        debug_assert!((src as u8) < 4);
        self.rex(false, dst as u8, 0, 0, false);
        self.bytes(&[0x0f, 0xb6]);
        self.modrm_reg(dst as u8, src);
    }

    // ---- arithmetic and logic ----

    /// `op dst, src` (64 bits).
    pub fn alu_rr(&mut self, op: Alu, dst: Reg, src: Reg) {
        self.rex(true, src as u8, 0, dst as u8, false);
        self.byte(op.rm_r());
        self.modrm_reg(src as u8, dst);
    }

    /// `op dst, imm` (imm32 sign-extended to 64 bits).
    pub fn alu_ri(&mut self, op: Alu, dst: Reg, imm: i32) {
        self.rex(true, 0, 0, dst as u8, false);
        if let Ok(imm8) = i8::try_from(imm) {
            self.byte(0x83);
            self.modrm_reg(op.ext(), dst);
            self.byte(imm8 as u8);
        } else {
            self.byte(0x81);
            self.modrm_reg(op.ext(), dst);
            self.imm32(imm);
        }
    }

    /// `op dst32, imm32` (32 bits: `cmp eax, 0x3fff`).
    pub fn alu_ri32(&mut self, op: Alu, dst: Reg, imm: i32) {
        self.rex(false, 0, 0, dst as u8, false);
        self.byte(0x81);
        self.modrm_reg(op.ext(), dst);
        self.imm32(imm);
    }

    /// `op [m], src` (64 bits).
    pub fn alu_mr(&mut self, op: Alu, m: Mem, src: Reg) {
        self.rex_mem(true, src as u8, m);
        self.byte(op.rm_r());
        self.modrm_mem(src as u8, m);
    }

    /// `op dst, [m]`.
    pub fn alu_rm(&mut self, op: Alu, dst: Reg, m: Mem) {
        self.rex_mem(true, dst as u8, m);
        self.byte(op.rm_r() + 2);
        self.modrm_mem(dst as u8, m);
    }

    /// `op qword [m], imm` (imm32 sign-extended).
    pub fn alu_mi(&mut self, op: Alu, m: Mem, imm: i32) {
        self.rex_mem(true, 0, m);
        if let Ok(imm8) = i8::try_from(imm) {
            self.byte(0x83);
            self.modrm_mem(op.ext(), m);
            self.byte(imm8 as u8);
        } else {
            self.byte(0x81);
            self.modrm_mem(op.ext(), m);
            self.imm32(imm);
        }
    }

    /// `cmp byte [m], imm8`.
    pub fn cmp_m8(&mut self, m: Mem, imm: u8) {
        self.rex_mem(false, 0, m);
        self.byte(0x80);
        self.modrm_mem(7, m);
        self.byte(imm);
    }

    /// `test a, b` (64 bits).
    pub fn test_rr(&mut self, a: Reg, b: Reg) {
        self.rex(true, b as u8, 0, a as u8, false);
        self.byte(0x85);
        self.modrm_reg(b as u8, a);
    }

    /// `inc qword [m]`.
    pub fn inc_m(&mut self, m: Mem) {
        self.rex_mem(true, 0, m);
        self.byte(0xff);
        self.modrm_mem(0, m);
    }

    /// `dec qword [m]`.
    pub fn dec_m(&mut self, m: Mem) {
        self.rex_mem(true, 0, m);
        self.byte(0xff);
        self.modrm_mem(1, m);
    }

    /// `shr r, imm8` (64 bits).
    pub fn shr_ri(&mut self, r: Reg, imm: u8) {
        self.rex(true, 0, 0, r as u8, false);
        self.byte(0xc1);
        self.modrm_reg(5, r);
        self.byte(imm);
    }

    /// `shl r, imm8` (64 bits).
    pub fn shl_ri(&mut self, r: Reg, imm: u8) {
        self.rex(true, 0, 0, r as u8, false);
        self.byte(0xc1);
        self.modrm_reg(4, r);
        self.byte(imm);
    }

    /// `btc r, imm8` (flips one bit: the sign of a double).
    pub fn btc_ri(&mut self, r: Reg, bit: u8) {
        self.rex(true, 0, 0, r as u8, false);
        self.bytes(&[0x0f, 0xba]);
        self.modrm_reg(7, r);
        self.byte(bit);
    }

    /// `setcc r8` for r in al/cl/dl/bl.
    pub fn setcc(&mut self, cond: Cond, r: Reg) {
        debug_assert!((r as u8) < 4);
        self.bytes(&[0x0f, 0x90 + cond as u8]);
        self.modrm_reg(0, r);
    }

    /// `and a8, b8` for registers in al/cl/dl/bl.
    pub fn and_r8(&mut self, a: Reg, b: Reg) {
        debug_assert!((a as u8) < 4 && (b as u8) < 4);
        self.byte(0x20);
        self.modrm_reg(b as u8, a);
    }

    // ---- SSE2 ----

    /// `movq xmm, r64`.
    pub fn movq_xr(&mut self, dst: Xmm, src: Reg) {
        self.byte(0x66);
        self.rex(true, dst.0, 0, src as u8, false);
        self.bytes(&[0x0f, 0x6e]);
        self.modrm_reg(dst.0, src);
    }

    /// `movq r64, xmm`.
    pub fn movq_rx(&mut self, dst: Reg, src: Xmm) {
        self.byte(0x66);
        self.rex(true, src.0, 0, dst as u8, false);
        self.bytes(&[0x0f, 0x7e]);
        self.modrm_reg(src.0, dst);
    }

    /// `addsd/subsd/mulsd/divsd dst, src`.
    pub fn sse_rr(&mut self, op: Sse, dst: Xmm, src: Xmm) {
        self.byte(0xf2);
        self.bytes(&[0x0f, op as u8]);
        self.byte(0b11 << 6 | (dst.0 & 7) << 3 | (src.0 & 7));
    }

    /// `ucomisd a, b`.
    pub fn ucomisd(&mut self, a: Xmm, b: Xmm) {
        self.bytes(&[0x66, 0x0f, 0x2e]);
        self.byte(0b11 << 6 | (a.0 & 7) << 3 | (b.0 & 7));
    }

    // ---- stack and control flow ----

    pub fn push(&mut self, r: Reg) {
        self.rex(false, 0, 0, r as u8, false);
        self.byte(0x50 + r.low());
    }

    pub fn pop(&mut self, r: Reg) {
        self.rex(false, 0, 0, r as u8, false);
        self.byte(0x58 + r.low());
    }

    pub fn ret(&mut self) {
        self.byte(0xc3);
    }

    /// `call name`: a rel32 the linker fills in (kiln's `BranchPCRel32`).
    pub fn call_symbol(&mut self, name: &str) {
        self.byte(0xe8);
        self.edges
            .push((self.section, self.len(), name.to_string()));
        self.imm32(0);
    }

    /// `call label`.
    /// `call name` whose rel32 field is a patchable site (4-aligned, after nops as needed, so
    /// that one atomic store retargets it): returns the site's index in `Code::sites`. Both
    /// sections start 16-aligned in the finished code, so alignment here is alignment there.
    pub fn call_site(&mut self, name: &str) -> usize {
        while !(self.len() + 1).is_multiple_of(4) {
            self.byte(0x90);
        }
        self.call_symbol(name);
        self.sites
            .push((self.section, self.len() - 4, SiteField::Rel32));
        self.sites.len() - 1
    }

    /// `movabs dst, imm` with the imm64 8-aligned (after nops as needed), so that one
    /// atomic store changes it; returns the field's offset in the current section.
    fn movabs_aligned(&mut self, dst: Reg, imm: u64) -> usize {
        while !(self.len() + 2).is_multiple_of(8) {
            self.byte(0x90);
        }
        self.rex(true, 0, 0, dst as u8, false);
        self.byte(0xb8 + dst.low());
        self.bytes(&imm.to_le_bytes());
        self.len() - 8
    }

    /// `movabs dst, imm` whose imm64 is a patchable site: returns the site's index in
    /// `Code::sites`.
    pub fn movabs_site(&mut self, dst: Reg, imm: u64) -> usize {
        let at = self.movabs_aligned(dst, imm);
        self.sites.push((self.section, at, SiteField::Abs64));
        self.sites.len() - 1
    }

    /// `movabs dst, value` where `value` refers to a heap object: the GC reads and updates
    /// the field (`Code::heap_refs`).
    pub fn movabs_heap_ref(&mut self, dst: Reg, value: u64) {
        let at = self.movabs_aligned(dst, value);
        self.heap_refs.push((self.section, at));
    }

    pub fn call_label(&mut self, label: Label) {
        self.byte(0xe8);
        self.fixup(label);
    }

    /// `call qword [m]`.
    pub fn call_m(&mut self, m: Mem) {
        self.rex_mem(false, 0, m);
        self.byte(0xff);
        self.modrm_mem(2, m);
    }

    /// `call r`.
    pub fn call_r(&mut self, r: Reg) {
        self.rex(false, 0, 0, r as u8, false);
        self.byte(0xff);
        self.modrm_reg(2, r);
    }

    /// `jmp label` (always rel32).
    pub fn jmp(&mut self, label: Label) {
        self.byte(0xe9);
        self.fixup(label);
    }

    /// `jcc label` (always rel32).
    pub fn jcc(&mut self, cond: Cond, label: Label) {
        self.bytes(&[0x0f, 0x80 + cond as u8]);
        self.fixup(label);
    }

    fn fixup(&mut self, label: Label) {
        self.fixups.push((self.section, self.len(), label));
        self.imm32(0);
    }

    /// Lays out hot then cold code (cold 16-byte aligned with `int3` padding), patches every
    /// label reference, and returns the code with its edges. An unbound label that is used is
    /// an error (a bug in the code generator).
    pub fn finish(mut self) -> Result<Code, String> {
        let hot = std::mem::take(&mut self.code[0]);
        let cold = std::mem::take(&mut self.code[1]);
        let mut bytes = hot;
        while !bytes.len().is_multiple_of(16) {
            bytes.push(0xcc);
        }
        let cold_start = bytes.len();
        bytes.extend_from_slice(&cold);
        let place = |(section, offset): (Section, usize)| match section {
            Section::Hot => offset,
            Section::Cold => cold_start + offset,
        };
        let label_offsets: Vec<Option<usize>> = self.labels.iter().map(|l| l.map(place)).collect();
        for &(section, at, label) in &self.fixups {
            let field = place((section, at));
            let target = label_offsets[label.0 as usize]
                .ok_or_else(|| format!("label {} used but never bound", label.0))?;
            let rel = target as i64 - (field as i64 + 4);
            let rel = i32::try_from(rel).map_err(|_| "a jump beyond 2 GiB".to_string())?;
            bytes[field..field + 4].copy_from_slice(&rel.to_le_bytes());
        }
        let edges = self
            .edges
            .iter()
            .map(|(section, at, target)| Edge {
                offset: place((*section, *at)) as u32,
                target: target.clone(),
            })
            .collect();
        let sites = self
            .sites
            .iter()
            .map(|&(section, at, kind)| (place((section, at)) as u32, kind))
            .collect();
        let heap_refs = self
            .heap_refs
            .iter()
            .map(|&(section, at)| place((section, at)) as u32)
            .collect();
        Ok(Code {
            bytes,
            edges,
            sites,
            heap_refs,
            label_offsets,
        })
    }
}

#[cfg(test)]
mod tests;
