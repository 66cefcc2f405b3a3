//! [`CheckEnv`] over a [`LinkMap`]: what one link recorded.

use super::eval::CheckEnv;
use super::linker_defined::{self, LinkerDefined};
use crate::link::LinkMap;

/// The name the link map gives to what the linker itself made (GOT, stubs, runtime glue).
const KILN_INPUT: &str = "<kiln>";

/// Finds symbols that a unit does not define: name → address.
pub type SymbolLookup<'a> = Box<dyn Fn(&str) -> Option<u64> + 'a>;

/// Answers check expressions from a [`LinkMap`], and symbols the unit does not define (absolute
/// definitions, runtime and host symbols) from `outside`.
pub struct LinkMapEnv<'a> {
    map: &'a LinkMap,
    outside: SymbolLookup<'a>,
}

/// Whether `file` (as written in a check) names the input `input` (as the link named it):
/// the whole name, its last path component (`test.o` for `dir/test.o`), or for an archive
/// member `dir/lib.a(m.o)` also `lib.a(m.o)` and `m.o`.
pub fn file_matches(input: &str, file: &str) -> bool {
    if input == file {
        return true;
    }
    // The last path component; an archive member's own name may contain no '/'.
    let (archive, member) = match input.strip_suffix(')').and_then(|s| s.split_once('(')) {
        Some((a, m)) => (a, Some(m)),
        None => (input, None),
    };
    let base = archive.rsplit('/').next().unwrap_or(archive);
    match member {
        Some(m) => file == m || file == format!("{base}({m})"),
        None => file == base,
    }
}

impl<'a> LinkMapEnv<'a> {
    pub fn new(map: &'a LinkMap) -> Self {
        LinkMapEnv {
            map,
            outside: Box::new(|_| None),
        }
    }

    /// Where symbols not defined by the unit are found (`-abs` definitions, the runtime's
    /// symbols, the process). Also settles which of several same-named local symbols a name
    /// means: the one `outside` reports (the unit's global), if any.
    pub fn with_outside(mut self, outside: impl Fn(&str) -> Option<u64> + 'a) -> Self {
        self.outside = Box::new(outside);
        self
    }

