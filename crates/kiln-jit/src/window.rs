//! The write window: how a VM changes code and data of the zone while threads may run it.
//!
//! ```text
//! jit.write(|w| {
//!     w.write_u32(guard_key, new_key)?;      // one aligned atomic store
//!     w.write_rel32(call_field, new_target)?; // one aligned atomic store
//!     Ok(())
//! })?;
//! ```
//!
//! Inside the closure, writes are only collected, each checked at once: it must lie in the zone,
//! inside one segment of a live unit or in space no unit holds (free space: only safe to write
//! while no link into the zone runs, since a link may be handed that space). Nothing is written
//! if the closure fails. When it returns, the writes go to the executor in order, in one
//! `Executor::write_live` call:
//!
//! - through the zone's writable alias — the zone's pages are never writable and executable at
//!   the same address, before, during or after a window;
//! - each naturally aligned piece (8-byte word, else 4-byte, else 2-byte) with one atomic store,
//!   so a field that fits one — a rel32 or imm32 at a 4-aligned address, a 64-bit slot at an
//!   8-aligned one — changes in one store: a thread executing it runs the old or the new
//!   instruction, never a mix. A change wider than one piece is the VM's to order (write the body
//!   first, the word that makes it reachable last, or make it unreachable first);
//! - then, because code was written, every thread of the executor serializes its instruction
//!   stream (`membarrier` SYNC_CORE, docs/memory.md): after `write` returns, no core runs the old
//!   bytes (the rule of Intel SDM vol. 3, 9.1.3 for cross-modifying code).
//!
//! What a window cannot promise: that no thread is *between* two instructions the VM changes
//! together (it read the old first one and will run the new second one). Inline caches handle
//! that with an epoch (see `ic.rs`); a VM's own multi-step patches must do the same.

use crate::error::{Error, Result};
use crate::jit::Jit;
use kiln_target::{ExecutorAddr, SlabWrite};

/// Writes being collected for one window. See the module docs.
#[derive(Debug)]
pub struct WriteWindow<'j> {
    jit: &'j Jit,
    writes: Vec<(ExecutorAddr, Vec<u8>)>,
}

impl Jit {
    /// Open a write window: `f` adds writes (checked as they are added), and when it returns
    /// `Ok` they are applied through the zone's writable alias, each aligned piece atomically,
    /// then every core serializes. If `f` fails, nothing is written. See the module docs.
    ///
    /// Code does not move while a window is open ([`Jit::compact`] waits for it): the addresses
    /// checked when a write is added are still the code's when it is applied. So `f` must not
    /// call the JIT's other patching operations (`retarget`, inline caches, PICs, redefinition,
    /// compaction): they take the JIT's book, which a compaction waiting for this window holds.
    pub fn write<R>(&self, f: impl FnOnce(&mut WriteWindow<'_>) -> Result<R>) -> Result<R> {
        let _stays = self.code_stays();
        self.write_while_code_stays(f)
    }

    /// [`Jit::write`] for a caller that holds [`Jit::code_stays`] already (taking it twice on
    /// one thread could deadlock behind a waiting compaction).
    pub(crate) fn write_while_code_stays<R>(
        &self,
        f: impl FnOnce(&mut WriteWindow<'_>) -> Result<R>,
    ) -> Result<R> {
        let mut w = WriteWindow {
            jit: self,
            writes: Vec::new(),
        };
        let r = f(&mut w)?;
        w.close()?;
        Ok(r)
    }
}

impl WriteWindow<'_> {
    /// Write `bytes` at `addr` when the window closes.
    pub fn write(&mut self, addr: ExecutorAddr, bytes: &[u8]) -> Result<&mut Self> {
        if !bytes.is_empty() {
            self.jit.check_writable(addr, bytes.len() as u64)?;
            self.writes.push((addr, bytes.to_vec()));
        }
        Ok(self)
    }

    /// Write a 32-bit value (one atomic store if `addr` is 4-aligned).
    pub fn write_u32(&mut self, addr: ExecutorAddr, value: u32) -> Result<&mut Self> {
        self.write(addr, &value.to_le_bytes())
    }

    /// Write a 64-bit value (one atomic store if `addr` is 8-aligned).
    pub fn write_u64(&mut self, addr: ExecutorAddr, value: u64) -> Result<&mut Self> {
        self.write(addr, &value.to_le_bytes())
    }

    /// Make the rel32 field at `field` (the last 4 bytes of a `call`, `jmp` or `jcc`) reach
    /// `target`.
    pub fn write_rel32(&mut self, field: ExecutorAddr, target: ExecutorAddr) -> Result<&mut Self> {
        let rel = rel32(field, target)?;
        self.write(field, &rel.to_le_bytes())
    }

    /// The bytes at `addr` as they are now (without this window's writes): read through a
    /// read-only path, for read-modify-write patches.
    pub fn read(&self, addr: ExecutorAddr, len: u64) -> Result<Vec<u8>> {
        self.jit.check_writable(addr, len)?;
        Ok(self.jit.session().executor().read_memory(addr, len)?)
    }

    fn close(self) -> Result<()> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let writes: Vec<SlabWrite<'_>> = self
            .writes
            .iter()
            .map(|(a, b)| SlabWrite::Bytes(*a, b))
            .collect();
        let slab = self.jit.zone().fixed().slab();
        Ok(self.jit.session().executor().write_live(slab, &writes)?)
    }
}

/// The rel32 that makes an instruction ending right after `field` reach `target`.
pub(crate) fn rel32(field: ExecutorAddr, target: ExecutorAddr) -> Result<i32> {
    let next = field.0 as i128 + 4;
    i32::try_from(target.0 as i128 - next).map_err(|_| {
        Error::Stale(format!(
            "{target} is out of reach of the rel32 at {field} (more than 2 GiB away)"
        ))
    })
}

impl Jit {
    /// May a window write `[addr, addr + len)`: inside one part (code, read-only data, data) of
    /// one region of the zone, and inside one segment of a live unit or clear of every unit.
    pub(crate) fn check_writable(&self, addr: ExecutorAddr, len: u64) -> Result<()> {
        let foreign = || {
            Error::Stale(format!(
                "{addr}..+{len:#x} is not inside one part of this zone's fixed or method region"
            ))
        };
        let end = addr.0.checked_add(len).ok_or_else(foreign)?;
        let zone = self.zone();
        let in_part = [zone.fixed(), zone.method()].iter().any(|r| {
            r.info
                .regions
                .iter()
                .any(|(a, n)| a.0 <= addr.0 && end <= a.0 + n)
        });
        if !in_part {
            return Err(foreign());
        }
        let session = self.session();
        if let Some((unit, segment, offset)) = session.unit_at(addr) {
            let size = session.unit_segments(unit)?.get(segment).map_or(0, |s| s.1);
            if offset + len > size {
                return Err(Error::Stale(format!(
                    "{addr}..+{len:#x} runs past the end of a segment of {unit}"
                )));
            }
            return Ok(());
        }
        // Free space: no unit may start inside the range.
        for unit in session.units() {
            let Ok(segments) = session.unit_segments(unit) else {
                continue;
            };
            if segments
                .iter()
                .any(|&(a, n)| n > 0 && a.0 < end && addr.0 < a.0 + n)
            {
                return Err(Error::Stale(format!(
                    "{addr}..+{len:#x} covers free space and part of {unit}"
                )));
            }
        }
        Ok(())
    }
}
