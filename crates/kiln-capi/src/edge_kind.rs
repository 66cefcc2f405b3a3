//! `kiln_edge_kind_t`: kiln's edge kinds as C numbers.
//!
//! [`c_value`] is an exhaustive `match`: a kind added to `kiln::arch::x86_64::EdgeKind` fails
//! to compile here until it has a number (and then the header check asks for it in kiln.h).

use crate::ffi::types::*;
use kiln_core::arch::x86_64::EdgeKind as X86;
use kiln_core::arch::EdgeKind;

/// Every C edge kind (the tests check each maps to a kiln kind and back).
#[cfg(test)]
pub(crate) const ALL: [kiln_edge_kind_t; 35] = [
    KILN_EDGE_KEEP_ALIVE,
    KILN_EDGE_X86_64_POINTER64,
    KILN_EDGE_X86_64_POINTER32,
    KILN_EDGE_X86_64_POINTER32_SIGNED,
    KILN_EDGE_X86_64_POINTER16,
    KILN_EDGE_X86_64_POINTER8,
    KILN_EDGE_X86_64_DELTA64,
    KILN_EDGE_X86_64_DELTA32,
    KILN_EDGE_X86_64_DELTA16,
    KILN_EDGE_X86_64_DELTA8,
    KILN_EDGE_X86_64_NEG_DELTA32,
    KILN_EDGE_X86_64_BRANCH_PCREL32,
    KILN_EDGE_X86_64_GOT_DELTA32,
    KILN_EDGE_X86_64_GOT_DELTA32_RELAXABLE,
    KILN_EDGE_X86_64_GOT_DELTA32_RELAXABLE_REX,
    KILN_EDGE_X86_64_GOT_LOAD_RELAXED,
    KILN_EDGE_X86_64_GOT_LOAD_RELAXED_REX,
    KILN_EDGE_X86_64_GOT_DELTA64,
    KILN_EDGE_X86_64_GOT_OFFSET64,
    KILN_EDGE_X86_64_DELTA_FROM_GOT64,
    KILN_EDGE_X86_64_GOT_BASE_DELTA32,
    KILN_EDGE_X86_64_GOT_BASE_DELTA64,
    KILN_EDGE_X86_64_PLT_OFFSET_FROM_GOT64,
    KILN_EDGE_X86_64_SIZE32,
    KILN_EDGE_X86_64_SIZE64,
    KILN_EDGE_X86_64_TLS_GD_DELTA32,
    KILN_EDGE_X86_64_TLS_LD_DELTA32,
    KILN_EDGE_X86_64_DTP_OFF32,
    KILN_EDGE_X86_64_DTP_OFF64,
    KILN_EDGE_X86_64_TLS_MODULE64,
    KILN_EDGE_X86_64_TP_OFF32,
    KILN_EDGE_X86_64_TP_OFF64,
    KILN_EDGE_X86_64_GOT_TP_OFF_DELTA32,
    KILN_EDGE_X86_64_TLS_DESC_TO_LOCAL_EXEC,
    KILN_EDGE_X86_64_TLS_DESC_CALL_TO_NOP,
];

