//! Polymorphic inline caches: a stub per send site that compares the receiver's key with each
//! cached key and jumps to its target, else to the miss handler.
//!
//! ```text
//!   __kiln_pic_<zone>_<n>:            ; called from the site, key in the VM's key register
//!     cmp $k1, %eax                   ; or %r?x / movabs $k1, %r11; cmp %r11, %r?x
//!     je  t1                          ; 0f 84 rel32 — 4-aligned field, an edge to t1
//!     cmp $k2, %eax
//!     je  t2
//!     ...
//!     jmp miss                        ; e9 rel32 — an edge to the miss handler
//! ```
//!
//! **Convention.** The site calls (or jumps to) the PIC with the receiver's key in a register
//! the VM chooses ([`KeyRegister`]: `rax`, `rcx`, `rdx`, `rbx`, `rsi`, `rdi`, `r8`–`r10`) and
//! every other register as the target expects it: the PIC only compares and jumps (a tail
//! jump: the target returns to the site's caller), so arguments, the stack and the return
//! address pass through untouched. [`KeyWidth::Bits32`] compares the register's low 32 bits with
//! 32-bit keys (`cmp $imm32, %e?x`, 6 bytes, 5 for `%eax`); [`KeyWidth::Bits64`] compares all 64
//! bits: keys that are sign-extended 32-bit values with `cmp $imm32, %r?x`, others by loading
//! them into `%r11` first (`movabs`; `%r11` is clobbered, as a PLT stub may clobber it). Flags
//! are clobbered.
//!
//! **Life cycle.** [`Jit::build_pic`] links the stub into the method region through
//! [`Jit::link`] with edges to its targets (by name, or by address: the symbol defined there,
//! else an absolute definition), so it keeps a relink record: compaction moves it and relinks its
//! jumps, redefinition of a target relinks it. Then the site is retargeted to the stub (one atomic
//! store). A stub is never changed in place: [`Pic::grow`] links a new stub with one more case,
//! retargets the site to it, and *retires* the old one; past [`PicConfig::max_cases`] the site
//! is retargeted to the megamorphic handler instead. A thread that called the old stub runs the
//! old stub to its end, so every call reaches a target the site was given at some time for its
//! key — there is no window to worry about, unlike an inline guard ([`crate::MonoIc`]). Retired
//! stubs are freed by [`Jit::reclaim`], when the VM says no thread can still be in them.

use crate::error::{Error, Result};
use crate::graph::{JitGraph, SiteKind};
use crate::jit::{Jit, RegionKind, Site};
use crate::redefine::{Book, Place, RetiredKind};
use kiln::arch::x86_64::EdgeKind as X86;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::{Generated, UnitId};
use kiln_target::ExecutorAddr;

/// The most cases one PIC may hold.
pub const MAX_PIC_CASES: usize = 64;

/// Names that resolve to the absolute address they spell (hexadecimal), for PIC targets that
/// no symbol names.
const ABSOLUTE: &str = "__kiln_jit_abs_";

/// The register a PIC compares keys with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyRegister {
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
}

impl KeyRegister {
    /// The register's number in x86-64 encodings.
    fn number(self) -> u8 {
        match self {
            KeyRegister::Rax => 0,
            KeyRegister::Rcx => 1,
            KeyRegister::Rdx => 2,
            KeyRegister::Rbx => 3,
            KeyRegister::Rsi => 6,
            KeyRegister::Rdi => 7,
            KeyRegister::R8 => 8,
            KeyRegister::R9 => 9,
            KeyRegister::R10 => 10,
        }
    }
}

/// How much of the key register a PIC compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyWidth {
    /// The low 32 bits, with keys below 2³².
    Bits32,
    /// All 64 bits (keys that are not sign-extended 32-bit values clobber `%r11`).
    Bits64,
}

/// What a PIC case, miss or megamorphic handler reaches: a symbol of the zone's scope, or an
/// address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PicTarget {
    Name(String),
    Addr(ExecutorAddr),
}

