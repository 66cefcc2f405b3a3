//! Monomorphic inline caches: a send site compiled as a guard and a call.
//!
//! The VM compiles the site in one of these shapes (the key register and the class word are the
//! VM's; what kiln-jit needs is two declared sites):
//!
//! ```text
//!   mov 8(%rdi), %rax          ; the receiver's class word
//!   cmp $KEY, %eax             ; 3d imm32        — key: an Imm32 site (4-aligned)
//!   jne miss
//!   call TARGET                ; e8 rel32        — target: a Rel32 site (4-aligned)
//!
//!   movabs $KEY, %r11          ; 49 bb imm64     — key: an Abs64 site (8-aligned)
//!   cmp %r11, %rax
//!   jne miss
//!   call TARGET
//! ```
//!
//! The VM chooses an *empty key*: a value no receiver ever has (0, or an odd value where class
//! words are aligned pointers). A guard holding it fails for everyone: the IC is empty and every
//! call takes the miss path.
//!
//! ## Changing an inline cache
//!
//! The promise: no thread runs the new target for a receiver of the old key, nor the old target
//! for a receiver of the new key. Each step below is one aligned atomic store followed by every
//! core serializing (a write window), so after a step returns no core runs the bytes it
//! replaced. Steps alone are not enough: a thread may have run the guard with the old key and be
//! stopped (preempted, or just slow) *before* its `call`. Serializing the cores does not move it
//! past the call; if the target changed meanwhile, it would call the new target with an
//! old-key receiver. So a target is only changed when no thread can be between guard and call
//! of a hit on another key:
//!
//! 1. **empty → (k, t)**, when the guard has not been able to hit since a reclaim (never set,
//!    or cleared before the VM's last [`crate::Jit::reclaim`]): nobody is between a hit and the
//!    call. Retarget the call to `t` (store, serialize), then set the key to `k` (store,
//!    serialize): a thread that sees `k` finds the call already at `t`. Done at once.
//! 2. **(k0, t) → (k, t)**, same target: set the key (store, serialize). A thread in flight
//!    with a `k0` receiver calls `t`, which `k0` called anyway. Done at once.
//! 3. **(k0, t0) → (k, t)**: set the empty key (store, serialize: from now on every guard
//!    fails), and leave the change *pending*. Threads that hit `k0` before the store are still
//!    allowed to call `t0`, which the call site keeps. When the VM next says no thread can be in
//!    code it entered before then — [`crate::Jit::reclaim`] with an epoch begun after the store
//!    — the pending change is done as in 1. Until then calls take the miss path, which is
//!    always correct.
//! 4. **clear**: set the empty key (store, serialize). The IC counts as hit-able until the next
//!    reclaim, so a `set` right after a clear waits like 3.
//!
//! The miss handler usually calls `set`; a VM that stops its threads (a safepoint) can call
//! [`crate::Jit::reclaim_retired`] right after it to finish at once.

use crate::error::{Error, Result};
use crate::graph::SiteKind;
use crate::jit::{Jit, Site, WrittenValue};
use crate::redefine::{Book, Epoch, Place, Reclaimed};
use kiln_target::ExecutorAddr;

/// A monomorphic inline cache: a guard's key site and the call it guards. Create it with
/// [`Jit::mono_ic`]; a handle (copy it freely), valid while its unit is live and not retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MonoIc {
    /// The key the guard compares with (`Imm32` or `Abs64`).
    pub key: Site,
    /// The call on a hit (`Rel32`, or an `Abs64` slot an indirect call goes through).
    pub target: Site,
    /// The key no receiver has.
    pub empty: u64,
}

/// Where an inline cache is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcState {
    /// The guard fails for everyone.
    Empty,
    /// Receivers with `key` call `target`.
    Set { key: u64, target: ExecutorAddr },
    /// Empty now; becomes `Set { key, target }` at the first reclaim given an epoch after
    /// `since` (see the module docs).
    Pending {
        key: u64,
        target: ExecutorAddr,
        since: Epoch,
    },
}

/// What a [`MonoIc::set`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcUpdate {
    /// The IC is set.
    Done,
    /// The IC is empty and will be set by the first reclaim given an epoch after this one.
    Pending(Epoch),
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// `hit_until`: the epoch in which the guard last could hit (`None`: never).
    Empty {
        hit_until: Option<u64>,
    },
    Set {
        key: u64,
        target: Place,
    },
    Pending {
        key: u64,
        target: Place,
        since: u64,
    },
}

/// What kiln-jit keeps of an inline cache, by the place of its key site.
#[derive(Clone, Debug)]
pub(crate) struct IcRecord {
    key_kind: SiteKind,
    target_site: Place,
    target_kind: SiteKind,
    empty: u64,
    phase: Phase,
}

