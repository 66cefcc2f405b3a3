//! The library API: a session adds inputs, links them into units, looks symbols up and runs code.

use crate::elf::{identify, FileKind};
use crate::error::{Error, Result};
use crate::link::{self, LinkInput, LinkStats, LinkedUnit};
use crate::search::LibrarySearch;
use kiln_target::{Executor, ExecutorAddr, InProcessExecutor, LibraryId};
use rustc_hash::{FxHashMap, FxHashSet};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Identifies a linked unit of a session.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct UnitId(pub usize);

enum Pending {
    Object(String, Vec<u8>),
    Archive(String, Vec<u8>),
    Graph(crate::graph::builder::InMemoryGraph),
}

/// A JIT session: inputs are added, then [`Session::link`] links everything added since the last
/// link into one unit. Later units see the symbols of earlier ones (like ORC's JITDylib).
pub struct Session {
    executor: Arc<dyn Executor>,
    pending: Vec<Pending>,
    libraries: Vec<LibraryId>,
    defines: FxHashMap<String, u64>,
    process_symbols: bool,
    roots: Vec<String>,
    allow: Option<FxHashSet<String>>,
    fixed_address: Option<u64>,
    want_map: bool,
    debug: crate::debug::DebugOptions,
    /// How `-l` names are found.
    pub search: LibrarySearch,
    /// Live units by id (ids are never reused); the flag says whether initializers ran. A map,
    /// so that removed units leave nothing behind however many come and go.
    units: std::collections::BTreeMap<usize, (LinkedUnit, bool)>,
    next_unit: usize,
    /// Every symbol the live units define: name → (unit, address), newest last. One index
    /// rather than a search through every unit: linking the 100,000th small unit costs what
    /// linking the first did.
    symbols: FxHashMap<String, Vec<(usize, ExecutorAddr)>>,
    /// Where units go when the executor has slabs (the default): see [`Session::set_use_slabs`].
    slabs: std::sync::Mutex<crate::memory::SlabAllocator>,
    use_slabs: bool,
}

impl Session {
    pub fn new(executor: Arc<dyn Executor>) -> Self {
        Session {
            pending: Vec::new(),
            libraries: Vec::new(),
            defines: FxHashMap::default(),
            process_symbols: true,
            roots: Vec::new(),
            allow: None,
            fixed_address: None,
            want_map: false,
            debug: crate::debug::DebugOptions::from_env().unwrap_or_else(|e| {
                tracing::warn!("{e}; using the default debug sinks");
                crate::debug::DebugOptions::default()
            }),
            search: LibrarySearch::default(),
            units: Default::default(),
            next_unit: 0,
            symbols: FxHashMap::default(),
            use_slabs: executor.supports_slabs(),
            slabs: Default::default(),
            executor,
        }
    }

    /// A session whose code runs in this process.
    pub fn in_process() -> Self {
        Self::new(Arc::new(InProcessExecutor::new()))
    }

    pub fn executor(&self) -> &dyn Executor {
        &*self.executor
    }

    /// Add a relocatable object from memory.
    pub fn add_object(&mut self, name: impl Into<String>, bytes: Vec<u8>) {
        self.pending.push(Pending::Object(name.into(), bytes));
    }

    /// Add a graph a JIT compiler built in memory; linked like an object by the next link.
    pub fn add_graph(&mut self, graph: crate::graph::builder::InMemoryGraph) {
        self.pending.push(Pending::Graph(graph));
    }

    /// Add a static archive from memory; members are linked only when needed.
    pub fn add_archive(&mut self, name: impl Into<String>, bytes: Vec<u8>) {
        self.pending.push(Pending::Archive(name.into(), bytes));
    }

