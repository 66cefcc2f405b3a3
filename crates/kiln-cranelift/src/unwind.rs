//! Cranelift's unwind information as an `.eh_frame` section: one CIE (the ISA's) and one FDE per
//! function of a unit, written with `gimli::write`. Each FDE's `pc_begin` is left zero with a
//! relocation to its function's symbol, so kiln applies it like any object's `.eh_frame` and
//! registers the records with the unwinder (and hands them to gdb and jitdump).

use cranelift_codegen::gimli::write::{Address, EhFrame, Error as GimliError, FrameTable, Writer};
use cranelift_codegen::gimli::{self, constants, LittleEndian};
use cranelift_codegen::isa::unwind::systemv::UnwindInfo;
use cranelift_codegen::isa::TargetIsa;

/// A relocation in the written `.eh_frame`: `symbol` is an index chosen by the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FrameReloc {
    pub offset: u64,
    pub symbol: usize,
    pub addend: i64,
    /// `true`: `S + A - P`, 4 bytes; `false`: `S + A`, 8 bytes.
    pub pc_relative: bool,
}

/// An `.eh_frame` section (without a terminator: kiln adds it) and its relocations.
pub(crate) struct EhFrameSection {
    pub bytes: Vec<u8>,
    pub relocs: Vec<FrameReloc>,
}

/// The `.eh_frame` of `functions`: (symbol index, unwind info). `None` if the ISA has no
/// SystemV CIE.
pub(crate) fn eh_frame(
    isa: &dyn TargetIsa,
    functions: &[(usize, &UnwindInfo)],
) -> Result<Option<EhFrameSection>, String> {
    let Some(mut cie) = isa.create_systemv_cie() else {
        return Ok(None);
    };
    // PC-relative 4-byte pointers, as compilers write them: a 32-bit field is what the
    // unwinders, perf and kiln's jitdump rewriter handle best.
    cie.fde_address_encoding = constants::DW_EH_PE_pcrel | constants::DW_EH_PE_sdata4;
    let mut table = FrameTable::default();
    let cie_id = table.add_cie(cie);
    for (symbol, info) in functions {
        let fde = info.to_fde(Address::Symbol {
            symbol: *symbol,
            addend: 0,
        });
        table.add_fde(cie_id, fde);
    }
    let mut out = EhFrame(RelocatingWriter {
        // A CIE and an FDE of a few instructions each fit without growing.
        bytes: Vec::with_capacity(128),
        relocs: Vec::with_capacity(functions.len()),
    });
    table
        .write_eh_frame(&mut out)
        .map_err(|e| format!("writing .eh_frame: {e}"))?;
    let w = out.0;
    Ok(Some(EhFrameSection {
        bytes: w.bytes,
        relocs: w.relocs,
    }))
}

/// A gimli writer that records symbol-relative pointers as relocations.
struct RelocatingWriter {
    bytes: Vec<u8>,
    relocs: Vec<FrameReloc>,
}

impl Writer for RelocatingWriter {
    type Endian = LittleEndian;

    fn endian(&self) -> LittleEndian {
        LittleEndian
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn write(&mut self, bytes: &[u8]) -> gimli::write::Result<()> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn write_at(&mut self, offset: usize, bytes: &[u8]) -> gimli::write::Result<()> {
        let field = offset
            .checked_add(bytes.len())
            .and_then(|end| self.bytes.get_mut(offset..end))
            .ok_or(GimliError::OffsetOutOfBounds)?;
        field.copy_from_slice(bytes);
        Ok(())
    }

    fn write_eh_pointer(
        &mut self,
        address: Address,
        eh_pe: constants::DwEhPe,
        size: u8,
    ) -> gimli::write::Result<()> {
        let pc_relative = eh_pe.application() == constants::DW_EH_PE_pcrel;
        match address {
            Address::Constant(val) => {
                let val = match eh_pe.application() {
                    constants::DW_EH_PE_absptr => val,
                    constants::DW_EH_PE_pcrel => val.wrapping_sub(self.len() as u64),
                    _ => return Err(GimliError::UnsupportedPointerEncoding(eh_pe)),
                };
                self.write_eh_pointer_data(val, eh_pe.format(), size)
            }
            Address::Symbol { symbol, addend } => {
                let width = match (pc_relative, eh_pe.format()) {
                    _ if eh_pe.is_indirect() => 0,
                    (true, constants::DW_EH_PE_sdata4) => 4,
                    (false, constants::DW_EH_PE_absptr) if size == 8 => 8,
                    _ => 0,
                };
                if width == 0 || (!pc_relative && eh_pe.application() != constants::DW_EH_PE_absptr)
                {
                    return Err(GimliError::UnsupportedPointerEncoding(eh_pe));
                }
                self.relocs.push(FrameReloc {
                    offset: self.len() as u64,
                    symbol,
                    addend,
                    pc_relative,
                });
                self.write_udata(0, width)
            }
        }
    }
}
