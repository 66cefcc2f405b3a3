//! Static archives: an index from symbol name to member, and members parsed on demand.

use crate::error::{Error, Result};
use object::read::archive::{ArchiveFile, ArchiveOffset};
use rustc_hash::{FxHashMap, FxHashSet};

pub struct Archive<'a> {
    pub name: String,
    file: ArchiveFile<'a, &'a [u8]>,
    data: &'a [u8],
    index: FxHashMap<&'a [u8], u64>,
    loaded: FxHashSet<u64>,
}

impl<'a> Archive<'a> {
    pub fn parse(name: &str, data: &'a [u8]) -> Result<Self> {
        let bad = |what: String| Error::malformed(name, None, None, what);
        let file = ArchiveFile::parse(data).map_err(|e| bad(format!("archive: {e}")))?;
        if file.is_thin() {
            return Err(Error::unsupported(name, None, None, "thin archives"));
        }
        let mut index = FxHashMap::default();
        match file
            .symbols()
            .map_err(|e| bad(format!("archive symbol table: {e}")))?
        {
            Some(syms) => {
                for s in syms {
                    let s = s.map_err(|e| bad(format!("archive symbol table: {e}")))?;
                    index.entry(s.name()).or_insert(s.offset().0);
                }
            }
            None => Self::index_members(name, &file, data, &mut index)?,
        }
        Ok(Archive {
            name: name.to_string(),
            file,
            data,
            index,
            loaded: FxHashSet::default(),
        })
    }

    /// An archive without a symbol table (`ar rcS`): index the members' defined globals.
    fn index_members(
        name: &str,
        file: &ArchiveFile<'a, &'a [u8]>,
        data: &'a [u8],
        index: &mut FxHashMap<&'a [u8], u64>,
    ) -> Result<()> {
        use object::elf::{FileHeader64, SHT_SYMTAB, STB_LOCAL};
        use object::read::elf::{FileHeader, Sym};
        use object::LittleEndian as LE;
        for m in file.members() {
            let m =
                m.map_err(|e| Error::malformed(name, None, None, format!("archive member: {e}")))?;
            let Ok(d) = m.data(data) else { continue };
            let Ok(h) = FileHeader64::<LE>::parse(d) else {
                continue;
            };
            let Ok(secs) = h.sections(LE, d) else {
                continue;
            };
            let Ok(st) = secs.symbols(LE, d, SHT_SYMTAB) else {
                continue;
            };
            for s in st.iter() {
                if s.st_bind() != STB_LOCAL && s.st_shndx(LE) != object::elf::SHN_UNDEF {
                    if let Ok(n) = st.symbol_name(LE, s) {
                        index
                            .entry(n)
                            .or_insert(m.file_range().0.saturating_sub(60));
                    }
                }
            }
        }
        Ok(())
    }

    /// The member defining `symbol`, if any and not loaded yet: (display name, bytes).
    pub fn take_member_for(&mut self, symbol: &[u8]) -> Result<Option<(String, &'a [u8])>> {
        let Some(&off) = self.index.get(symbol) else {
            return Ok(None);
        };
        if !self.loaded.insert(off) {
            return Ok(None);
        }
        let bad = |what: String| Error::malformed(&self.name, None, Some(off), what);
        let m = self.file.member(ArchiveOffset(off)).map_err(|e| {
            bad(format!(
                "member for symbol {}: {e}",
                String::from_utf8_lossy(symbol)
            ))
        })?;
        let d = m
            .data(self.data)
            .map_err(|e| bad(format!("member data: {e}")))?;
        let mname = String::from_utf8_lossy(m.name()).into_owned();
        Ok(Some((format!("{}({})", self.name, mname), d)))
    }

    pub fn members_loaded(&self) -> usize {
        self.loaded.len()
    }
}