impl From<ExecutorAddr> for PicTarget {
    fn from(a: ExecutorAddr) -> Self {
        PicTarget::Addr(a)
    }
}

impl From<&str> for PicTarget {
    fn from(n: &str) -> Self {
        PicTarget::Name(n.into())
    }
}

/// How a site's PICs are built. See the module docs.
#[derive(Clone, Debug)]
pub struct PicConfig {
    pub register: KeyRegister,
    pub width: KeyWidth,
    /// The most cases a PIC of this site holds (1 to [`MAX_PIC_CASES`]); one more goes
    /// megamorphic.
    pub max_cases: usize,
    /// Where a key no case matches goes.
    pub miss: PicTarget,
    /// Where the site goes once it has seen more than `max_cases` keys; without one, growing
    /// past the limit is an error.
    pub megamorphic: Option<PicTarget>,
}

impl PicConfig {
    /// Keys in `%eax`, 32 bits, at most 6 cases, no megamorphic handler.
    pub fn new(miss: impl Into<PicTarget>) -> Self {
        PicConfig {
            register: KeyRegister::Rax,
            width: KeyWidth::Bits32,
            max_cases: 6,
            miss: miss.into(),
            megamorphic: None,
        }
    }
}

/// A site served by PICs: a handle (copy it freely), valid while the site's unit is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pic {
    pub site: Site,
}

/// Where a PIC'd site is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PicState {
    /// The site reaches the stub `stub` (at `entry`) with `cases` cases.
    Polymorphic {
        cases: usize,
        stub: UnitId,
        entry: ExecutorAddr,
    },
    /// The site reaches the megamorphic handler.
    Megamorphic,
}

/// A target as kept: names follow redefinition by themselves, places are translated.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kept {
    Name(String),
    At(Place),
}

/// What kiln-jit keeps of a PIC'd site, by the site's place.
#[derive(Clone, Debug)]
pub(crate) struct PicRecord {
    register: KeyRegister,
    width: KeyWidth,
    max_cases: usize,
    miss: Kept,
    megamorphic: Option<Kept>,
    cases: Vec<(u64, Kept)>,
    /// The stub the site reaches, and where its entry is (`None`: megamorphic).
    stub: Option<(UnitId, Place)>,
}

impl PicRecord {
    /// The stub the site reaches (`None`: megamorphic).
    pub fn stub_unit(&self) -> Option<UnitId> {
        self.stub.map(|(u, _)| u)
    }

    /// A redefinition moved definitions: targets kept by address follow.
    pub fn translate(&mut self, f: &dyn Fn(Place) -> Place) {
        let fix = |k: &mut Kept| {
            if let Kept::At(p) = k {
                *p = f(*p);
            }
        };
        fix(&mut self.miss);
        if let Some(m) = &mut self.megamorphic {
            fix(m);
        }
        for (_, t) in &mut self.cases {
            fix(t);
        }
    }
}

impl Jit {
    /// Build a PIC for `site` (a `Rel32` call or jump, or an `Abs64` slot an indirect call
    /// goes through) from `cases` and `config`, and retarget the site to it. A PIC the site
    /// had is retired. See the module docs.
    pub fn build_pic(
        &self,
        site: &Site,
        config: &PicConfig,
        cases: &[(u64, PicTarget)],
    ) -> Result<Pic> {
        if !matches!(site.kind, SiteKind::Rel32 | SiteKind::Abs64) {
            return Err(Error::Stale(format!(
                "a PIC serves a Rel32 or Abs64 site; the site at {} is an immediate",
                site.addr
            )));
        }
        if !(1..=MAX_PIC_CASES).contains(&config.max_cases) || cases.len() > config.max_cases {
            return Err(Error::Config(format!(
                "a PIC of {} cases with a limit of {} (the limit is 1 to {MAX_PIC_CASES})",
                cases.len(),
                config.max_cases
            )));
        }
        for (i, (k, _)) in cases.iter().enumerate() {
            check_key(config.width, *k, &cases[..i])?;
        }
        let mut book = self.book();
        self.check_site(site)?;
        let keep = |t: &PicTarget| self.keep(t);
        let mut record = PicRecord {
            register: config.register,
            width: config.width,
            max_cases: config.max_cases,
            miss: keep(&config.miss),
            megamorphic: config.megamorphic.as_ref().map(keep),
            cases: cases.iter().map(|(k, t)| (*k, keep(t))).collect(),
            stub: None,
        };
        let place = self.place(site.addr);
        let old = book.pics.get(&place).and_then(|r| r.stub);
        record.stub = Some(self.install_stub(&mut book, site, &record)?);
        if let Some((stub, _)) = old {
            self.retire(&mut book, stub, RetiredKind::Pic);
        }
        book.pics.insert(place, record);
        Ok(Pic { site: *site })
    }

