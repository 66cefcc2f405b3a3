//! `kiln_jit_t`: kiln-jit's [`Jit`] over a C session, and the conversions between C's plain
//! values (`kiln_site_t`, `kiln_heap_ref_t`, region and kind numbers) and kiln-jit's types.
//!
//! Sites, inline caches and heap references are plain values in C, not handles: each names its
//! unit by the session's C number, and every use is checked by kiln-jit against the zone's live
//! units (a site of a removed or retired unit is an error, never a write).

use crate::error::CError;
use crate::ffi::types::*;
use crate::session::CSession;
use kiln_core::UnitId;
use kiln_jit::{
    HeapRef, Jit, KeyRegister, KeyWidth, LazyFunction, MonoIc, RegionKind, Site, SiteKind,
    ZoneConfig, ZonePlacement,
};
use kiln_target::ExecutorAddr;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) struct CJit {
    pub(crate) jit: Arc<Jit>,
    /// The session's numbering of units (zone units are session units).
    pub(crate) session: Arc<CSession>,
    /// Lazy functions by name, for status queries.
    lazy: Mutex<HashMap<String, LazyFunction>>,
}

impl CJit {
    pub(crate) fn new(session: Arc<CSession>, config: &ZoneConfig) -> Result<CJit, CError> {
        let jit = Jit::new(Arc::clone(&session.session), config).map_err(jit_error)?;
        Ok(CJit {
            jit: Arc::new(jit),
            session,
            lazy: Mutex::default(),
        })
    }

    /// A zone unit of this JIT by its C number.
    pub(crate) fn unit(&self, unit: kiln_unit_t) -> Result<UnitId, CError> {
        let id = self.session.unit(unit)?;
        if self.jit.unit(id).is_none() {
            return Err(CError::new(
                KILN_ERROR_UNKNOWN_UNIT,
                format!("unit {unit} is not a live unit of this zone"),
            ));
        }
        Ok(id)
    }

    /// Run a kiln-jit call that links: a link error goes through the session's `linking` (so a
    /// C generator's failure is reported as `KILN_ERROR_CALLBACK`), any other as `error` says.
    pub(crate) fn linking<T>(
        &self,
        link: impl FnOnce() -> kiln_jit::Result<T>,
    ) -> Result<T, CError> {
        self.session
            .linking(|| match link() {
                Ok(t) => Ok(Ok(t)),
                Err(kiln_jit::Error::Link(e)) => Err(e),
                Err(e) => Ok(Err(e)),
            })?
            .map_err(|e| self.error(e))
    }

    /// A kiln-jit error as C sees it, units named by their C numbers.
    pub(crate) fn error(&self, e: kiln_jit::Error) -> CError {
        let c = match e {
            kiln_jit::Error::Link(e) => return self.session.error(e),
            kiln_jit::Error::InUse { unit, users } => {
                let users: Vec<String> = users
                    .iter()
                    .map(|u| format!("unit {}", self.c_unit(*u)))
                    .collect();
                return CError::new(
                    KILN_ERROR_HAS_DEPENDENTS,
                    format!(
                        "unit {} cannot be dropped: {} use{} it and stay{} (drop {} too, or \
                         point {} sites elsewhere first)",
                        self.c_unit(unit),
                        users.join(", "),
                        if users.len() == 1 { "s" } else { "" },
                        if users.len() == 1 { "s" } else { "" },
                        if users.len() == 1 { "it" } else { "them" },
                        if users.len() == 1 { "its" } else { "their" },
                    ),
                );
            }
            e => jit_error(e),
        };
        let mut message = self.session.c_unit_names(c.message());
        if message.contains("does not fit the 32-bit heap reference") {
            return CError::invalid_argument(message);
        }
        for (rust, c) in RUST_NAMES {
            message = message.replace(rust, c);
        }
        CError::new(c.kind(), message)
    }

    pub(crate) fn c_unit(&self, unit: UnitId) -> kiln_unit_t {
        self.session.c_unit(unit)
    }

    pub(crate) fn c_site(&self, s: &Site) -> kiln_site_t {
        kiln_site_t {
            unit: self.c_unit(s.unit),
            addr: s.addr.0,
            kind: match s.kind {
                SiteKind::Rel32 => KILN_SITE_REL32,
                SiteKind::Abs64 => KILN_SITE_ABS64,
                SiteKind::Imm32 => KILN_SITE_IMM32,
            },
        }
    }

