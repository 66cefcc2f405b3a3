//! x86-64 (System V psABI, ELF).
//!
//! Code is position independent in practice: gcc and clang default to PIE, which reaches
//! everything with 32-bit PC-relative displacements (`R_X86_64_PC32`, `PLT32`) and reaches
//! symbols that may live in another module through the GOT (`GOTPCREL`, and its relaxable forms
//! `GOTPCRELX`/`REX_GOTPCRELX`). PIE code also assumes that data it references directly is
//! within ±2 GiB — in a normal executable the linker makes *copy relocations* for libc's
//! `stdout`; a JIT cannot, so kiln places code within ±2 GiB of the host libraries instead.
//!
//! Calls: a `call` to a function that is out of range goes through a stub (`jmp *GOT(%rip)`);
//! in range, it is direct. GOT loads whose target is in range are relaxed to `lea`, and
//! `call *GOT(%rip)` to `addr32 call` (the relaxable relocation types promise the instruction
//! shapes that make this legal).
//!
//! Thread-local storage: the general- and local-dynamic models call `__tls_get_addr` with a
//! `{module, offset}` pair in the GOT; kiln gives each unit a module value of its own and its
//! runtime answers for it. Local-exec (`TPOFF32`) and initial-exec (`GOTTPOFF`) address
//! variables at a fixed offset from the thread pointer `%fs`; for units that use them, the
//! runtime reserves the unit's TLS block in the static TLS area of every thread (through glibc,
//! see kiln-target's `static_tls`), and the offset is known before fixups. TLS descriptors
//! (`-mtls-dialect=gnu2`) are then relaxed to local-exec: `lea x@tlsdesc(%rip), %rax` becomes
//! `mov $x@tpoff, %rax` and `call *x@tlscall(%rax)` a two-byte nop, as a static linker does.
//!
//! Notation in the edge kinds (psABI): S symbol address, A addend, P address of the fixup,
//! GOT address of the GOT, G address of the symbol's GOT entry, L address of the symbol's call
//! target (the symbol, or its stub), Z symbol size.

use object::elf;

/// What a fixup computes and writes. Each documents its formula and the range it checks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeKind {
    /// No fixup: keeps the target alive while the source is (FDE ← function).
    KeepAlive,
    /// `S + A`, 64 bits (R_X86_64_64).
    Pointer64,
    /// `S + A`, unsigned 32 bits (R_X86_64_32).
    Pointer32,
    /// `S + A`, signed 32 bits (R_X86_64_32S).
    Pointer32Signed,
    /// `S + A`, 16 bits (R_X86_64_16), signed or unsigned.
    Pointer16,
    /// `S + A`, 8 bits (R_X86_64_8), signed or unsigned.
    Pointer8,
    /// `S + A - P`, 64 bits (R_X86_64_PC64).
    Delta64,
    /// `S + A - P`, signed 32 bits (R_X86_64_PC32).
    Delta32,
    /// `S + A - P`, signed 16 bits (R_X86_64_PC16).
    Delta16,
    /// `S + A - P`, signed 8 bits (R_X86_64_PC8).
    Delta8,
    /// `P - S + A`, signed 32 bits: an FDE's pointer back to its CIE.
    NegDelta32,
    /// `L + A - P`, signed 32 bits (R_X86_64_PLT32): direct when S is in range, else via a stub.
    BranchPCRel32,
    /// `G + A - P`, signed 32 bits (R_X86_64_GOTPCREL): always through the GOT.
    GotDelta32,
    /// `G + A - P`, signed 32 bits (R_X86_64_GOTPCRELX, REX_GOTPCRELX): relaxed to
    /// `S + A - P` with the instruction rewritten when S is in range.
    GotDelta32Relaxable { rex: bool },
    /// A relaxed [`EdgeKind::GotDelta32Relaxable`]: `S + A - P`, and the instruction rewritten.
    GotLoadRelaxed { rex: bool },
    /// `G + A - P`, 64 bits (R_X86_64_GOTPCREL64).
    GotDelta64,
    /// `G - GOT + A`, 64 bits (R_X86_64_GOT64).
    GotOffset64,
    /// `S + A - GOT`, 64 bits (R_X86_64_GOTOFF64).
    DeltaFromGot64,
    /// `GOT + A - P`, signed 32 bits (R_X86_64_GOTPC32).
    GotBaseDelta32,
    /// `GOT + A - P`, 64 bits (R_X86_64_GOTPC64).
    GotBaseDelta64,
    /// `L - GOT + A`, 64 bits (R_X86_64_PLTOFF64).
    PltOffsetFromGot64,
    /// `Z + A`, 32 bits (R_X86_64_SIZE32).
    Size32,
    /// `Z + A`, 64 bits (R_X86_64_SIZE64).
    Size64,
    /// `GD(S) + A - P`, signed 32 bits, GD(S) the `{module, offset}` pair of S (R_X86_64_TLSGD).
    TlsGdDelta32,
    /// `LD + A - P`, signed 32 bits, LD the unit's `{module, 0}` pair (R_X86_64_TLSLD).
    TlsLdDelta32,
    /// `S - TLS + A`, 32 bits: offset in the unit's TLS block (R_X86_64_DTPOFF32).
    DtpOff32,
    /// `S - TLS + A`, 64 bits (R_X86_64_DTPOFF64).
    DtpOff64,
    /// The unit's TLS module value, 64 bits (first word of a `{module, offset}` pair).
    TlsModule64,
    /// `S - TP + A`, signed 32 bits: offset from the thread pointer (R_X86_64_TPOFF32).
    TpOff32,
    /// `S - TP + A`, 64 bits (R_X86_64_TPOFF64; also the content of initial-exec GOT entries).
    TpOff64,
    /// `G + A - P`, signed 32 bits, G a GOT entry holding `S - TP` (R_X86_64_GOTTPOFF).
    GotTpOffDelta32,
    /// R_X86_64_GOTPC32_TLSDESC relaxed to local-exec: the `lea` becomes `mov $(S - TP), %rax`.
    TlsDescToLocalExec,
    /// R_X86_64_TLSDESC_CALL relaxed to local-exec: `call *(%rax)` becomes a two-byte nop.
    TlsDescCallToNop,
}