    fn files(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .map
            .symbols
            .iter()
            .map(|s| s.file.as_str())
            .chain(self.map.sections.iter().map(|s| s.file.as_str()))
            .chain(self.map.got_entries.iter().map(|s| s.file.as_str()))
            .chain(self.map.stubs.iter().map(|s| s.file.as_str()))
            .filter(|f| *f != KILN_INPUT)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn known_file(&self, file: &str) -> Result<(), String> {
        let files = self.files();
        if files.iter().any(|f| file_matches(f, file)) {
            Ok(())
        } else {
            Err(format!(
                "no input file `{file}` in the link (inputs: {})",
                files.join(", ")
            ))
        }
    }

    /// The entry of `list` for (file, name): exactly one address, or a clear error.
    fn table_lookup(
        &self,
        list: &[crate::link::TableEntry],
        (what, whats): (&str, &str),
        file: &str,
        name: &str,
    ) -> Result<u64, String> {
        self.known_file(file)?;
        let mut hits: Vec<(&str, u64)> = list
            .iter()
            .filter(|e| e.target == name && file_matches(&e.file, file))
            .map(|e| (e.file.as_str(), e.addr))
            .collect();
        hits.sort_unstable();
        hits.dedup_by_key(|h| h.1);
        match hits.as_slice() {
            [(_, a)] => Ok(*a),
            [] => {
                let mut have: Vec<&str> = list
                    .iter()
                    .filter(|e| file_matches(&e.file, file))
                    .map(|e| e.target.as_str())
                    .collect();
                have.sort_unstable();
                have.dedup();
                let have = if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                };
                let why = if what == "stub" {
                    "calls in range go direct and need no stub"
                } else {
                    "GOT loads of targets in range are relaxed and need no entry"
                };
                Err(format!(
                    "no {what} for `{name}` referenced from `{file}` ({why}); {whats} of \
                     `{file}`: {have}"
                ))
            }
            many => Err(format!(
                "`{file}` is ambiguous: {whats} for `{name}` at {}",
                many.iter()
                    .map(|(f, a)| format!("{a:#x} ({f})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// A symbol the linker defines for the unit that the map does not list (no input referenced
    /// it): derived from the sections the linker made, or an error saying why it has no value.
    /// Never taken from outside the unit: the process's `__dso_handle` or GOT is not the unit's.
    fn linker_symbol(&self, s: &LinkerDefined) -> Result<u64, String> {
        let start = |keep: &dyn Fn(&str, &str) -> bool| {
            self.map
                .sections
                .iter()
                .filter(|s| keep(&s.file, &s.name))
                .map(|s| s.addr)
                .min()
        };
        let found = match s.name {
            // The GOT's entries are one block of the linker's own `.got` section.
            "_GLOBAL_OFFSET_TABLE_" => start(&|f, n| f == KILN_INPUT && n == ".got"),
            // Where the unit's TLS template starts (its `.tdata` comes first): `x -
            // _TLS_MODULE_BASE_` is x's offset in the block, as in a GNU ld output.
            "_TLS_MODULE_BASE_" => start(&|_, n| linker_defined::is_tdata_section(n)),
            _ => None,
        };
        found.ok_or_else(|| {
            let why = match s.name {
                "_GLOBAL_OFFSET_TABLE_" => "the unit has no GOT entries",
                "_TLS_MODULE_BASE_" => "the unit has no initialized thread-local data (.tdata)",
                _ => "the link map does not list it",
            };
            format!(
                "`{}` ({}) has no address in this link: no input references it and {why}",
                s.name, s.meaning
            )
        })
    }

    fn read_byte(&self, addr: u64) -> Option<u8> {
        for m in &self.map.memory {
            if let Some(off) = addr.checked_sub(m.addr) {
                if let Some(b) = usize::try_from(off).ok().and_then(|o| m.bytes.get(o)) {
                    return Some(*b);
                }
            }
        }
        // Zero fill (.bss, .tbss) is not recorded as bytes; sections say where it is.
        self.map
            .sections
            .iter()
            .any(|s| addr >= s.addr && addr - s.addr < s.size)
            .then_some(0)
    }
}

impl CheckEnv for LinkMapEnv<'_> {
    fn symbol(&self, name: &str) -> Result<u64, String> {
        let mut defs: Vec<(&str, u64)> = self
            .map
            .symbols
            .iter()
            .filter(|s| s.name == name)
            .map(|s| (s.file.as_str(), s.addr))
            .collect();
        defs.sort_unstable_by_key(|d| d.1);
        defs.dedup_by_key(|d| d.1);
        match defs.as_slice() {
            [(_, a)] => Ok(*a),
            [] => match linker_defined::linker_defined(name) {
                Some(s) => self.linker_symbol(s),
                None => (self.outside)(name).ok_or_else(|| linker_defined::undefined_message(name)),
            },
            many => {
                let global = (self.outside)(name);
                match many.iter().find(|d| Some(d.1) == global) {
                    Some(d) => Ok(d.1),
                    None => Err(format!(
                        "symbol `{name}` is ambiguous: local symbols at {}",
                        many.iter()
                            .map(|(f, a)| format!("{a:#x} ({f})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
        }
    }

    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, String> {
        (0..len as u64)
            .map(|i| {
                addr.checked_add(i)
                    .and_then(|a| self.read_byte(a))
                    .ok_or_else(|| {
                        format!(
                            "cannot load {len} bytes at {addr:#x}: {:#x} is not in the linked \
                             memory",
                            addr.wrapping_add(i)
                        )
                    })
            })
            .collect()
    }

    fn code(&self, addr: u64, max: usize) -> Result<Vec<u8>, String> {
        let bytes: Vec<u8> = (0..max as u64)
            .map_while(|i| addr.checked_add(i).and_then(|a| self.read_byte(a)))
            .collect();
        if bytes.is_empty() {
            return Err(format!(
                "cannot decode at {addr:#x}: it is not in the linked memory"
            ));
        }
        Ok(bytes)
    }

    fn stub_addr(&self, file: &str, symbol: &str) -> Result<u64, String> {
        self.table_lookup(&self.map.stubs, ("stub", "stubs"), file, symbol)
    }

    fn got_addr(&self, file: &str, symbol: &str) -> Result<u64, String> {
        let direct = self.table_lookup(
            &self.map.got_entries,
            ("GOT entry", "GOT entries"),
            file,
            symbol,
        );
        if direct.is_ok() {
            return direct;
        }
        // The GOT entry behind a stub: the link map lists a GOT entry under the files whose
        // edges point at it, and a call through a stub points at the stub, not the entry. The
        // stub (`jmp *disp(%rip)`, see arch::x86_64::STUB) says where its entry is.
        let Ok(stub) = self.stub_addr(file, symbol) else {
            return direct;
        };
        match self.read(stub, 6).as_deref() {
            Ok([0xff, 0x25, d @ ..]) => {
                let disp = i32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                Ok(stub.wrapping_add(6).wrapping_add(disp as i64 as u64))
            }
            _ => direct,
        }
    }

    fn section_addr(&self, file: &str, section: &str) -> Result<u64, String> {
        self.known_file(file)?;
        let mut hits: Vec<(u64, u64)> = self
            .map
            .sections
            .iter()
            .filter(|s| s.name == section && file_matches(&s.file, file))
            .map(|s| (s.addr, s.size))
            .collect();
        hits.sort_unstable();
        hits.dedup();
        match hits.as_slice() {
            [(a, _)] => Ok(*a),
            [] => {
                let mut have: Vec<&str> = self
                    .map
                    .sections
                    .iter()
                    .filter(|s| file_matches(&s.file, file))
                    .map(|s| s.name.as_str())
                    .collect();
                have.sort_unstable();
                have.dedup();
                Err(format!(
                    "no live section `{section}` in `{file}` (sections that were linked: {})",
                    have.join(", ")
                ))
            }
            many => Err(format!(
                "`{file}` has several sections `{section}`, at {}",
                many.iter()
                    .map(|(a, _)| format!("{a:#x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}