    /// The kiln-jit site of a C one. Its unit must be live in the session; whether the site
    /// is one of that unit's is kiln-jit's check, at use.
    pub(crate) fn site(&self, s: &kiln_site_t) -> Result<Site, CError> {
        let unit = self.session.unit(s.unit).map_err(|_| {
            CError::new(
                KILN_ERROR_STALE,
                format!(
                    "the site at {:#x} belongs to unit {}, which is not live (removed, or its \
                     code was reclaimed)",
                    s.addr, s.unit
                ),
            )
        })?;
        Ok(Site {
            unit,
            addr: ExecutorAddr(s.addr),
            kind: site_kind(s.kind)?,
        })
    }

    pub(crate) fn ic(&self, ic: &kiln_ic_t) -> Result<MonoIc, CError> {
        Ok(MonoIc {
            key: self.site(&ic.key)?,
            target: self.site(&ic.target)?,
            empty: ic.empty,
        })
    }

    pub(crate) fn c_heap_ref(&self, r: &HeapRef, value: u64) -> kiln_heap_ref_t {
        kiln_heap_ref_t {
            unit: self.c_unit(r.unit),
            addr: r.addr.0,
            width: u32::from(r.width),
            value,
        }
    }

    /// Every heap reference of the zone's live units, by address, with the value it holds
    /// (kiln-jit reads them through the executor's read-only path).
    pub(crate) fn heap_refs(&self) -> Result<Vec<(HeapRef, u64)>, CError> {
        self.jit.heap_refs().map_err(|e| self.error(e))
    }

    /// Write new values into heap references in one write window: all or nothing. Each must
    /// be a live reference of this zone (kiln-jit checks) and each value must fit its width.
    pub(crate) fn write_heap_refs(&self, values: &[(HeapRef, u64)]) -> Result<(), CError> {
        if let Some((r, v)) = values
            .iter()
            .find(|(r, v)| r.width == 4 && *v > u64::from(u32::MAX))
        {
            return Err(CError::invalid_argument(format!(
                "{v:#x} does not fit the 32-bit heap reference at {}",
                r.addr
            )));
        }
        self.jit.write_heap_refs(values).map_err(|e| self.error(e))
    }

    pub(crate) fn remember_lazy(&self, f: LazyFunction) {
        lock(&self.lazy).insert(f.name.clone(), f);
    }

    pub(crate) fn lazy_function(&self, name: &str) -> Result<LazyFunction, CError> {
        lock(&self.lazy).get(name).cloned().ok_or_else(|| {
            CError::new(
                KILN_ERROR_NOT_FOUND,
                format!("{name} is not a lazy function of this JIT"),
            )
        })
    }
}

