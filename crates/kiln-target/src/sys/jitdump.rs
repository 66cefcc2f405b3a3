//! perf's jitdump files: `DIR/jit-PID.dump` (the format: [`crate::jitdump_format`]).
//!
//! The controller encodes the records (it has the code, names and line tables); the executor
//! checks their framing and fills in what only it knows: the time (CLOCK_MONOTONIC, what
//! `perf record -k mono` samples with), its PID and thread, and a code index that is unique in
//! the file (perf inject names the ELF file it makes for each load after it).
//!
//! perf learns that a process writes a jitdump from an executable mapping of the file, which
//! `perf record` logs as an mmap event; so the first page of the file stays mapped `r-x` (never
//! writable: W^X holds) until the file is closed.

use crate::jitdump_format::{
    self as format, FileHeader, RecordHeader, JIT_CODE_DEBUG_INFO, JIT_CODE_LOAD, JIT_CODE_MOVE,
    JIT_CODE_UNWINDING_INFO,
};
use crate::{Error, Result};
use rustix::mm::{MapFlags, ProtFlags};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The `r-x` mapping of a dump's first page that tells perf about the file; unmapped on drop.
struct Marker {
    /// Start of the mapping (kept as an integer: it is never dereferenced, only unmapped).
    addr: usize,
    len: usize,
}

impl Marker {
    fn map(file: &File, len: usize) -> std::io::Result<Marker> {
        // SAFETY: no address is given, so the kernel places the mapping where nothing is mapped
        // and no memory of the process changes; it is private, mapped without write permission,
        // and only `Marker::drop` unmaps it.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::EXEC,
                MapFlags::PRIVATE,
                file,
                0,
            )
        }?;
        Ok(Marker {
            addr: p as usize,
            len,
        })
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        // SAFETY: `addr..addr + len` is exactly the mapping `Marker::map` made; this `Marker`
        // is its only owner and nothing reads or writes through it, so unmapping it invalidates
        // no reference.
        let _ = unsafe { rustix::mm::munmap(self.addr as *mut std::ffi::c_void, self.len) };
    }
}

struct Dump {
    /// The directory asked for (requests name it; the file is `DIR/jit-PID.dump`).
    dir: String,
    path: PathBuf,
    file: File,
    _marker: Marker,
    /// Code index of the code at each address (for JIT_CODE_MOVE).
    index_of: HashMap<u64, u64>,
    next_index: u64,
}

static DUMPS: Mutex<Vec<Dump>> = Mutex::new(Vec::new());

fn timestamp() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

fn tid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

fn failed(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::DebugSink {
        sink: "jitdump",
        why: format!("{}: {why}", path.display()).into(),
    }
}

fn dump_path(dir: &str) -> PathBuf {
    Path::new(dir).join(format!("jit-{}.dump", std::process::id()))
}

fn open(dir: &str, path: PathBuf) -> Result<Dump> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| failed(&path, e))?;
    let mut header = Vec::with_capacity(FileHeader::SIZE);
    FileHeader::new(std::process::id(), timestamp()).write(&mut header);
    file.write_all(&header).map_err(|e| failed(&path, e))?;
    let page = super::mem::page_size() as usize;
    let marker = Marker::map(&file, page).map_err(|e| failed(&path, format!("mmap: {e}")))?;
    Ok(Dump {
        dir: dir.to_owned(),
        path,
        file,
        _marker: marker,
        index_of: HashMap::new(),
        next_index: 1,
    })
}

/// Check that `records` is a stream of records the executor knows, each with the shape of its
/// kind, so that what reaches the file is what perf can read.
fn check(records: &[u8]) -> Result<()> {
    let bad = |off: usize, why: &dyn std::fmt::Display| {
        Error::InvalidRequest(format!("jitdump records: at offset {off}: {why}"))
    };
    // Where the record after the last good one starts (a framing error is there).
    let mut next = 0;
    for record in format::records(records) {
        let r = record.map_err(|e| bad(next, &e))?;
        next = r.offset + r.header.total_size as usize;
        let shape = match r.header.id {
            JIT_CODE_LOAD => format::parse_code_load(r.body).map(drop),
            JIT_CODE_MOVE => format::parse_code_move(r.body).map(drop),
            JIT_CODE_DEBUG_INFO => format::parse_debug_info(r.body).map(drop),
            JIT_CODE_UNWINDING_INFO => format::parse_unwinding_info(r.body).map(drop),
            id => return Err(bad(r.offset, &format!("unexpected record type {id}"))),
        };
        shape.map_err(|e| bad(r.offset, &e))?;
    }
    Ok(())
}

/// Fill in the executor's fields of `records` (already checked): every record's timestamp, and
/// the PID, thread and code index of loads and moves.
fn stamp(dump: &mut Dump, records: &mut [u8]) {
    let (now, pid, tid) = (timestamp(), std::process::id(), tid());
    let mut off = 0;
    while let Ok(header) = format::record_at(&records[off..]) {
        let end = off + header.total_size as usize;
        let (head, body) = records[off..end].split_at_mut(RecordHeader::SIZE);
        let stamped = RecordHeader {
            timestamp: now,
            ..header
        };
        stamped.write_over(head);
        if let (JIT_CODE_LOAD, Ok((load, _, _))) = (header.id, format::parse_code_load(body)) {
            let index = dump.next_index;
            dump.next_index += 1;
            dump.index_of.insert(load.code_addr, index);
            let load = format::CodeLoad {
                pid,
                tid,
                code_index: index,
                ..load
            };
            load.write_over(body);
        } else if let (JIT_CODE_MOVE, Ok(moved)) = (header.id, format::parse_code_move(body)) {
            let index = dump.index_of.remove(&moved.old_code_addr).unwrap_or(0);
            dump.index_of.insert(moved.new_code_addr, index);
            let moved = format::CodeMove {
                pid,
                tid,
                code_index: index,
                ..moved
            };
            moved.write_over(body);
        }
        off = end;
    }
}