    fn keep(&self, t: &PicTarget) -> Kept {
        match t {
            PicTarget::Name(n) => Kept::Name(n.clone()),
            PicTarget::Addr(a) => Kept::At(self.place(*a)),
        }
    }

    /// Link a stub for `record`'s cases and retarget `site` to it.
    fn install_stub(
        &self,
        book: &mut Book,
        site: &Site,
        record: &PicRecord,
    ) -> Result<(UnitId, Place)> {
        let mut cases = Vec::with_capacity(record.cases.len());
        for (k, t) in &record.cases {
            cases.push((*k, self.edge_target(book, t)?));
        }
        let miss = self.edge_target(book, &record.miss)?;
        let (code, edges) = pic_code(record.register, record.width, &cases, &miss)?;
        book.pics_made += 1;
        let name = format!(
            "__kiln_pic_{:x}_{}",
            self.zone().range().0 .0,
            book.pics_made
        );
        let mut g = InMemoryGraph::new(name.as_str());
        g.add_function(&name, code, edges, None);
        let linked = self.link(RegionKind::Method, &JitGraph::new(g))?;
        let entry = self
            .session()
            .unit_symbols(linked.unit)?
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.addr);
        let installed = entry
            .ok_or_else(|| Error::Stale(format!("the PIC {name} has no address")))
            .and_then(|entry| self.retarget_in(book, site, entry).map(|()| entry));
        match installed {
            Ok(entry) => Ok((linked.unit, self.place(entry))),
            Err(e) => {
                let _ = self.session().remove(linked.unit);
                self.units().remove(&linked.unit);
                Err(e)
            }
        }
    }

    /// The name (and addend) an edge to `t` uses: its own name; for an address, a symbol of the
    /// zone's scope defined exactly there, else an absolute definition.
    fn edge_target(&self, book: &mut Book, t: &Kept) -> Result<String> {
        let at = match t {
            Kept::Name(n) => return Ok(n.clone()),
            Kept::At(p) => self
                .address(*p)
                .ok_or_else(|| Error::Stale("a PIC target's unit is gone".to_string()))?,
        };
        let session = self.session();
        if let Some((unit, _, _)) = session.unit_at(at) {
            let named = session.unit_symbols(unit)?.into_iter().find(|(n, s)| {
                s.addr == at
                    && session
                        .lookup_symbol(self.scope(), n)
                        .is_some_and(|v| v.addr == at)
            });
            if let Some((n, _)) = named {
                return Ok(n);
            }
        }
        if !book.abs_generator {
            session.add_generator(self.scope(), |name: &str| {
                let addr = name
                    .strip_prefix(ABSOLUTE)
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok());
                Ok(addr.map_or(Generated::NotMine, |a| Generated::Address(ExecutorAddr(a))))
            });
            book.abs_generator = true;
        }
        Ok(format!("{ABSOLUTE}{:x}", at.0))
    }

    /// Where a kept target is now.
    fn target_address(&self, t: &Kept) -> Result<ExecutorAddr> {
        match t {
            Kept::Name(n) => self
                .session()
                .lookup_symbol(self.scope(), n)
                .map(|s| s.addr)
                .ok_or_else(|| Error::Stale(format!("{n} is not defined in the zone's scope"))),
            Kept::At(p) => self
                .address(*p)
                .ok_or_else(|| Error::Stale("a PIC target's unit is gone".to_string())),
        }
    }
}