/// kiln-jit's messages name its Rust API where they say what to do instead; C callers read the
/// C function's name.
const RUST_NAMES: [(&str, &str); 6] = [
    ("Jit::mono_ic makes one", "kiln_jit_ic_new makes one"),
    ("Jit::build_pic makes one", "kiln_jit_pic_build makes one"),
    ("clear() empties it", "kiln_jit_ic_clear empties it"),
    (
        "not a target: set_value",
        "not a target: use kiln_jit_set_value",
    ),
    ("is a call: retarget it", "is a call: use kiln_jit_retarget"),
    (
        "what grace_start returned",
        "what kiln_jit_grace_start returned",
    ),
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A kiln-jit error as C sees it.
pub(crate) fn jit_error(e: kiln_jit::Error) -> CError {
    use kiln_jit::Error;
    match e {
        Error::Link(e) => CError::from(e),
        Error::Target(e) => CError::from(e),
        Error::Stale(_) => CError::new(KILN_ERROR_STALE, e.to_string()),
        Error::Graph { .. } => CError::new(KILN_ERROR_MALFORMED, e.to_string()),
        Error::Config(_) | Error::Lazy { .. } => CError::new(KILN_ERROR_USAGE, e.to_string()),
        // `kiln_jit::Error` is non-exhaustive.
        _ => CError::new(KILN_ERROR_OTHER, e.to_string()),
    }
}

/// The zone configuration of a C one (0 sizes take kiln-jit's defaults).
pub(crate) fn zone_config(c: &kiln_zone_config_t, reach: &[u64]) -> Result<ZoneConfig, CError> {
    if c.size == 0 {
        return Err(CError::invalid_argument("config->size is 0"));
    }
    let mut config = ZoneConfig::new(c.size);
    if c.fixed_size != 0 {
        config.fixed_size = c.fixed_size;
    }
    config.placement = match c.placement {
        KILN_ZONE_ANYWHERE => ZonePlacement::Anywhere,
        KILN_ZONE_EXACTLY => ZonePlacement::Exactly(c.address),
        KILN_ZONE_NEAR => ZonePlacement::Near(c.address),
        KILN_ZONE_WITHIN_REACH if !reach.is_empty() => ZonePlacement::WithinReachOf(reach.to_vec()),
        KILN_ZONE_WITHIN_REACH => {
            return Err(CError::invalid_argument(
                "KILN_ZONE_WITHIN_REACH needs config->reach and config->reach_count",
            ))
        }
        p => {
            return Err(CError::invalid_argument(format!(
                "config->placement {p} is not a KILN_ZONE_* placement"
            )))
        }
    };
    Ok(config)
}

pub(crate) fn region(r: kiln_region_t) -> Result<RegionKind, CError> {
    match r {
        KILN_REGION_FIXED => Ok(RegionKind::Fixed),
        KILN_REGION_METHOD => Ok(RegionKind::Method),
        _ => Err(CError::invalid_argument(format!(
            "{r} is not a kiln_region_t (KILN_REGION_FIXED or KILN_REGION_METHOD)"
        ))),
    }
}

pub(crate) fn site_kind(k: kiln_site_kind_t) -> Result<SiteKind, CError> {
    match k {
        KILN_SITE_REL32 => Ok(SiteKind::Rel32),
        KILN_SITE_ABS64 => Ok(SiteKind::Abs64),
        KILN_SITE_IMM32 => Ok(SiteKind::Imm32),
        _ => Err(CError::invalid_argument(format!(
            "{k} is not a kiln_site_kind_t (KILN_SITE_REL32, _ABS64 or _IMM32)"
        ))),
    }
}

pub(crate) fn key_register(r: u32) -> Result<KeyRegister, CError> {
    Ok(match r {
        KILN_PIC_KEY_RAX => KeyRegister::Rax,
        KILN_PIC_KEY_RCX => KeyRegister::Rcx,
        KILN_PIC_KEY_RDX => KeyRegister::Rdx,
        KILN_PIC_KEY_RBX => KeyRegister::Rbx,
        KILN_PIC_KEY_RSI => KeyRegister::Rsi,
        KILN_PIC_KEY_RDI => KeyRegister::Rdi,
        KILN_PIC_KEY_R8 => KeyRegister::R8,
        KILN_PIC_KEY_R9 => KeyRegister::R9,
        KILN_PIC_KEY_R10 => KeyRegister::R10,
        _ => {
            return Err(CError::invalid_argument(format!(
                "{r} is not a KILN_PIC_KEY_* register"
            )))
        }
    })
}

pub(crate) fn key_width(w: u32) -> Result<KeyWidth, CError> {
    match w {
        KILN_PIC_KEY_32 => Ok(KeyWidth::Bits32),
        KILN_PIC_KEY_64 => Ok(KeyWidth::Bits64),
        _ => Err(CError::invalid_argument(format!(
            "key width {w}: KILN_PIC_KEY_32 or KILN_PIC_KEY_64"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_numbers_are_errors() {
        assert!(region(7)
            .unwrap_err()
            .message()
            .contains("not a kiln_region_t"));
        assert!(site_kind(9).is_err());
        assert!(key_register(4).is_err(), "rsp is no key register");
        assert!(key_width(16).is_err());
        let c = kiln_zone_config_t {
            size: 1 << 20,
            fixed_size: 0,
            placement: KILN_ZONE_WITHIN_REACH,
            address: 0,
            reach: std::ptr::null(),
            reach_count: 0,
        };
        assert!(zone_config(&c, &[]).is_err());
        assert!(zone_config(&c, &[0x1000]).is_ok());
    }
}
