//! Heap references in machine code: the object constants compiled functions embed
//! (`movabs reg, value`, declared to kiln-jit as heap references of their unit). They are
//! the GC's external roots: read from the code through the executor's read-only view before
//! the collection moves anything, written back in one write window after it.

use std::cell::RefCell;
use std::rc::Rc;

use kiln::UnitId;
use kiln_target::ExecutorAddr;

use super::backend::Backend;
use crate::heap::ExternalRoots;

#[derive(Default, Debug, Clone, Copy)]
pub struct CodeRefStats {
    /// References embedded in code, over every function linked.
    pub embedded: u64,
    /// References rewritten after collections moved their objects.
    pub updated: u64,
}

/// The units whose code holds heap references, in the order they were linked.
pub struct CodeRefs {
    backend: Rc<Backend>,
    units: Vec<UnitId>,
    pub stats: CodeRefStats,
}

impl CodeRefs {
    pub fn new(backend: Rc<Backend>) -> CodeRefs {
        CodeRefs {
            backend,
            units: Vec::new(),
            stats: CodeRefStats::default(),
        }
    }

    /// `unit` was linked with `count` heap references.
    pub fn add(&mut self, unit: UnitId, count: usize) {
        if count > 0 {
            self.units.push(unit);
            self.stats.embedded += count as u64;
        }
    }

    /// Units dropped by a compaction hold no references any more.
    pub fn forget(&mut self, dropped: &std::collections::HashSet<UnitId>) {
        self.units.retain(|u| !dropped.contains(u));
    }

    /// Where the references are, in a fixed order.
    fn fields(&self) -> Vec<ExecutorAddr> {
        let jit = self.backend.jit();
        self.units
            .iter()
            .filter_map(|&u| jit.unit(u))
            .flat_map(|linked| linked.heap_refs.into_iter().map(|r| r.addr))
            .collect()
    }

    fn read(&self, field: ExecutorAddr) -> Result<u64, String> {
        let bytes = self
            .backend
            .jit()
            .session()
            .executor()
            .read_memory(field, 8)
            .map_err(|e| format!("reading a heap reference at {field}: {e}"))?;
        let bytes: [u8; 8] = bytes
            .try_into()
            .map_err(|_| format!("a short read at {field}"))?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn write(&mut self, updated: &[u64]) -> Result<(), String> {
        let fields = self.fields();
        if fields.len() != updated.len() {
            return Err(format!(
                "{} references back for {} in code",
                updated.len(),
                fields.len()
            ));
        }
        let mut changes = Vec::new();
        for (&field, &new) in fields.iter().zip(updated) {
            if self.read(field)? != new {
                changes.push((field, new));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        self.backend
            .jit()
            .write(|w| {
                for &(field, new) in &changes {
                    w.write_u64(field, new)?;
                }
                Ok(())
            })
            .map_err(|e| format!("updating heap references in code: {e}"))?;
        self.stats.updated += changes.len() as u64;
        Ok(())
    }
}

/// The GC's view of [`CodeRefs`].
pub struct CodeRefRoots(pub Rc<RefCell<CodeRefs>>);

impl ExternalRoots for CodeRefRoots {
    fn read_roots(&self, out: &mut Vec<u64>) {
        let refs = self.0.borrow();
        for field in refs.fields() {
            match refs.read(field) {
                Ok(value) => out.push(value),
                Err(e) => fatal(&e),
            }
        }
    }

    fn write_roots(&mut self, updated: &[u64]) {
        if let Err(e) = self.0.borrow_mut().write(updated) {
            fatal(&e);
        }
    }
}

/// Code that would keep references to objects that moved: no safe way on.
fn fatal(what: &str) -> ! {
    eprintln!("kiln-lox: {what}");
    std::process::abort()
}