impl IcRecord {
    /// A redefinition moved definitions: remembered targets follow.
    pub fn translate(&mut self, f: &dyn Fn(Place) -> Place) {
        match &mut self.phase {
            Phase::Set { target, .. } | Phase::Pending { target, .. } => *target = f(*target),
            Phase::Empty { .. } => {}
        }
    }
}

impl Jit {
    /// Make an inline cache of a guard's key site and the call site it guards (both sites of
    /// live zone units). If the guard holds `empty`, the IC is empty and counts as never hit;
    /// otherwise it is set to the key and target the code holds.
    pub fn mono_ic(&self, key: Site, target: Site, empty: u64) -> Result<MonoIc> {
        if !matches!(key.kind, SiteKind::Imm32 | SiteKind::Abs64) {
            return Err(Error::Stale(format!(
                "an inline cache's key is an Imm32 or Abs64 site; the site at {} is {:?}",
                key.addr, key.kind
            )));
        }
        if !matches!(target.kind, SiteKind::Rel32 | SiteKind::Abs64) {
            return Err(Error::Stale(format!(
                "an inline cache's target is a Rel32 or Abs64 site; the site at {} is {:?}",
                target.addr, target.kind
            )));
        }
        let ic = MonoIc { key, target, empty };
        ic.key_bytes(empty)?;
        let mut book = self.book();
        self.check_site(&key)?;
        self.check_site(&target)?;
        let now = self.read_key(&key)?;
        let phase = if now == empty {
            Phase::Empty { hit_until: None }
        } else {
            Phase::Set {
                key: now,
                target: self.place(self.read_target(&target)?),
            }
        };
        let record = IcRecord {
            key_kind: key.kind,
            target_site: self.place(target.addr),
            target_kind: target.kind,
            empty,
            phase,
        };
        book.ics.insert(self.place(key.addr), record);
        Ok(ic)
    }

    fn read_key(&self, key: &Site) -> Result<u64> {
        let b = self
            .session()
            .executor()
            .read_memory(key.addr, key.kind.width())?;
        let mut v = [0u8; 8];
        v[..b.len()].copy_from_slice(&b);
        Ok(u64::from_le_bytes(v))
    }

    /// Finish the pending sets of inline caches emptied before `safe` (see the module docs).
    pub(crate) fn complete_ics(&self, book: &mut Book, safe: Epoch, report: &mut Reclaimed) {
        let due: Vec<(Place, IcRecord)> = book
            .ics
            .iter()
            .filter(|(_, r)| matches!(r.phase, Phase::Pending { since, .. } if since < safe.0))
            .map(|(p, r)| (*p, r.clone()))
            .collect();
        for (place, rec) in due {
            let Phase::Pending { key, target, since } = rec.phase else {
                continue;
            };
            let done = self.fill(book, place, &rec, key, target);
            let phase = match done {
                Ok(()) => {
                    report.ics_completed += 1;
                    Phase::Set { key, target }
                }
                Err(e) => {
                    let site = self.site_at(place, rec.key_kind);
                    if let Some(site) = site {
                        report.ic_errors.push((site, e.to_string()));
                    }
                    Phase::Empty {
                        hit_until: Some(since),
                    }
                }
            };
            if let Some(r) = book.ics.get_mut(&place) {
                r.phase = phase;
            }
        }
    }

    /// Steps of case 1: the call to `target`, then the key.
    fn fill(
        &self,
        book: &mut Book,
        place: Place,
        rec: &IcRecord,
        key: u64,
        target: Place,
    ) -> Result<()> {
        let stale = || Error::Stale("the inline cache's unit is gone or retired".to_string());
        let key_site = self.site_at(place, rec.key_kind).ok_or_else(stale)?;
        let call_site = self
            .site_at(rec.target_site, rec.target_kind)
            .ok_or_else(stale)?;
        let to = self
            .address(target)
            .ok_or_else(|| Error::Stale("the inline cache's target unit is gone".to_string()))?;
        self.retarget_in(book, &call_site, to)?;
        let ic = MonoIc {
            key: key_site,
            target: call_site,
            empty: rec.empty,
        };
        self.store(
            &key_site,
            &ic.key_bytes(key)?,
            Some(WrittenValue::Value(key)),
        )
    }
}

impl MonoIc {
    /// The key's bytes, if it fits the key site.
    fn key_bytes(&self, key: u64) -> Result<Vec<u8>> {
        match self.key.kind {
            SiteKind::Imm32 => u32::try_from(key)
                .map(|k| k.to_le_bytes().to_vec())
                .map_err(|_| {
                    Error::Stale(format!(
                        "key {key:#x} does not fit the 32-bit guard at {}",
                        self.key.addr
                    ))
                }),
            _ => Ok(key.to_le_bytes().to_vec()),
        }
    }