/// How an ELF relocation type maps to an edge kind.
pub fn edge_kind_for(r_type: elf::RelocationType) -> Result<EdgeKind, String> {
    use EdgeKind::*;
    Ok(match r_type {
        elf::R_X86_64_64 => Pointer64,
        elf::R_X86_64_32 => Pointer32,
        elf::R_X86_64_32S => Pointer32Signed,
        elf::R_X86_64_16 => Pointer16,
        elf::R_X86_64_8 => Pointer8,
        elf::R_X86_64_PC64 => Delta64,
        elf::R_X86_64_PC32 => Delta32,
        elf::R_X86_64_PC16 => Delta16,
        elf::R_X86_64_PC8 => Delta8,
        elf::R_X86_64_PLT32 => BranchPCRel32,
        elf::R_X86_64_GOTPCREL => GotDelta32,
        elf::R_X86_64_GOTPCRELX => GotDelta32Relaxable { rex: false },
        elf::R_X86_64_REX_GOTPCRELX => GotDelta32Relaxable { rex: true },
        elf::R_X86_64_GOTPCREL64 => GotDelta64,
        elf::R_X86_64_GOT64 => GotOffset64,
        elf::R_X86_64_GOTOFF64 => DeltaFromGot64,
        elf::R_X86_64_GOTPC32 => GotBaseDelta32,
        elf::R_X86_64_GOTPC64 => GotBaseDelta64,
        elf::R_X86_64_PLTOFF64 => PltOffsetFromGot64,
        elf::R_X86_64_SIZE32 => Size32,
        elf::R_X86_64_SIZE64 => Size64,
        elf::R_X86_64_TLSGD => TlsGdDelta32,
        elf::R_X86_64_TLSLD => TlsLdDelta32,
        elf::R_X86_64_DTPOFF32 => DtpOff32,
        elf::R_X86_64_DTPOFF64 => DtpOff64,
        elf::R_X86_64_TPOFF32 => TpOff32,
        elf::R_X86_64_TPOFF64 => TpOff64,
        elf::R_X86_64_GOTTPOFF => GotTpOffDelta32,
        elf::R_X86_64_GOTPC32_TLSDESC => TlsDescToLocalExec,
        elf::R_X86_64_TLSDESC_CALL => TlsDescCallToNop,
        elf::R_X86_64_TLSDESC => {
            return Err(format!(
                "{}: a TLS descriptor in data (only the code sequence of -mtls-dialect=gnu2 is supported)",
                reloc_name(r_type)
            ))
        }
        _ => return Err(format!("unknown relocation type {}", reloc_name(r_type))),
    })
}