/// Append `records` to `DIR/jit-PID.dump`, creating the file on first use.
pub(crate) fn write(dir: &str, records: &[u8]) -> Result<()> {
    check(records)?;
    let mut dumps = DUMPS
        .lock()
        .map_err(|_| Error::InvalidRequest("jitdump lock poisoned".into()))?;
    // Found by the directory as asked, then by the file's path (two spellings of a directory
    // must not open, and truncate, one file twice): building the path for every request cost
    // more than the rest of a unit's records.
    let i = match dumps.iter().position(|d| d.dir == dir) {
        Some(i) => i,
        None => {
            let path = dump_path(dir);
            match dumps.iter().position(|d| d.path == path) {
                Some(i) => i,
                None => {
                    dumps.push(open(dir, path)?);
                    dumps.len() - 1
                }
            }
        }
    };
    let dump = &mut dumps[i];
    let mut stamped = records.to_vec();
    stamp(dump, &mut stamped);
    dump.file
        .write_all(&stamped)
        .map_err(|e| failed(&dump.path, e))
}

/// End every open dump with JIT_CODE_CLOSE and unmap its marker (at process exit).
pub(crate) fn close_all() {
    let Ok(mut dumps) = DUMPS.lock() else { return };
    for mut d in dumps.drain(..) {
        let mut close = Vec::with_capacity(RecordHeader::SIZE);
        if format::code_close(&mut close).is_ok() {
            stamp(&mut d, &mut close);
            let _ = d.file.write_all(&close);
        }
        // `d` drops here: the file is closed and its marker unmapped.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jitdump_format::{
        CodeLoad, CodeMove, UnwindingInfo, JIT_CODE_CLOSE, MAGIC, VERSION,
    };

    #[test]
    fn executor_fields_are_filled_in_and_moves_keep_the_code_index() {
        let dir = std::env::temp_dir().join(format!("kiln-jitdump-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir_s = dir.to_str().unwrap();
        let mut records = Vec::new();
        format::unwinding_info(&mut records, b"ehfrhdr!", 4, 8).unwrap();
        let unwind_len = records.len();
        format::code_load(&mut records, 0x1000, "f", &[0xc3]).unwrap();
        let load_len = records.len() - unwind_len;
        format::code_move(&mut records, 0x1000, 0x2000, 1).unwrap();
        write(dir_s, &records).unwrap();
        // A malformed stream is refused, not written.
        assert!(write(dir_s, &records[..20]).is_err());
        let mut unknown = records[..RecordHeader::SIZE].to_vec();
        unknown[..4].copy_from_slice(&9u32.to_le_bytes());
        unknown[4..8].copy_from_slice(&16u32.to_le_bytes());
        assert!(write(dir_s, &unknown).is_err(), "unknown record type");
        // Unwinding sizes beyond the record, or a header larger than the data.
        for (size, hdr) in [(16, 4), (8, 9)] {
            let mut bad = Vec::new();
            format::unwinding_info(&mut bad, b"ehfrhdr!", 0, 0).unwrap();
            let info = UnwindingInfo {
                unwinding_size: size,
                eh_frame_hdr_size: hdr,
                mapped_size: 0,
            };
            info.write_over(&mut bad[RecordHeader::SIZE..]).unwrap();
            assert!(write(dir_s, &bad).is_err(), "{size} {hdr}");
        }
        close_all();

        let path = dir.join(format!("jit-{}.dump", std::process::id()));
        let f = std::fs::read(&path).unwrap();
        let header = FileHeader::read(&f).unwrap();
        assert_eq!(
            (header.magic, header.version, header.total_size),
            (MAGIC, VERSION, 40)
        );
        assert_eq!(header.pid, std::process::id());
        let recs: Vec<format::Record> = format::records(&f[FileHeader::SIZE..])
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(recs.len(), 4, "the three records and JIT_CODE_CLOSE");
        assert!(recs.iter().all(|r| r.header.timestamp > 0), "time stamped");
        assert_eq!(recs[0].header.id, JIT_CODE_UNWINDING_INFO);
        assert_eq!(
            &f[FileHeader::SIZE..][..unwind_len][RecordHeader::SIZE..],
            &records[RecordHeader::SIZE..unwind_len],
            "the unwinding record is written as given"
        );
        assert_eq!(recs[1].header.total_size as usize, load_len);
        let load = CodeLoad::read(recs[1].body).unwrap();
        assert_eq!(load.pid, std::process::id());
        assert_ne!(load.tid, 0);
        assert_ne!(load.code_index, 0);
        let moved = CodeMove::read(recs[2].body).unwrap();
        assert_eq!(
            (recs[2].header.id, moved.code_index),
            (JIT_CODE_MOVE, load.code_index),
            "the moved code keeps its index"
        );
        assert_eq!(
            (recs[3].header.id, recs[3].header.total_size),
            (JIT_CODE_CLOSE, 16)
        );
        assert_eq!(recs[3].offset + 16, f.len() - FileHeader::SIZE);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