impl Pic {
    /// Cache `target` for `key` too: a new stub with one more case replaces the site's (which
    /// is retired); past the limit, the site goes to the megamorphic handler (an error without
    /// one). Growing a megamorphic site does nothing.
    pub fn grow(&self, jit: &Jit, key: u64, target: impl Into<PicTarget>) -> Result<PicState> {
        let target = target.into();
        let mut book = jit.book();
        jit.check_site(&self.site)?;
        let place = jit.place(self.site.addr);
        let mut record = book.pics.get(&place).cloned().ok_or_else(|| {
            Error::Stale(format!(
                "the site at {} has no PIC (Jit::build_pic makes one)",
                self.site.addr
            ))
        })?;
        let Some((old, _)) = record.stub else {
            return Ok(PicState::Megamorphic);
        };
        check_key(record.width, key, &record.cases)?;
        if record.cases.len() >= record.max_cases {
            let Some(mega) = &record.megamorphic else {
                return Err(Error::Config(format!(
                    "the PIC at {} holds its limit of {} cases and has no megamorphic handler",
                    self.site.addr, record.max_cases
                )));
            };
            let to = jit.target_address(mega)?;
            jit.retarget_in(&mut book, &self.site, to)?;
            record.stub = None;
        } else {
            record.cases.push((key, jit.keep(&target)));
            record.stub = Some(jit.install_stub(&mut book, &self.site, &record)?);
        }
        jit.retire(&mut book, old, RetiredKind::Pic);
        let state = state_of(jit, &record);
        book.pics.insert(place, record);
        Ok(state)
    }

    /// Where the site is.
    pub fn state(&self, jit: &Jit) -> Result<PicState> {
        let book = jit.book();
        jit.check_site(&self.site)?;
        book.pics
            .get(&jit.place(self.site.addr))
            .map(|r| state_of(jit, r))
            .ok_or_else(|| Error::Stale(format!("the site at {} has no PIC", self.site.addr)))
    }
}

fn state_of(jit: &Jit, r: &PicRecord) -> PicState {
    match r.stub {
        Some((stub, entry)) => PicState::Polymorphic {
            cases: r.cases.len(),
            stub,
            entry: jit.address(entry).unwrap_or(ExecutorAddr(0)),
        },
        None => PicState::Megamorphic,
    }
}

/// A key must fit the width and not be cached already.
fn check_key<T>(width: KeyWidth, key: u64, cached: &[(u64, T)]) -> Result<()> {
    if width == KeyWidth::Bits32 && key > u64::from(u32::MAX) {
        return Err(Error::Config(format!(
            "key {key:#x} does not fit a PIC comparing 32 bits"
        )));
    }
    if cached.iter().any(|(k, _)| *k == key) {
        return Err(Error::Config(format!(
            "key {key:#x} is cached already: a PIC holds each key once"
        )));
    }
    Ok(())
}

/// `cmp KEY, REG` for one case.
fn compare(register: KeyRegister, width: KeyWidth, key: u64) -> Vec<u8> {
    let r = register.number();
    let (rex_b, low) = (u8::from(r >= 8), r & 7);
    let mut c = Vec::with_capacity(13);
    let imm32 = match width {
        KeyWidth::Bits32 => Some((key as u32).to_le_bytes()),
        KeyWidth::Bits64 => i32::try_from(key as i64).ok().map(|k| k.to_le_bytes()),
    };
    match (width, imm32) {
        (_, None) => {
            // movabs $key, %r11; cmp %r11, %reg (39 /r: REX.W, REX.R for r11)
            c.extend([0x49, 0xbb]);
            c.extend(key.to_le_bytes());
            c.extend([0x4c | rex_b, 0x39, 0xc0 | (3 << 3) | low]);
        }
        (w, Some(imm)) => {
            let rex = match w {
                KeyWidth::Bits64 => 0x48 | rex_b,
                KeyWidth::Bits32 => 0x40 | rex_b,
            };
            if rex != 0x40 {
                c.push(rex);
            }
            if r == 0 {
                c.push(0x3d); // cmp $imm32, %eax / %rax
            } else {
                c.extend([0x81, 0xf8 | low]); // 81 /7 id
            }
            c.extend(imm);
        }
    }
    c
}