    /// Add a file by what it contains: object, archive, shared library or GNU ld script.
    pub fn add_file(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let io = |error| Error::Io {
            path: name.clone(),
            error,
        };
        // Identify the file from its first bytes: shared libraries are only dlopened, never read.
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        std::io::Read::by_ref(&mut file)
            .take(512)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if identify(&bytes) != FileKind::SharedLibrary {
            file.read_to_end(&mut bytes).map_err(io)?;
        }
        match identify(&bytes) {
            FileKind::Relocatable => self.add_object(name, bytes),
            FileKind::Archive => self.add_archive(name, bytes),
            FileKind::SharedLibrary => self.add_shared_library(path)?,
            FileKind::LinkerScript => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                for f in self.search.expand_script(path, &text)? {
                    self.add_file(&f)?;
                }
            }
            FileKind::ThinArchive => {
                return Err(Error::unsupported(&name, None, None, "thin archives"));
            }
            FileKind::Unknown => {
                return Err(Error::malformed(
                    &name,
                    None,
                    Some(0),
                    "not an ELF object, archive, shared library or linker script",
                ))
            }
        }
        Ok(())
    }

    /// `-l SPEC` (`NAME` or `:FILE`).
    pub fn add_library(&mut self, spec: &str) -> Result<()> {
        let p = self.search.find(spec)?;
        tracing::debug!("-l{spec} is {}", p.display());
        self.add_file(&p)
    }

    /// Load a shared library into the executor; its symbols are searched after the unit's own
    /// and before the process's.
    pub fn add_shared_library(&mut self, path: &Path) -> Result<()> {
        let id = self.executor.load_library(path)?;
        self.libraries.push(id);
        Ok(())
    }

    /// Define an absolute symbol (wins over libraries and the process).
    pub fn define(&mut self, name: impl Into<String>, addr: u64) {
        self.defines.insert(name.into(), addr);
    }

    /// Whether symbols of the executor process itself may be bound (default: yes).
    pub fn set_process_symbols(&mut self, on: bool) {
        self.process_symbols = on;
    }

    /// A symbol that must be defined and kept by the next link (an entry point).
    pub fn add_root(&mut self, name: impl Into<String>) {
        self.roots.push(name.into());
    }

    /// Restrict the symbols that may be bound outside the linked inputs.
    pub fn set_allow_list(&mut self, allow: Option<FxHashSet<String>>) {
        self.allow = allow;
    }

    /// Place the next unit at exactly this address.
    pub fn set_fixed_address(&mut self, addr: Option<u64>) {
        self.fixed_address = addr;
    }

    /// Record a [`crate::link::LinkMap`] for the next links (see [`Session::link_map`]).
    pub fn set_want_map(&mut self, on: bool) {
        self.want_map = on;
    }

    /// Which debugger and profiler sinks learn about the units linked from now on (gdb, perf
    /// map, jitdump, valgrind). A new session starts with [`crate::DebugOptions::default`]
    /// changed by `KILN_DEBUG`.
    pub fn set_debug(&mut self, options: crate::debug::DebugOptions) {
        self.debug = options;
    }

    pub fn debug_options(&self) -> &crate::debug::DebugOptions {
        &self.debug
    }

    /// Where everything of a unit ended up (if [`Session::set_want_map`] was on when it linked).
    pub fn link_map(&self, unit: UnitId) -> Option<&crate::link::LinkMap> {
        self.units.get(&unit.0)?.0.map.as_ref()
    }

    /// Link everything added since the last link into one unit, and finalize it in the executor.
    /// Initializers are not run: see [`Session::run_initializers`].
    pub fn link(&mut self) -> Result<UnitId> {
        let pending = std::mem::take(&mut self.pending);
        let mut objects = Vec::new();
        let mut archives = Vec::new();
        let mut graphs = Vec::new();
        for p in &pending {
            match p {
                Pending::Graph(gr) => graphs.push(gr),
                Pending::Object(n, b) => objects.push((n.clone(), b.as_slice())),
                Pending::Archive(n, b) => archives.push((n.clone(), b.as_slice())),
            }
        }
        let symbols = &self.symbols;
        let prior = |name: &str| symbols.get(name).and_then(|v| v.last()).map(|(_, a)| *a);
        let roots = std::mem::take(&mut self.roots);
        let unit = link::link(
            &*self.executor,
            LinkInput {
                objects,
                archives,
                graphs,
                libraries: &self.libraries,
                defines: &self.defines,
                prior: &prior,
                process_symbols: self.process_symbols,
                roots: &roots,
                allow: self.allow.as_ref(),
                fixed_address: self.fixed_address,
                want_map: self.want_map,
                debug: &self.debug,
                time_phases: true,
                slabs: self.use_slabs.then_some(&self.slabs),
            },
        )?;
        let id = self.next_unit;
        self.next_unit += 1;
        for (name, addr) in &unit.exports {
            self.symbols
                .entry(name.clone())
                .or_default()
                .push((id, *addr));
        }
        self.units.insert(id, (unit, false));
        Ok(UnitId(id))
    }

    pub fn stats(&self, unit: UnitId) -> Option<&LinkStats> {
        self.units.get(&unit.0).map(|u| &u.0.stats)
    }

    /// The address of a symbol defined by a unit of this session (newest first).
    pub fn lookup(&self, name: &str) -> Option<ExecutorAddr> {
        self.symbols.get(name)?.last().map(|(_, a)| *a)
    }

    /// Run the initializers (`.init_array`, constructors, …) of every unit not yet initialized,
    /// oldest first.
    pub fn run_initializers(&mut self) -> Result<()> {
        for (u, initialized) in self.units.values_mut() {
            if !*initialized {
                *initialized = true;
                self.executor.run_initializers(u.alloc)?;
            }
        }
        Ok(())
    }

    /// Call `int ENTRY(int argc, char **argv, char **envp)`.
    pub fn run_main(&self, entry: &str, args: &[String]) -> Result<i32> {
        let addr = self.lookup(entry).ok_or_else(|| {
            Error::Usage(format!(
                "entry point {entry} is not defined by the linked code"
            ))
        })?;
        Ok(self.executor.run_main(addr, args)?)
    }

    /// Remove a unit: its destructors and exit handlers run, its registrations are undone, its
    /// memory is released, and its symbols disappear from lookups.
    pub fn remove(&mut self, unit: UnitId) -> Result<()> {
        let (u, _) = self
            .units
            .remove(&unit.0)
            .ok_or_else(|| Error::Usage(format!("no unit {}", unit.0)))?;
        for name in u.exports.keys() {
            if let Some(v) = self.symbols.get_mut(name) {
                v.retain(|(id, _)| *id != unit.0);
                if v.is_empty() {
                    self.symbols.remove(name);
                }
            }
        }
        self.executor.deallocate(u.alloc)?;
        if let Ok(mut slabs) = self.slabs.lock() {
            slabs.free(&*self.executor, &u.slab_ranges);
        }
        Ok(())
    }

    /// Put units in shared slabs (the default where the executor has them): many units share
    /// pages, nothing is copied at finalize, and code can be patched through the slab's
    /// writable alias. Off: each unit gets a reservation of its own, as with a fixed address.
    pub fn set_use_slabs(&mut self, on: bool) {
        self.use_slabs = on && self.executor.supports_slabs();
    }

    /// Change 4 or 8 naturally aligned bytes of finalized code or read-only data while it may
    /// run (e.g. retarget a call site's rel32): stored atomically through the slab's writable
    /// alias, then the instruction cache is made coherent. Only for units in slabs.
    pub fn patch(&self, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        let slab = self
            .slabs
            .lock()
            .ok()
            .and_then(|s| s.slab_of(addr))
            .ok_or_else(|| Error::Usage(format!("{addr} is not in a slab of this session")))?;
        Ok(self.executor.patch(slab, addr, bytes)?)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let ids: Vec<usize> = self.units.keys().rev().copied().collect();
        for id in ids {
            let _ = self.remove(UnitId(id));
        }
        if let Ok(mut slabs) = self.slabs.lock() {
            slabs.release_all(&*self.executor);
        }
    }
}
