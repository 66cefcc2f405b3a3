//! ELF inputs: relocatable objects (x86-64), static archives, `.eh_frame` splitting.
pub mod archive;
mod eh_frame;

pub(crate) use eh_frame::split as split_eh_frame;
pub mod object;

/// What a file is, from its first bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    Relocatable,
    SharedLibrary,
    Archive,
    ThinArchive,
    /// A GNU ld script (`libc.so`, `libm.so` on Debian are).
    LinkerScript,
    Unknown,
}

pub fn identify(data: &[u8]) -> FileKind {
    if data.starts_with(b"!<arch>\n") {
        FileKind::Archive
    } else if data.starts_with(b"!<thin>\n") {
        FileKind::ThinArchive
    } else if data.starts_with(b"\x7fELF") {
        match data.get(16..18) {
            Some([1, 0]) => FileKind::Relocatable,
            Some([3, 0]) => FileKind::SharedLibrary,
            _ => FileKind::Unknown,
        }
    } else if data.iter().take(512).all(|b| b.is_ascii()) && !data.is_empty() {
        FileKind::LinkerScript
    } else {
        FileKind::Unknown
    }
}
