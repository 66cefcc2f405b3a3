//! kiln-jit's errors.

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the JIT layer.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A zone or JIT setting cannot be honoured.
    #[error("{0}")]
    Config(String),
    /// A graph's annotations (sites, heap references) do not fit its code.
    #[error("{graph}: {what}")]
    Graph { graph: String, what: String },
    /// A site, reference or unit handle that does not belong to this JIT (or no longer lives).
    #[error("{0}")]
    Stale(String),
    /// A compaction was asked to drop a unit that units which stay still use (they bind to its
    /// symbols, or kiln-jit pointed one of their sites into it): drop them too, or point them
    /// elsewhere first.
    #[error("{unit} cannot be dropped: {users:?} use it and stay")]
    InUse {
        unit: kiln::UnitId,
        users: Vec<kiln::UnitId>,
    },
    /// A lazy function cannot do what was asked.
    #[error("lazy function {name}: {what}")]
    Lazy { name: String, what: String },
    /// The linker refused.
    #[error(transparent)]
    Link(#[from] kiln::Error),
    /// The executor refused.
    #[error(transparent)]
    Target(#[from] kiln_target::Error),
}
