//! Checks an `.eh_frame` section before it is handed to the unwinder.
//!
//! libgcc's `__register_frame` keeps a pointer and later walks the section on its own: record
//! by record until a zero length word, following each FDE's CIE pointer, decoding each FDE's
//! start address with its CIE's pointer encoding. Whatever it meets on the way it trusts: a
//! missing terminator walks off the end, an indirect encoding dereferences an arbitrary
//! address, an encoding it does not know calls `abort()`. And it does this not only when
//! JIT'd code throws, but whenever anything in the process unwinds (a Rust panic, a C++
//! exception in a library), when it sorts the registered sections. So a section is accepted
//! only if every record lies inside the registered range, a zero terminator ends it there,
//! every FDE's CIE is a CIE of the same range, and every FDE address encoding is one libgcc
//! and LLVM's libunwind both decode without dereferencing anything.

use gimli::{constants, BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection};

/// Check `bytes`, the section as it lies at `addr`.
pub(crate) fn check(bytes: &[u8], addr: u64) -> Result<(), String> {
    let end = terminator(bytes)?;
    let section = EhFrame::new(&bytes[..end], LittleEndian);
    let bases = BaseAddresses::default().set_eh_frame(addr);
    let mut entries = section.entries(&bases);
    while let Some(entry) = entries.next().map_err(|e| format!(".eh_frame: {e}"))? {
        match entry {
            CieOrFde::Cie(cie) => fde_encoding_ok(cie.fde_address_encoding())?,
            CieOrFde::Fde(partial) => {
                let fde = partial
                    .parse(|s, b, o| s.cie_from_offset(b, o))
                    .map_err(|e| format!(".eh_frame: FDE: {e}"))?;
                fde_encoding_ok(fde.cie().fde_address_encoding())?;
            }
        }
    }
    Ok(())
}

/// The offset just past the zero terminator, walking records as libgcc does.
fn terminator(bytes: &[u8]) -> Result<usize, String> {
    let mut off = 0usize;
    loop {
        let word = bytes
            .get(off..off + 4)
            .ok_or(".eh_frame: no zero terminator inside the registered range")?;
        let len = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        if len == 0 {
            return Ok(off + 4);
        }
        if len == u32::MAX {
            return Err(format!(
                ".eh_frame: record at +{off:#x} has a 64-bit length, which libgcc cannot read"
            ));
        }
        off = (off + 4)
            .checked_add(len as usize)
            .filter(|&next| next <= bytes.len() && len >= 4)
            .ok_or_else(|| {
                format!(".eh_frame: record at +{off:#x} runs past the registered range")
            })?;
    }
}

/// Absolute or PC-relative, fixed size, never indirect (libgcc computes its table's masks from
/// the size, and aborts on the LEB128 forms there).
fn fde_encoding_ok(enc: Option<constants::DwEhPe>) -> Result<(), String> {
    let Some(enc) = enc else { return Ok(()) };
    let application_ok = matches!(
        enc.application(),
        constants::DW_EH_PE_absptr | constants::DW_EH_PE_pcrel
    );
    let format_ok = matches!(
        enc.format(),
        constants::DW_EH_PE_absptr
            | constants::DW_EH_PE_udata2
            | constants::DW_EH_PE_udata4
            | constants::DW_EH_PE_udata8
            | constants::DW_EH_PE_sdata2
            | constants::DW_EH_PE_sdata4
            | constants::DW_EH_PE_sdata8
    );
    if enc.is_indirect() || !application_ok || !format_ok {
        return Err(format!(
            ".eh_frame: FDE address encoding {:#x} is not one the unwinder reads safely",
            enc.0
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CIE (augmentation "zR", FDE encoding `enc`) and one FDE, then `tail`.
    fn section(enc: u8, tail: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        // CIE: length, id 0, version 1, "zR\0", code align 1, data align -8, ra 16,
        // augmentation length 1, encoding; padded to 4.
        let cie: [u8; 12] = [1, b'z', b'R', 0, 1, 0x78, 16, 1, enc, 0, 0, 0];
        v.extend_from_slice(&(4 + cie.len() as u32).to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&cie);
        // FDE: length, CIE pointer (back to offset 0), pc_begin, pc_range (4 bytes each),
        // augmentation length 0, padding.
        let at = v.len() as u32;
        v.extend_from_slice(&20u32.to_le_bytes());
        v.extend_from_slice(&(at + 4).to_le_bytes());
        v.extend_from_slice(&0x100u32.to_le_bytes());
        v.extend_from_slice(&0x10u32.to_le_bytes());
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn accepts_a_terminated_pcrel_section() {
        let s = section(0x1b, &[0; 4]); // pcrel | sdata4
        check(&s, 0x40_0000).unwrap();
    }

    #[test]
    fn refuses_what_the_unwinder_would_trip_on() {
        assert!(check(&section(0x1b, &[]), 0x1000).is_err(), "no terminator");
        assert!(check(&section(0x9b, &[0; 4]), 0x1000).is_err(), "indirect");
        assert!(check(&section(0x01, &[0; 4]), 0x1000).is_err(), "uleb128");
        assert!(check(&section(0x3b, &[0; 4]), 0x1000).is_err(), "datarel");
        assert!(check(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], 0x1000).is_err());
        assert!(
            check(&[0x40, 0, 0, 0, 0, 0, 0, 0], 0x1000).is_err(),
            "overlong"
        );
        let mut s = section(0x1b, &[0; 4]);
        s[24] = 0x80; // the FDE's CIE pointer now points before the section
        assert!(check(&s, 0x1000).is_err(), "CIE outside");
        check(&[0; 4], 0x1000).unwrap(); // just the terminator
    }
}
