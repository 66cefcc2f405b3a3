//! Definitions on demand: callbacks asked for names nothing else defines, before a link fails
//! (ORC's `DefinitionGenerator`, cranelift-jit's `symbol_lookup_fn`).

use super::state::ScopeId;
use crate::error::Result;
use crate::graph::InMemoryGraph;
use kiln_target::ExecutorAddr;
use rustc_hash::FxHashMap;

/// What a generator answers for a name.
#[derive(Debug, Clone)]
pub enum Generated {
    /// The name is defined at this address (a host function, a runtime routine).
    Address(ExecutorAddr),
    /// A graph that defines it, linked into the same unit (its own undefined names go through
    /// the generators too).
    Graph(InMemoryGraph),
    /// A relocatable object that defines it, linked into the same unit.
    Object { name: String, bytes: Vec<u8> },
    /// An archive whose members may define it (and others), searched by the same link.
    Archive { name: String, bytes: Vec<u8> },
    /// Not this generator's: ask the next one.
    NotMine,
}

/// Asked for the names a link needs that no input, unit, runtime symbol, library or the process
/// defines. Generators of a scope (see [`crate::Session::add_generator`]) serve the units linked
/// into it and into scopes that search it.
///
/// Any `Fn(&str) -> kiln::Result<Generated> + Send + Sync` is a generator.
///
/// ```
/// use kiln::{Generated, Session};
/// let s = Session::in_process();
/// s.add_generator(s.default_scope(), |name: &str| {
///     Ok(match name {
///         "answer" => Generated::Address(kiln::ExecutorAddr(0x1000)),
///         _ => Generated::NotMine,
///     })
/// });
/// ```
pub trait DefinitionGenerator: Send + Sync {
    /// A definition of `name` for a unit being linked into `scope`.
    fn generate(&self, name: &str, scope: ScopeId) -> Result<Generated>;
}

impl<F> DefinitionGenerator for F
where
    F: Fn(&str) -> Result<Generated> + Send + Sync,
{
    fn generate(&self, name: &str, _scope: ScopeId) -> Result<Generated> {
        self(name)
    }
}

/// What generators contributed to one link.
#[derive(Default)]
pub(crate) struct GeneratedInputs {
    pub defines: FxHashMap<String, u64>,
    pub graphs: Vec<InMemoryGraph>,
    pub objects: Vec<(String, Vec<u8>)>,
    pub archives: Vec<(String, Vec<u8>)>,
}

/// Nothing generated: what a link that asked no generator reads (no table to make and drop
/// per link).
pub(crate) static NO_GENERATED: GeneratedInputs = GeneratedInputs::NONE;

impl GeneratedInputs {
    /// Nothing generated.
    const NONE: GeneratedInputs = GeneratedInputs {
        defines: FxHashMap::with_hasher(rustc_hash::FxBuildHasher),
        graphs: Vec::new(),
        objects: Vec::new(),
        archives: Vec::new(),
    };

    pub fn is_empty(&self) -> bool {
        self.defines.is_empty()
            && self.graphs.is_empty()
            && self.objects.is_empty()
            && self.archives.is_empty()
    }

    /// Add what a generator answered; `false` if it was not its name.
    pub fn take(&mut self, name: &str, g: Generated) -> bool {
        match g {
            Generated::NotMine => return false,
            Generated::Address(a) => {
                self.defines.insert(name.to_string(), a.0);
            }
            Generated::Graph(graph) => self.graphs.push(graph),
            Generated::Object { name, bytes } => self.objects.push((name, bytes)),
            Generated::Archive { name, bytes } => self.archives.push((name, bytes)),
        }
        true
    }
}