/// Pad `code` with one nop of 1 to 3 bytes so that `code.len() + ahead` is a multiple of 4.
fn pad(code: &mut Vec<u8>, ahead: usize) {
    match (4 - (code.len() + ahead) % 4) % 4 {
        1 => code.push(0x90),
        2 => code.extend([0x66, 0x90]),
        3 => code.extend([0x0f, 0x1f, 0x00]),
        _ => {}
    }
}

/// A PIC's code (to be placed 16-aligned) and its edges: per case a compare and a `je` to the
/// case's target, then a `jmp` to the miss handler; every rel32 4-aligned, so that relinking
/// rewrites it with one atomic store.
pub(crate) fn pic_code(
    register: KeyRegister,
    width: KeyWidth,
    cases: &[(u64, String)],
    miss: &str,
) -> Result<(Vec<u8>, Vec<InMemoryEdge>)> {
    let mut code = Vec::new();
    let mut edges = Vec::new();
    let field = |code: &Vec<u8>| {
        u32::try_from(code.len()).map_err(|_| Error::Config("a PIC of more than 4 GiB".into()))
    };
    for (key, target) in cases {
        let cmp = compare(register, width, *key);
        pad(&mut code, cmp.len() + 2);
        code.extend(cmp);
        code.extend([0x0f, 0x84]);
        edges.push(InMemoryEdge::new(
            field(&code)?,
            X86::BranchPCRel32,
            target,
            -4,
        ));
        code.extend([0; 4]);
    }
    pad(&mut code, 1);
    code.push(0xe9);
    edges.push(InMemoryEdge::new(
        field(&code)?,
        X86::BranchPCRel32,
        miss,
        -4,
    ));
    code.extend([0; 4]);
    Ok((code, edges))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_encode_as_documented() {
        use KeyRegister::*;
        use KeyWidth::*;
        assert_eq!(compare(Rax, Bits32, 0x1234), [0x3d, 0x34, 0x12, 0, 0]);
        assert_eq!(compare(Rdi, Bits32, 7), [0x81, 0xff, 7, 0, 0, 0]);
        assert_eq!(compare(R9, Bits32, 7), [0x41, 0x81, 0xf9, 7, 0, 0, 0]);
        assert_eq!(compare(Rax, Bits64, 7), [0x48, 0x3d, 7, 0, 0, 0]);
        assert_eq!(
            compare(R10, Bits64, u64::MAX),
            [0x49, 0x81, 0xfa, 0xff, 0xff, 0xff, 0xff]
        );
        let wide = compare(Rcx, Bits64, 0x1234_5678_9abc);
        assert_eq!(&wide[..2], [0x49, 0xbb]);
        assert_eq!(&wide[10..], [0x4c, 0x39, 0xd9]);
    }

    #[test]
    fn rel32_fields_are_aligned() {
        for (reg, width, key) in [
            (KeyRegister::Rax, KeyWidth::Bits32, 1),
            (KeyRegister::R8, KeyWidth::Bits64, 1 << 40),
            (KeyRegister::Rsi, KeyWidth::Bits64, 5),
        ] {
            let cases: Vec<(u64, String)> = (0..5).map(|i| (key + i, format!("t{i}"))).collect();
            let (code, edges) = pic_code(reg, width, &cases, "miss").unwrap();
            assert_eq!(edges.len(), 6);
            for e in &edges {
                assert_eq!(e.offset % 4, 0);
                assert!(matches!(code[e.offset as usize - 1], 0x84 | 0xe9));
            }
        }
    }
}