/// The psABI name of a relocation type, for messages.
pub fn reloc_name(r_type: elf::RelocationType) -> String {
    let n = match r_type {
        elf::R_X86_64_NONE => "R_X86_64_NONE",
        elf::R_X86_64_64 => "R_X86_64_64",
        elf::R_X86_64_PC32 => "R_X86_64_PC32",
        elf::R_X86_64_GOT32 => "R_X86_64_GOT32",
        elf::R_X86_64_PLT32 => "R_X86_64_PLT32",
        elf::R_X86_64_COPY => "R_X86_64_COPY",
        elf::R_X86_64_GLOB_DAT => "R_X86_64_GLOB_DAT",
        elf::R_X86_64_JUMP_SLOT => "R_X86_64_JUMP_SLOT",
        elf::R_X86_64_RELATIVE => "R_X86_64_RELATIVE",
        elf::R_X86_64_GOTPCREL => "R_X86_64_GOTPCREL",
        elf::R_X86_64_32 => "R_X86_64_32",
        elf::R_X86_64_32S => "R_X86_64_32S",
        elf::R_X86_64_16 => "R_X86_64_16",
        elf::R_X86_64_PC16 => "R_X86_64_PC16",
        elf::R_X86_64_8 => "R_X86_64_8",
        elf::R_X86_64_PC8 => "R_X86_64_PC8",
        elf::R_X86_64_DTPMOD64 => "R_X86_64_DTPMOD64",
        elf::R_X86_64_DTPOFF64 => "R_X86_64_DTPOFF64",
        elf::R_X86_64_TPOFF64 => "R_X86_64_TPOFF64",
        elf::R_X86_64_TLSGD => "R_X86_64_TLSGD",
        elf::R_X86_64_TLSLD => "R_X86_64_TLSLD",
        elf::R_X86_64_DTPOFF32 => "R_X86_64_DTPOFF32",
        elf::R_X86_64_GOTTPOFF => "R_X86_64_GOTTPOFF",
        elf::R_X86_64_TPOFF32 => "R_X86_64_TPOFF32",
        elf::R_X86_64_PC64 => "R_X86_64_PC64",
        elf::R_X86_64_GOTOFF64 => "R_X86_64_GOTOFF64",
        elf::R_X86_64_GOTPC32 => "R_X86_64_GOTPC32",
        elf::R_X86_64_GOT64 => "R_X86_64_GOT64",
        elf::R_X86_64_GOTPCREL64 => "R_X86_64_GOTPCREL64",
        elf::R_X86_64_GOTPC64 => "R_X86_64_GOTPC64",
        elf::R_X86_64_GOTPLT64 => "R_X86_64_GOTPLT64",
        elf::R_X86_64_PLTOFF64 => "R_X86_64_PLTOFF64",
        elf::R_X86_64_SIZE32 => "R_X86_64_SIZE32",
        elf::R_X86_64_SIZE64 => "R_X86_64_SIZE64",
        elf::R_X86_64_GOTPC32_TLSDESC => "R_X86_64_GOTPC32_TLSDESC",
        elf::R_X86_64_TLSDESC_CALL => "R_X86_64_TLSDESC_CALL",
        elf::R_X86_64_TLSDESC => "R_X86_64_TLSDESC",
        elf::R_X86_64_IRELATIVE => "R_X86_64_IRELATIVE",
        elf::R_X86_64_GOTPCRELX => "R_X86_64_GOTPCRELX",
        elf::R_X86_64_REX_GOTPCRELX => "R_X86_64_REX_GOTPCRELX",
        _ => return format!("R_X86_64_<{}>", r_type.0),
    };
    n.to_string()
}

