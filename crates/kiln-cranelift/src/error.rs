//! The errors of kiln-cranelift. `Module` methods return them inside
//! `cranelift_module::ModuleError::Backend`; the methods of its own (freeing, calling in the
//! executor) return them as they are.

use cranelift_codegen::binemit::Reloc;

/// What went wrong, naming the definitions involved by their linkage names.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kiln refused or failed to link a unit.
    #[error("linking {unit}: {source}")]
    Link {
        unit: String,
        #[source]
        source: kiln::Error,
    },
    /// A relocation kiln-cranelift has no edge kind for.
    #[error("{definition}: relocation {reloc:?} at offset {offset:#x} is not supported: {why}")]
    UnsupportedRelocation {
        definition: String,
        reloc: Reloc,
        offset: u32,
        why: &'static str,
    },
    /// The ISA or the code is something kiln cannot link (another architecture, a name that
    /// cannot be a symbol).
    #[error("{0}")]
    Unsupported(String),
    /// A name declared as an import (or a libcall) that the builder's symbols, the lookup
    /// functions, the runtime and the executor process all lack.
    #[error("cannot resolve {name} (referenced by {referenced_by}): give it with KilnBuilder::symbol or symbol_lookup_fn")]
    Unresolved { name: String, referenced_by: String },
    /// A reference to a definition of the module that does not exist (yet): declared, never
    /// defined, or freed.
    #[error("{referenced_by} refers to {name}, which is declared but not defined (or was freed); define it in this finalize batch or an earlier one")]
    NotDefined { name: String, referenced_by: String },
    /// A definition that is not finalized was asked for its address or freed.
    #[error("{0} is not finalized: define it and call finalize_definitions first")]
    NotFinalized(String),
    /// Freeing a definition that live definitions still refer to.
    #[error("cannot free {name}: live definitions refer to it: {}; free them first (or together, with free_definitions)", .referenced_by.join(", "))]
    Referenced {
        name: String,
        referenced_by: Vec<String>,
    },
    /// Freeing part of a unit: definitions linked together are freed together.
    #[error("cannot free {name} alone: it was linked together with {} (they refer to each other, or to the same thread-local data, in one finalize batch); free them together with free_definitions", .with.join(", "))]
    SharesUnit { name: String, with: Vec<String> },
    /// Code referring to thread-local data that an earlier finalize batch linked.
    #[error("{function} uses thread-local {data}, which an earlier finalize batch linked; kiln binds TLS references only within one unit, so define {data} in the same finalize batch as every function that uses it")]
    TlsAcrossUnits { function: String, data: String },
    /// Writing a unit's unwind information failed.
    #[error("{unit}: {what}")]
    Emit { unit: String, what: String },
    /// The executor failed to run code.
    #[error(transparent)]
    Executor(#[from] kiln_target::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for cranelift_module::ModuleError {
    fn from(e: Error) -> Self {
        cranelift_module::ModuleError::Backend(anyhow::Error::new(e))
    }
}
