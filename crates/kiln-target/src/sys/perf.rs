//! perf's map file for JIT'd code: `/tmp/perf-PID.map`, one `START SIZE NAME` line per function
//! (hexadecimal start and size). perf reads it when it reports on a process whose samples fall in
//! anonymous executable memory.
//!
//! Lines are only ever appended: perf reads the file after the process has ended, and samples
//! taken while a now freed function was alive must still find its name. (Where code is freed
//! and other code reuses its addresses, jitdump, whose records are time stamped, is exact.)

use crate::executor::PerfMapEntry;
use crate::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

static MAP: Mutex<Option<File>> = Mutex::new(None);

/// The map file of this process.
pub fn path() -> PathBuf {
    PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()))
}

/// Append `entries` to the map (created, or truncated if an earlier process with the same PID
/// left one, on first use).
pub(crate) fn write(entries: &[PerfMapEntry]) -> Result<()> {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(entries.len() * 48);
    for e in entries {
        let _ = write!(text, "{:x} {:x} ", e.addr.0, e.size);
        // A name is one line: perf takes everything after the size as the name.
        text.extend(e.name.chars().map(|c| if c.is_control() { '?' } else { c }));
        text.push('\n');
    }
    let mut guard = MAP
        .lock()
        .map_err(|_| Error::InvalidRequest("perf map lock poisoned".into()))?;
    let failed = |why: std::io::Error| Error::DebugSink {
        sink: "perf map",
        why: format!("{}: {why}", path().display()).into(),
    };
    if guard.is_none() {
        *guard = Some(File::create(path()).map_err(failed)?);
    }
    if let Some(f) = guard.as_mut() {
        f.write_all(text.as_bytes()).map_err(failed)?;
    }
    Ok(())
}