impl EdgeKind {
    /// The psABI relocation this kind comes from, for messages (after the GOT pass, GOT and TLS
    /// references appear as the PC-relative edges they were rewritten to).
    pub fn elf_name(self) -> &'static str {
        use EdgeKind::*;
        match self {
            KeepAlive => "(keep-alive)",
            Pointer64 => "R_X86_64_64",
            Pointer32 => "R_X86_64_32",
            Pointer32Signed => "R_X86_64_32S",
            Pointer16 => "R_X86_64_16",
            Pointer8 => "R_X86_64_8",
            Delta64 => "R_X86_64_PC64",
            Delta32 => "R_X86_64_PC32 (or a GOT/TLS reference through its entry)",
            Delta16 => "R_X86_64_PC16",
            Delta8 => "R_X86_64_PC8",
            NegDelta32 => "(eh_frame CIE pointer)",
            BranchPCRel32 => "R_X86_64_PLT32",
            GotDelta32 => "R_X86_64_GOTPCREL",
            GotDelta32Relaxable { rex: false } | GotLoadRelaxed { rex: false } => {
                "R_X86_64_GOTPCRELX"
            }
            GotDelta32Relaxable { rex: true } | GotLoadRelaxed { rex: true } => {
                "R_X86_64_REX_GOTPCRELX"
            }
            GotDelta64 => "R_X86_64_GOTPCREL64",
            GotOffset64 => "R_X86_64_GOT64",
            DeltaFromGot64 => "R_X86_64_GOTOFF64",
            GotBaseDelta32 => "R_X86_64_GOTPC32",
            GotBaseDelta64 => "R_X86_64_GOTPC64",
            PltOffsetFromGot64 => "R_X86_64_PLTOFF64",
            Size32 => "R_X86_64_SIZE32",
            Size64 => "R_X86_64_SIZE64",
            TlsGdDelta32 => "R_X86_64_TLSGD",
            TlsLdDelta32 => "R_X86_64_TLSLD",
            DtpOff32 => "R_X86_64_DTPOFF32",
            DtpOff64 => "R_X86_64_DTPOFF64",
            TlsModule64 => "(TLS module word)",
            TpOff32 => "R_X86_64_TPOFF32",
            TpOff64 => "R_X86_64_TPOFF64",
            GotTpOffDelta32 => "R_X86_64_GOTTPOFF",
            TlsDescToLocalExec => "R_X86_64_GOTPC32_TLSDESC",
            TlsDescCallToNop => "R_X86_64_TLSDESC_CALL",
        }
    }

    /// Bytes the fixup writes (0 for none).
    pub fn size(self) -> usize {
        use EdgeKind::*;
        match self {
            KeepAlive => 0,
            Pointer8 | Delta8 => 1,
            Pointer16 | Delta16 => 2,
            Pointer64 | Delta64 | GotDelta64 | GotOffset64 | DeltaFromGot64 | GotBaseDelta64
            | PltOffsetFromGot64 | Size64 | DtpOff64 | TlsModule64 | TpOff64 => 8,
            TlsDescCallToNop => 2,
            _ => 4,
        }
    }

    /// Whether the fixup is relative to the fixup address (needs the target within ±2 GiB).
    pub fn is_pc_relative_32(self) -> bool {
        use EdgeKind::*;
        matches!(
            self,
            Delta32 | BranchPCRel32 | GotDelta32Relaxable { .. } | GotLoadRelaxed { .. }
        )
    }
}

/// A value out of the range of its field.
#[derive(Debug)]
pub struct OutOfRange {
    pub value: i128,
    pub bits: &'static str,
}

fn put<const N: usize>(buf: &mut [u8], off: usize, bytes: [u8; N]) -> Result<(), OutOfRange> {
    match buf.get_mut(off..off + N) {
        Some(dst) => {
            dst.copy_from_slice(&bytes);
            Ok(())
        }
        // Offsets are validated when edges are made; this is a second line of defence.
        None => Err(OutOfRange {
            value: off as i128,
            bits: "fixup offset",
        }),
    }
}

fn signed<const N: usize>(v: i128) -> Result<i64, OutOfRange> {
    let bits = (N * 8) as u32;
    let lo = -(1i128 << (bits - 1));
    let hi = (1i128 << (bits - 1)) - 1;
    if v < lo || v > hi {
        return Err(OutOfRange {
            value: v,
            bits: match N {
                1 => "int8",
                2 => "int16",
                _ => "int32",
            },
        });
    }
    Ok(v as i64)
}

