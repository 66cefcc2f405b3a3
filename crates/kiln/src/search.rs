//! Finding libraries as `ld` does: `-L` directories, then the system's; `-lNAME` prefers
//! `libNAME.so` to `libNAME.a` unless static; `-l:FILE` names a file. GNU ld scripts (Debian's
//! `libc.so`, `libm.so`, gcc's `libgcc_s.so`) are followed.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// How `-l` names are found, as `ld` finds them.
///
/// ```
/// let s = kiln::Session::in_process();
/// s.set_library_search(kiln::LibrarySearch {
///     dirs: vec!["/opt/mylibs".into()],
///     static_only: false,
/// });
/// assert!(s.library_search().find("m").is_ok(), "libm is found in the system's directories");
/// ```
#[derive(Debug, Clone, Default)]
pub struct LibrarySearch {
    /// `-L` directories, searched first, in order.
    pub dirs: Vec<PathBuf>,
    /// Prefer archives (`--static`).
    pub static_only: bool,
}

const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/lib/x86_64-linux-gnu",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// gcc's own library directories (where `libstdc++.so` and `libgcc_s.so` live), asked of the
/// compiler once, only when a library is not found elsewhere.
fn compiler_dirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let out = std::process::Command::new("cc")
            .arg("-print-search-dirs")
            .output();
        let Ok(out) = out else { return Vec::new() };
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("libraries: ="))
            .map(|l| {
                l.split(':')
                    .map(PathBuf::from)
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    })
}

impl LibrarySearch {
    fn candidates(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.dirs
            .iter()
            .cloned()
            .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
            .chain(std::iter::once(PathBuf::new()).filter(|_| false))
    }

    fn find_in(
        &self,
        dirs: &mut dyn Iterator<Item = PathBuf>,
        names: &[String],
    ) -> Option<PathBuf> {
        for d in dirs {
            for n in names {
                let p = d.join(n);
                if p.is_file() {
                    return Some(p);
                }
            }
        }
        None
    }

    /// Find `-l SPEC`: `NAME` or `:FILE`.
    pub fn find(&self, spec: &str) -> Result<PathBuf> {
        let names: Vec<String> = match spec.strip_prefix(':') {
            Some(file) => vec![file.to_string()],
            None if self.static_only => vec![format!("lib{spec}.a")],
            None => vec![format!("lib{spec}.so"), format!("lib{spec}.a")],
        };
        // ld searches each directory for .so then .a before moving to the next directory.
        if let Some(p) = self.find_in(&mut self.candidates(), &names) {
            return Ok(p);
        }
        if let Some(p) = self.find_in(&mut compiler_dirs().iter().cloned(), &names) {
            return Ok(p);
        }
        Err(Error::NotFound {
            what: format!("library -l{spec} ({}; add -L DIR)", names.join(" or ")).into(),
            searched: self
                .dirs
                .iter()
                .map(|d| d.display().to_string())
                .chain(SYSTEM_DIRS.iter().map(|s| s.to_string()))
                .chain(std::iter::once("the compiler's directories".to_string()))
                .collect(),
        })
    }

    /// A file named in a linker script: absolute, or relative to the search directories.
    fn find_file(&self, name: &str, script_dir: &Path) -> Result<PathBuf> {
        let p = Path::new(name);
        if p.is_absolute() {
            return Ok(p.to_path_buf());
        }
        let local = script_dir.join(p);
        if local.is_file() {
            return Ok(local);
        }
        self.find(&format!(":{name}"))
    }

    /// The files a GNU ld script brings in (`GROUP`, `INPUT`, `AS_NEEDED`), in order.
    pub fn expand_script(&self, path: &Path, text: &str) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut clean = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find("/*") {
            clean.push_str(&rest[..i]);
            rest = rest[i + 2..]
                .find("*/")
                .map_or("", |j| &rest[i + 2 + j + 2..]);
        }
        clean.push_str(rest);
        let dir = path.parent().unwrap_or(Path::new("."));
        let toks: Vec<&str> = clean
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
            .filter(|t| !t.is_empty())
            .collect();
        let mut i = 0;
        let mut in_files = false;
        while i < toks.len() {
            let t = toks[i];
            match t {
                "GROUP" | "INPUT" | "AS_NEEDED" => in_files = true,
                "OUTPUT_FORMAT" | "OUTPUT_ARCH" | "SEARCH_DIR" | "TARGET" => {
                    in_files = false;
                    i += 1; // skip its argument
                }
                _ if in_files => {
                    if let Some(l) = t.strip_prefix("-l") {
                        out.push(self.find(l)?);
                    } else {
                        out.push(self.find_file(t, dir)?);
                    }
                }
                _ => {
                    return Err(Error::Unsupported {
                        at: Box::new(crate::Location { file: path.display().to_string(), section: None, offset: None }),
                        what: format!("linker script command {t:?} (only GROUP, INPUT and AS_NEEDED are understood)").into(),
                    })
                }
            }
            i += 1;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_libc_script() {
        let s = LibrarySearch::default();
        let text = "/* GNU ld script\n   Use the shared library */\nOUTPUT_FORMAT(elf64-x86-64)\n\
                    GROUP ( /lib/x86_64-linux-gnu/libc.so.6 /usr/lib/x86_64-linux-gnu/libc_nonshared.a  AS_NEEDED ( /lib64/ld-linux-x86-64.so.2 ) )\n";
        let files = s
            .expand_script(Path::new("/usr/lib/x86_64-linux-gnu/libc.so"), text)
            .unwrap();
        assert_eq!(
            files,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libc_nonshared.a"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn unknown_command_is_an_error() {
        let s = LibrarySearch::default();
        assert!(s.expand_script(Path::new("x.so"), "SECTIONS { }").is_err());
    }
}