    fn record<'b>(&self, jit: &Jit, book: &'b mut Book) -> Result<(Place, &'b mut IcRecord)> {
        jit.check_site(&self.key)?;
        jit.check_site(&self.target)?;
        let place = jit.place(self.key.addr);
        let rec = book.ics.get_mut(&place).ok_or_else(|| {
            Error::Stale(format!(
                "the guard at {} is not an inline cache of this JIT (Jit::mono_ic makes one)",
                self.key.addr
            ))
        })?;
        Ok((place, rec))
    }

    /// Cache `target` for receivers whose key is `key`: at once, or pending until the next
    /// reclaim when another target was cached (see the module docs).
    pub fn set(&self, jit: &Jit, key: u64, target: ExecutorAddr) -> Result<IcUpdate> {
        if key == self.empty {
            return Err(Error::Stale(format!(
                "{key:#x} is the inline cache's empty key: clear() empties it"
            )));
        }
        let key_bytes = self.key_bytes(key)?;
        // Checked now: a pending set must not fail for reach later.
        Jit::target_bytes(&self.target, target)?;
        let mut book = jit.book();
        let (epoch, last_safe) = (book.epoch, book.last_safe);
        let target_place = jit.place(target);
        let (place, rec) = self.record(jit, &mut book)?;
        let quiet = |hit_until: Option<u64>| hit_until.is_none_or(|e| e < last_safe);
        match rec.phase {
            Phase::Set {
                key: k0,
                target: t0,
            } if t0 == target_place => {
                if k0 != key {
                    jit.store(&self.key, &key_bytes, Some(WrittenValue::Value(key)))?;
                    rec.phase = Phase::Set {
                        key,
                        target: target_place,
                    };
                }
                Ok(IcUpdate::Done)
            }
            Phase::Set { .. } => {
                jit.store(
                    &self.key,
                    &self.key_bytes(self.empty)?,
                    Some(WrittenValue::Value(self.empty)),
                )?;
                rec.phase = Phase::Pending {
                    key,
                    target: target_place,
                    since: epoch,
                };
                Ok(IcUpdate::Pending(Epoch(epoch)))
            }
            Phase::Empty { hit_until } if quiet(hit_until) => {
                let rec = rec.clone();
                jit.fill(&mut book, place, &rec, key, target_place)?;
                if let Some(r) = book.ics.get_mut(&place) {
                    r.phase = Phase::Set {
                        key,
                        target: target_place,
                    };
                }
                Ok(IcUpdate::Done)
            }
            Phase::Empty { hit_until } => {
                let since = hit_until.unwrap_or(epoch);
                rec.phase = Phase::Pending {
                    key,
                    target: target_place,
                    since,
                };
                Ok(IcUpdate::Pending(Epoch(since)))
            }
            Phase::Pending { since, .. } => {
                rec.phase = Phase::Pending {
                    key,
                    target: target_place,
                    since,
                };
                Ok(IcUpdate::Pending(Epoch(since)))
            }
        }
    }

    /// Empty the cache: from when this returns, every call takes the miss path.
    pub fn clear(&self, jit: &Jit) -> Result<()> {
        let empty = self.key_bytes(self.empty)?;
        let mut book = jit.book();
        let epoch = book.epoch;
        let (_, rec) = self.record(jit, &mut book)?;
        match rec.phase {
            Phase::Set { .. } => {
                jit.store(&self.key, &empty, Some(WrittenValue::Value(self.empty)))?;
                rec.phase = Phase::Empty {
                    hit_until: Some(epoch),
                };
            }
            Phase::Pending { since, .. } => {
                rec.phase = Phase::Empty {
                    hit_until: Some(since),
                }
            }
            Phase::Empty { .. } => {}
        }
        Ok(())
    }

    /// The cache's state.
    pub fn state(&self, jit: &Jit) -> Result<IcState> {
        let mut book = jit.book();
        let (_, rec) = self.record(jit, &mut book)?;
        let at = |p: Place| {
            jit.address(p)
                .ok_or_else(|| Error::Stale("the inline cache's target unit is gone".to_string()))
        };
        Ok(match rec.phase {
            Phase::Empty { .. } => IcState::Empty,
            Phase::Set { key, target } => IcState::Set {
                key,
                target: at(target)?,
            },
            Phase::Pending { key, target, since } => IcState::Pending {
                key,
                target: at(target)?,
                since: Epoch(since),
            },
        })
    }
}