/// Write the fixup of `kind` at `off` in `buf`. `s` is what the formula calls S (or G, L, the TLS
/// offset, the size, already substituted by the caller), `p` the fixup address, `got` the GOT.
pub fn apply(
    kind: EdgeKind,
    buf: &mut [u8],
    off: usize,
    p: u64,
    s: u64,
    a: i64,
    got: u64,
) -> Result<(), OutOfRange> {
    use EdgeKind::*;
    // The psABI computes in 64-bit two's complement: an absolute symbol at 0xffff_ffff_ffff_8000
    // is -0x8000 and fits R_X86_64_32S; offsets from the thread pointer are negative too.
    let s = s as i64 as i128;
    let (p, a, got) = (p as i128, a as i128, got as i128);
    let wrap64 = |v: i128| (v as u64).to_le_bytes();
    match kind {
        KeepAlive => Ok(()),
        Pointer64 | Size64 | DtpOff64 | TlsModule64 => put(buf, off, wrap64(s + a)),
        Pointer32 => {
            let v = s + a;
            if !(0..=u32::MAX as i128).contains(&v) {
                return Err(OutOfRange {
                    value: v,
                    bits: "uint32",
                });
            }
            put(buf, off, (v as u32).to_le_bytes())
        }
        Pointer32Signed => put(buf, off, (signed::<4>(s + a)? as i32).to_le_bytes()),
        Size32 | DtpOff32 => {
            let v = s + a;
            if !(i32::MIN as i128..=u32::MAX as i128).contains(&v) {
                return Err(OutOfRange {
                    value: v,
                    bits: "32 bits",
                });
            }
            put(buf, off, (v as u32).to_le_bytes())
        }
        Pointer16 => {
            let v = s + a;
            if !(i16::MIN as i128..=u16::MAX as i128).contains(&v) {
                return Err(OutOfRange {
                    value: v,
                    bits: "16 bits",
                });
            }
            put(buf, off, (v as u16).to_le_bytes())
        }
        Pointer8 => {
            let v = s + a;
            if !(i8::MIN as i128..=u8::MAX as i128).contains(&v) {
                return Err(OutOfRange {
                    value: v,
                    bits: "8 bits",
                });
            }
            put(buf, off, [v as u8])
        }
        Delta64 | GotDelta64 => put(buf, off, wrap64(s + a - p)),
        Delta32
        | BranchPCRel32
        | GotDelta32
        | GotDelta32Relaxable { .. }
        | TlsGdDelta32
        | TlsLdDelta32 => put(buf, off, (signed::<4>(s + a - p)? as i32).to_le_bytes()),
        GotLoadRelaxed { rex } => {
            relax_got_load(buf, off, rex)?;
            put(buf, off, (signed::<4>(s + a - p)? as i32).to_le_bytes())
        }
        Delta16 => put(buf, off, (signed::<2>(s + a - p)? as i16).to_le_bytes()),
        Delta8 => put(buf, off, [signed::<1>(s + a - p)? as i8 as u8]),
        NegDelta32 => put(buf, off, (signed::<4>(p - s + a)? as i32).to_le_bytes()),
        GotOffset64 | DeltaFromGot64 | PltOffsetFromGot64 => put(buf, off, wrap64(s - got + a)),
        GotBaseDelta32 => put(buf, off, (signed::<4>(got + a - p)? as i32).to_le_bytes()),
        GotBaseDelta64 => put(buf, off, wrap64(got + a - p)),
        TpOff32 => put(buf, off, (signed::<4>(s + a)? as i32).to_le_bytes()),
        TpOff64 => put(buf, off, wrap64(s + a)),
        GotTpOffDelta32 => put(buf, off, (signed::<4>(s + a - p)? as i32).to_le_bytes()),
        TlsDescToLocalExec => {
            // REX.W 8d /r  lea x@tlsdesc(%rip), %reg  →  REX.W c7 /0  mov $tpoff, %reg
            // (gcc may compute the descriptor into any register and move it to %rax later).
            let v = signed::<4>(s)? as i32;
            let shape = off >= 3
                && buf.get(off - 3).is_some_and(|r| r & 0xfb == 0x48)
                && buf.get(off - 2) == Some(&0x8d)
                && buf.get(off - 1).is_some_and(|m| m & 0xc7 == 0x05);
            if !shape {
                return Err(OutOfRange {
                    value: off as i128,
                    bits: "TLS descriptor lea",
                });
            }
            let (rex, modrm) = (buf[off - 3], buf[off - 1]);
            buf[off - 3] = 0x48 | ((rex >> 2) & 1);
            buf[off - 2] = 0xc7;
            buf[off - 1] = 0xc0 | ((modrm >> 3) & 7);
            put(buf, off, v.to_le_bytes())
        }
        TlsDescCallToNop => {
            // ff 10  call *(%rax)  →  66 90  xchg %ax, %ax
            if buf.get(off..off + 2) != Some(&[0xff, 0x10][..]) {
                return Err(OutOfRange {
                    value: off as i128,
                    bits: "TLS descriptor call *(%rax)",
                });
            }
            put(buf, off, [0x66, 0x90])
        }
    }
}

/// Whether the instruction around a GOTPCRELX fixup at `off` can be rewritten to reach the
/// symbol directly: `mov foo@GOTPCREL(%rip), %reg` → `lea`, `call *foo@GOTPCREL(%rip)` →
/// `addr32 call foo`, `jmp *foo@GOTPCREL(%rip)` → `jmp foo; nop`. Other shapes (arithmetic with
/// a GOT operand) keep the GOT.
pub fn can_relax_got_load(content: &[u8], off: usize, rex: bool) -> bool {
    if off < 2 {
        return false;
    }
    let op = content[off - 2];
    let modrm = content[off - 1];
    if rex {
        // REX prefix before the opcode; only mov is relaxed.
        off >= 3 && content[off - 3] & 0xf0 == 0x40 && op == 0x8b && modrm & 0xc7 == 0x05
    } else {
        (op == 0x8b && modrm & 0xc7 == 0x05) || (op == 0xff && (modrm == 0x15 || modrm == 0x25))
    }
}

