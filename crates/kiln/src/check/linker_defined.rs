//! Symbols the linker defines for a unit itself, which a check may name although no input
//! references them (a `R_X86_64_GOTOFF64` uses the GOT without naming `_GLOBAL_OFFSET_TABLE_`).
//!
//! The definitions are made in `link::passes::synthesize_runtime`; this list says which names
//! are the linker's, so that a check evaluates them from the unit (never from the process) and
//! `--define` can refuse them instead of being silently overridden.

/// A symbol the linker defines for every unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkerDefined {
    pub name: &'static str,
    /// What its address is, for messages.
    pub meaning: &'static str,
}

/// The symbols kiln's linker defines for a unit.
pub const LINKER_DEFINED: [LinkerDefined; 3] = [
    LinkerDefined {
        name: "_GLOBAL_OFFSET_TABLE_",
        meaning: "the start of the unit's GOT",
    },
    LinkerDefined {
        name: "__dso_handle",
        meaning: "the unit's identity for __cxa_atexit",
    },
    LinkerDefined {
        name: "_TLS_MODULE_BASE_",
        meaning: "the start of the unit's thread-local block",
    },
];

/// Names that static linkers define for a whole executable or shared object, which kiln does
/// not define: a unit in memory has no ELF header, dynamic section or program end. Named only
/// to explain, when a check asks for one, why it has no value.
const EXECUTABLE_ONLY: &[&str] = &[
    "_DYNAMIC",
    "__ehdr_start",
    "__executable_start",
    "_etext",
    "etext",
    "_edata",
    "edata",
    "_end",
    "end",
    "__bss_start",
    "__init_array_start",
    "__init_array_end",
    "__fini_array_start",
    "__fini_array_end",
    "__preinit_array_start",
    "__preinit_array_end",
    "__GNU_EH_FRAME_HDR",
];

/// The linker-defined symbol named `name`, if it is one.
pub fn linker_defined(name: &str) -> Option<&'static LinkerDefined> {
    LINKER_DEFINED.iter().find(|s| s.name == name)
}

/// Why a symbol that nothing defines has no value, with a hint when it is one that static
/// linkers define for executables.
pub(crate) fn undefined_message(name: &str) -> String {
    let mut m = format!(
        "no symbol `{name}`: not defined by the linked inputs, nor by -abs/--define, nor found \
         by the executor"
    );
    if EXECUTABLE_ONLY.contains(&name) {
        let ours: Vec<&str> = LINKER_DEFINED.iter().map(|s| s.name).collect();
        m.push_str(&format!(
            " (static linkers define `{name}` for a whole executable; kiln links units into \
             memory and defines only {})",
            ours.join(", ")
        ));
    }
    m
}

/// Whether `section` holds initialized thread-local data (`.tdata`, `.tdata.NAME`), the part of
/// a unit's TLS block that the link map places (its `.tbss` has no address there).
pub(crate) fn is_tdata_section(section: &str) -> bool {
    section == ".tdata"
        || section.starts_with(".tdata.")
        || section.starts_with(".gnu.linkonce.td.")
}
