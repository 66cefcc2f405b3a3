//! What one link takes: objects, archives, graphs, roots, and where the unit goes.

use crate::elf::{identify, FileKind};
use crate::error::{Error, Result};
use crate::graph::InMemoryGraph;
use crate::search::LibrarySearch;
use std::io::Read;
use std::path::Path;

/// The inputs of one link: linked together into one unit by [`crate::Session::link_inputs`].
///
/// A JIT compiler thread keeps its own `Inputs` (the session's [`crate::Session::add_object`]
/// and friends fill one the session keeps for [`crate::Session::link`]). A link that fails
/// leaves them as they were, so that the compiler can add what was missing and link again.
///
/// ```
/// use kiln::{graph::InMemoryGraph, Inputs};
/// let mut inputs = Inputs::new();
/// inputs.add_graph(InMemoryGraph::new("module-1"));
/// inputs.add_root("main");
/// assert!(!inputs.is_empty());
/// ```
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    pub(crate) objects: Vec<(String, Vec<u8>)>,
    pub(crate) archives: Vec<(String, Vec<u8>)>,
    pub(crate) graphs: Vec<InMemoryGraph>,
    pub(crate) roots: Vec<String>,
    pub(crate) fixed_address: Option<u64>,
    /// Shared libraries named by the files added (`.so`, or in an ld script): loaded into the
    /// executor by the session when the inputs are linked.
    pub(crate) shared_libraries: Vec<std::path::PathBuf>,
}

impl Inputs {
    pub fn new() -> Self {
        Inputs::default()
    }

    /// A relocatable object, from memory. `name` names it in messages and debuggers.
    pub fn add_object(&mut self, name: impl Into<String>, bytes: Vec<u8>) -> &mut Self {
        self.objects.push((name.into(), bytes));
        self
    }

    /// A static archive, from memory: members are linked only when they define a symbol that
    /// is needed.
    pub fn add_archive(&mut self, name: impl Into<String>, bytes: Vec<u8>) -> &mut Self {
        self.archives.push((name.into(), bytes));
        self
    }

    /// A graph a JIT compiler built in memory; linked like an object.
    pub fn add_graph(&mut self, graph: InMemoryGraph) -> &mut Self {
        self.graphs.push(graph);
        self
    }

    /// A symbol that must be defined and kept (an entry point, a symbol to look up later).
    pub fn add_root(&mut self, name: impl Into<String>) -> &mut Self {
        self.roots.push(name.into());
        self
    }

    /// Place the unit at exactly this address (in a reservation of its own).
    pub fn set_fixed_address(&mut self, addr: Option<u64>) -> &mut Self {
        self.fixed_address = addr;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.archives.is_empty() && self.graphs.is_empty()
    }

    /// Add a file by what it contains: object, archive, GNU ld script (its files are added),
    /// or shared library (loaded into the executor when linked, and searched for symbols).
    pub fn add_file(
        &mut self,
        path: impl AsRef<Path>,
        search: &LibrarySearch,
    ) -> Result<&mut Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let io = |error| Error::Io {
            path: name.clone().into(),
            error,
        };
        // Identify the file from its first bytes: shared libraries are only dlopened, never read.
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        Read::by_ref(&mut file)
            .take(512)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if identify(&bytes) != FileKind::SharedLibrary {
            file.read_to_end(&mut bytes).map_err(io)?;
        }
        match identify(&bytes) {
            FileKind::Relocatable => {
                self.add_object(name, bytes);
            }
            FileKind::Archive => {
                self.add_archive(name, bytes);
            }
            FileKind::SharedLibrary => self.shared_libraries.push(path.to_path_buf()),
            FileKind::LinkerScript => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                for f in search.expand_script(path, &text)? {
                    self.add_file(&f, search)?;
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
        Ok(self)
    }

    /// Put `later` after these inputs (a failed link's inputs are given back in front of what
    /// was added meanwhile).
    pub(crate) fn append(&mut self, later: Inputs) {
        self.objects.extend(later.objects);
        self.archives.extend(later.archives);
        self.graphs.extend(later.graphs);
        self.roots.extend(later.roots);
        self.shared_libraries.extend(later.shared_libraries);
        if later.fixed_address.is_some() {
            self.fixed_address = later.fixed_address;
        }
    }
}