fn relax_got_load(buf: &mut [u8], off: usize, rex: bool) -> Result<(), OutOfRange> {
    let bad = OutOfRange {
        value: off as i128,
        bits: "relaxable instruction",
    };
    if off < 2 || !can_relax_got_load(buf, off, rex) {
        return Err(bad);
    }
    match (buf[off - 2], buf[off - 1]) {
        (0x8b, _) => buf[off - 2] = 0x8d,
        (0xff, 0x15) => {
            buf[off - 2] = 0x67;
            buf[off - 1] = 0xe8;
        }
        (0xff, 0x25) => {
            buf[off - 2] = 0x90;
            buf[off - 1] = 0xe9;
        }
        _ => return Err(bad),
    }
    Ok(())
}

/// A stub: `jmp *GOT_ENTRY(%rip)`, padded to 8 bytes. The displacement at offset 2 is a
/// [`EdgeKind::Delta32`] to the GOT entry with addend -4.
pub const STUB: [u8; 8] = [0xff, 0x25, 0, 0, 0, 0, 0xcc, 0xcc];
pub const STUB_FIXUP_OFFSET: u32 = 2;

/// `.init`/`.fini` glue: fragments are concatenated between this prologue, which realigns the
/// stack as crti.o's `_init` does, and the epilogue, which returns.
pub const INIT_PROLOGUE: [u8; 4] = [0x48, 0x83, 0xec, 0x08]; // sub $8, %rsp
pub const INIT_EPILOGUE: [u8; 5] = [0x48, 0x83, 0xc4, 0x08, 0xc3]; // add $8, %rsp; ret

/// `int atexit(void (*f)(void))` as glibc's libc_nonshared.a defines it, for one unit:
/// `lea __dso_handle(%rip), %rdx; xor %esi, %esi; jmp __cxa_atexit`.
/// Edges: Delta32 at 3 to `__dso_handle` (addend -4), BranchPCRel32 at 10 to the callee (-4).
pub const DSO_TAIL_CALL: [u8; 14] = [
    0x48, 0x8d, 0x15, 0, 0, 0, 0, // lea __dso_handle(%rip), %rdx
    0x31, 0xf6, // xor %esi, %esi
    0xe9, 0, 0, 0, 0, // jmp callee
];