/// The C number of `kind`.
pub(crate) fn c_value(kind: EdgeKind) -> kiln_edge_kind_t {
    let x86 = match kind {
        EdgeKind::KeepAlive => return KILN_EDGE_KEEP_ALIVE,
        EdgeKind::X86_64(k) => k,
    };
    match x86 {
        X86::Pointer64 => KILN_EDGE_X86_64_POINTER64,
        X86::Pointer32 => KILN_EDGE_X86_64_POINTER32,
        X86::Pointer32Signed => KILN_EDGE_X86_64_POINTER32_SIGNED,
        X86::Pointer16 => KILN_EDGE_X86_64_POINTER16,
        X86::Pointer8 => KILN_EDGE_X86_64_POINTER8,
        X86::Delta64 => KILN_EDGE_X86_64_DELTA64,
        X86::Delta32 => KILN_EDGE_X86_64_DELTA32,
        X86::Delta16 => KILN_EDGE_X86_64_DELTA16,
        X86::Delta8 => KILN_EDGE_X86_64_DELTA8,
        X86::NegDelta32 => KILN_EDGE_X86_64_NEG_DELTA32,
        X86::BranchPCRel32 => KILN_EDGE_X86_64_BRANCH_PCREL32,
        X86::GotDelta32 => KILN_EDGE_X86_64_GOT_DELTA32,
        X86::GotDelta32Relaxable { rex: false } => KILN_EDGE_X86_64_GOT_DELTA32_RELAXABLE,
        X86::GotDelta32Relaxable { rex: true } => KILN_EDGE_X86_64_GOT_DELTA32_RELAXABLE_REX,
        X86::GotLoadRelaxed { rex: false } => KILN_EDGE_X86_64_GOT_LOAD_RELAXED,
        X86::GotLoadRelaxed { rex: true } => KILN_EDGE_X86_64_GOT_LOAD_RELAXED_REX,
        X86::GotDelta64 => KILN_EDGE_X86_64_GOT_DELTA64,
        X86::GotOffset64 => KILN_EDGE_X86_64_GOT_OFFSET64,
        X86::DeltaFromGot64 => KILN_EDGE_X86_64_DELTA_FROM_GOT64,
        X86::GotBaseDelta32 => KILN_EDGE_X86_64_GOT_BASE_DELTA32,
        X86::GotBaseDelta64 => KILN_EDGE_X86_64_GOT_BASE_DELTA64,
        X86::PltOffsetFromGot64 => KILN_EDGE_X86_64_PLT_OFFSET_FROM_GOT64,
        X86::Size32 => KILN_EDGE_X86_64_SIZE32,
        X86::Size64 => KILN_EDGE_X86_64_SIZE64,
        X86::TlsGdDelta32 => KILN_EDGE_X86_64_TLS_GD_DELTA32,
        X86::TlsLdDelta32 => KILN_EDGE_X86_64_TLS_LD_DELTA32,
        X86::DtpOff32 => KILN_EDGE_X86_64_DTP_OFF32,
        X86::DtpOff64 => KILN_EDGE_X86_64_DTP_OFF64,
        X86::TlsModule64 => KILN_EDGE_X86_64_TLS_MODULE64,
        X86::TpOff32 => KILN_EDGE_X86_64_TP_OFF32,
        X86::TpOff64 => KILN_EDGE_X86_64_TP_OFF64,
        X86::GotTpOffDelta32 => KILN_EDGE_X86_64_GOT_TP_OFF_DELTA32,
        X86::TlsDescToLocalExec => KILN_EDGE_X86_64_TLS_DESC_TO_LOCAL_EXEC,
        X86::TlsDescCallToNop => KILN_EDGE_X86_64_TLS_DESC_CALL_TO_NOP,
    }
}

/// The kiln edge kind of a C number, if it is one.
pub(crate) fn from_c(value: kiln_edge_kind_t) -> Option<EdgeKind> {
    all_kinds().find(|k| c_value(*k) == value)
}

/// Every kiln edge kind the C API knows.
fn all_kinds() -> impl Iterator<Item = EdgeKind> {
    use X86::*;
    let x86 = [
        Pointer64,
        Pointer32,
        Pointer32Signed,
        Pointer16,
        Pointer8,
        Delta64,
        Delta32,
        Delta16,
        Delta8,
        NegDelta32,
        BranchPCRel32,
        GotDelta32,
        GotDelta32Relaxable { rex: false },
        GotDelta32Relaxable { rex: true },
        GotLoadRelaxed { rex: false },
        GotLoadRelaxed { rex: true },
        GotDelta64,
        GotOffset64,
        DeltaFromGot64,
        GotBaseDelta32,
        GotBaseDelta64,
        PltOffsetFromGot64,
        Size32,
        Size64,
        TlsGdDelta32,
        TlsLdDelta32,
        DtpOff32,
        DtpOff64,
        TlsModule64,
        TpOff32,
        TpOff64,
        GotTpOffDelta32,
        TlsDescToLocalExec,
        TlsDescCallToNop,
    ];
    std::iter::once(EdgeKind::KeepAlive).chain(x86.into_iter().map(EdgeKind::X86_64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_c_kind_maps_to_one_kiln_kind_and_back() {
        let kinds: Vec<EdgeKind> = all_kinds().collect();
        assert_eq!(kinds.len(), ALL.len());
        for v in ALL {
            let k = from_c(v).unwrap_or_else(|| panic!("C edge kind {v} has no kiln kind"));
            assert_eq!(c_value(k), v);
        }
        let mut values: Vec<_> = kinds.iter().map(|k| c_value(*k)).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), ALL.len(), "two kinds share a C number");
        assert!(from_c(9999).is_none());
    }
}