/// `pthread_atfork(prepare, parent, child)` → `__register_atfork(prepare, parent, child,
/// __dso_handle)`: `lea __dso_handle(%rip), %rcx; jmp __register_atfork`.
/// Edges: Delta32 at 3 to `__dso_handle` (-4), BranchPCRel32 at 8 to the callee (-4).
pub const ATFORK_TAIL_CALL: [u8; 12] = [
    0x48, 0x8d, 0x0d, 0, 0, 0, 0, // lea __dso_handle(%rip), %rcx
    0xe9, 0, 0, 0, 0, // jmp __register_atfork
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta32_writes_and_checks_range() {
        let mut b = [0u8; 8];
        apply(EdgeKind::Delta32, &mut b, 2, 0x1000, 0x2000, -4, 0).unwrap();
        assert_eq!(&b[2..6], &(0x1000i32 - 4).to_le_bytes());
        let e = apply(EdgeKind::Delta32, &mut b, 2, 0x1000, 0x1_0000_2000, -4, 0).unwrap_err();
        assert_eq!(e.bits, "int32");
    }

    #[test]
    fn pointer_kinds() {
        let mut b = [0u8; 8];
        apply(
            EdgeKind::Pointer64,
            &mut b,
            0,
            0,
            0x1122_3344_5566_7788,
            8,
            0,
        )
        .unwrap();
        assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_7790);
        let mut b = [0u8; 4];
        apply(EdgeKind::Pointer32, &mut b, 0, 0, 0x8000_0000, 0, 0).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
        assert!(apply(EdgeKind::Pointer32Signed, &mut b, 0, 0, 0x8000_0000, 0, 0).is_err());
        assert!(apply(EdgeKind::Pointer32, &mut b, 0, 0, 0x1_0000_0000, 0, 0).is_err());
        apply(EdgeKind::Pointer32Signed, &mut b, 0, 0, 0, -8, 0).unwrap();
        assert_eq!(i32::from_le_bytes(b), -8);
    }

    #[test]
    fn neg_delta_and_got_relative() {
        let mut b = [0u8; 8];
        apply(EdgeKind::NegDelta32, &mut b, 0, 0x1010, 0x1000, 0, 0).unwrap();
        assert_eq!(i32::from_le_bytes(b[..4].try_into().unwrap()), 0x10);
        apply(EdgeKind::DeltaFromGot64, &mut b, 0, 0, 0x5000, 8, 0x4000).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0x1008);
        apply(EdgeKind::GotBaseDelta32, &mut b, 0, 0x3000, 0, 3, 0x4000).unwrap();
        assert_eq!(i32::from_le_bytes(b[..4].try_into().unwrap()), 0x1003);
    }

    #[test]
    fn relax_mov_to_lea() {
        // mov 0(%rip), %rax  = 48 8b 05 <disp32>
        let mut code = [0x48, 0x8b, 0x05, 0, 0, 0, 0];
        assert!(can_relax_got_load(&code, 3, true));
        apply(
            EdgeKind::GotLoadRelaxed { rex: true },
            &mut code,
            3,
            0x1003,
            0x2000,
            -4,
            0,
        )
        .unwrap();
        assert_eq!(code[..3], [0x48, 0x8d, 0x05]);
        assert_eq!(
            i32::from_le_bytes(code[3..].try_into().unwrap()),
            0x2000 - 4 - 0x1003
        );
    }

    #[test]
    fn relax_call_and_jmp() {
        let mut call = [0xff, 0x15, 0, 0, 0, 0];
        apply(
            EdgeKind::GotLoadRelaxed { rex: false },
            &mut call,
            2,
            0x100,
            0x200,
            -4,
            0,
        )
        .unwrap();
        assert_eq!(call[..2], [0x67, 0xe8]);
        let mut jmp = [0xff, 0x25, 0, 0, 0, 0];
        apply(
            EdgeKind::GotLoadRelaxed { rex: false },
            &mut jmp,
            2,
            0x100,
            0x200,
            -4,
            0,
        )
        .unwrap();
        assert_eq!(jmp[..2], [0x90, 0xe9]);
        // add foo@GOTPCREL(%rip), %rax is not relaxable.
        let add = [0x48, 0x03, 0x05, 0, 0, 0, 0];
        assert!(!can_relax_got_load(&add, 3, true));
    }

    #[test]
    fn tls_descriptor_relaxed_to_local_exec() {
        let mut code = [0x48, 0x8d, 0x05, 0, 0, 0, 0, 0xff, 0x10];
        apply(
            EdgeKind::TlsDescToLocalExec,
            &mut code,
            3,
            0,
            (-0x40i64) as u64,
            -4,
            0,
        )
        .unwrap();
        apply(EdgeKind::TlsDescCallToNop, &mut code, 7, 0, 0, 0, 0).unwrap();
        assert_eq!(code, [0x48, 0xc7, 0xc0, 0xc0, 0xff, 0xff, 0xff, 0x66, 0x90]);
        // lea x@tlsdesc(%rip), %r11  →  mov $tpoff, %r11
        let mut r11 = [0x4c, 0x8d, 0x1d, 0, 0, 0, 0];
        apply(
            EdgeKind::TlsDescToLocalExec,
            &mut r11,
            3,
            0,
            (-0x40i64) as u64,
            -4,
            0,
        )
        .unwrap();
        assert_eq!(r11, [0x49, 0xc7, 0xc3, 0xc0, 0xff, 0xff, 0xff]);
        let mut wrong = [0x48, 0x8b, 0x05, 0, 0, 0, 0];
        assert!(apply(EdgeKind::TlsDescToLocalExec, &mut wrong, 3, 0, 0, 0, 0).is_err());
        assert!(edge_kind_for(object::elf::R_X86_64_TLSDESC)
            .unwrap_err()
            .contains("TLS descriptor"));
        assert!(edge_kind_for(object::elf::RelocationType(9999))
            .unwrap_err()
            .contains("unknown relocation"));
    }

    /// Every kind: bytes before, the edge (P, S, A, GOT), bytes after; and each checked kind
    /// out of range once.
    #[test]
    fn every_kind_bytes_before_and_after() {
        use EdgeKind::*;
        let (p, got) = (0x7000_0000_1000u64, 0x7000_0000_8000u64);
        // (kind, S, A, expected bytes at offset 1 in a 10-byte 0xaa buffer)
        let cases: Vec<(EdgeKind, u64, i64, Vec<u8>)> = vec![
            (
                Pointer64,
                0x1122_3344_5566_7788,
                0,
                0x1122_3344_5566_7788u64.to_le_bytes().to_vec(),
            ),
            (
                Pointer32,
                0x8000_0010,
                -0x10,
                0x8000_0000u32.to_le_bytes().to_vec(),
            ),
            (
                Pointer32Signed,
                0x10,
                -0x20,
                (-0x10i32).to_le_bytes().to_vec(),
            ),
            (Pointer16, 0xfffe, 1, 0xffffu16.to_le_bytes().to_vec()),
            (Pointer8, 0x7f, 0, vec![0x7f]),
            (Delta64, p + 0x10, -4, 0xcu64.to_le_bytes().to_vec()),
            (Delta32, p - 0x100, -4, (-0x104i32).to_le_bytes().to_vec()),
            (Delta16, p + 0x100, 0, 0x100i16.to_le_bytes().to_vec()),
            (Delta8, p + 0x10, -4, vec![0x0c]),
            (NegDelta32, p - 0x40, 0, 0x40i32.to_le_bytes().to_vec()),
            (
                BranchPCRel32,
                p + 0x1000,
                -4,
                0xffci32.to_le_bytes().to_vec(),
            ),
            (GotDelta32, got + 8, -4, (0x7004i32).to_le_bytes().to_vec()),
            (GotDelta64, got + 8, -4, 0x7004u64.to_le_bytes().to_vec()),
            (GotOffset64, got + 16, 0, 16u64.to_le_bytes().to_vec()),
            (
                DeltaFromGot64,
                got - 0x100,
                0,
                (-0x100i64).to_le_bytes().to_vec(),
            ),
            (GotBaseDelta32, 0, 3, (0x7003i32).to_le_bytes().to_vec()),
            (GotBaseDelta64, 0, 3, 0x7003u64.to_le_bytes().to_vec()),
            (
                PltOffsetFromGot64,
                got + 0x40,
                0,
                0x40u64.to_le_bytes().to_vec(),
            ),
            (Size32, 24, 1, 25u32.to_le_bytes().to_vec()),
            (Size64, 24, 0, 24u64.to_le_bytes().to_vec()),
            (TlsGdDelta32, p + 0x20, -4, 0x1ci32.to_le_bytes().to_vec()),
            (TlsLdDelta32, p + 0x20, -4, 0x1ci32.to_le_bytes().to_vec()),
            (DtpOff32, 0x30, 4, 0x34u32.to_le_bytes().to_vec()),
            (DtpOff64, 0x30, 4, 0x34u64.to_le_bytes().to_vec()),
            (
                TlsModule64,
                0x4b4c_0000_0000_0001,
                0,
                0x4b4c_0000_0000_0001u64.to_le_bytes().to_vec(),
            ),
        ];
        for (kind, s, a, want) in cases {
            let mut buf = [0xaau8; 10];
            apply(kind, &mut buf, 1, p, s, a, got).unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
            assert_eq!(buf[0], 0xaa, "{kind:?} wrote before its field");
            assert_eq!(&buf[1..1 + want.len()], &want[..], "{kind:?}");
            assert_eq!(kind.size(), want.len(), "{kind:?} size");
            assert!(
                buf[1 + want.len()..].iter().all(|b| *b == 0xaa),
                "{kind:?} wrote past its field"
            );
        }
        // Negative absolute symbols (64-bit two's complement) fit signed fields.
        let mut buf = [0u8; 4];
        apply(
            Pointer32Signed,
            &mut buf,
            0,
            p,
            0xffff_ffff_ffff_8000,
            0,
            got,
        )
        .unwrap();
        assert_eq!(i32::from_le_bytes(buf), -0x8000);
        assert!(apply(Pointer32, &mut buf, 0, p, 0xffff_ffff_ffff_8000, 0, got).is_err());
        let mut b2 = [0u8; 2];
        apply(Pointer16, &mut b2, 0, p, (-2i64) as u64, 0, got).unwrap();
        assert_eq!(b2, [0xfe, 0xff]);
        let far = p + (1 << 32);
        for kind in [
            Pointer32Signed,
            Delta32,
            BranchPCRel32,
            GotDelta32,
            NegDelta32,
            GotBaseDelta32,
            TlsGdDelta32,
        ] {
            let mut buf = [0u8; 10];
            let (s, g) = if kind == GotBaseDelta32 {
                (0, far)
            } else if kind == NegDelta32 {
                (p - (1 << 32), got)
            } else {
                (far, got)
            };
            assert!(
                apply(kind, &mut buf, 1, p, s, 0, g).is_err(),
                "{kind:?} must be range checked"
            );
            assert_eq!(buf, [0u8; 10], "{kind:?} wrote despite the error");
        }
        for (kind, v) in [
            (Pointer32, 1u64 << 32),
            (Pointer16, 1 << 16),
            (Pointer8, 1 << 8),
            (Delta16, p + (1 << 15)),
            (Delta8, p + 128),
        ] {
            let mut buf = [0u8; 10];
            assert!(
                apply(kind, &mut buf, 1, p, v, 0, got).is_err(),
                "{kind:?} must be range checked"
            );
        }
    }
}
