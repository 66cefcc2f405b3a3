//! perf's jitdump files: `DIR/jit-PID.dump` (format: the Linux kernel's
//! `tools/perf/Documentation/jitdump-specification.txt`).
//!
//! The file starts with a header; records follow, each `{u32 id, u32 total_size, u64 timestamp}`
//! and a body. The controller encodes the records (it has the code, names and line tables); the
//! executor fills in what only it knows: the time (CLOCK_MONOTONIC, what `perf record -k mono`
//! samples with), its PID and thread, and a code index that is unique in the file (perf inject
//! names the ELF file it makes for each load after it).
//!
//! perf learns that a process writes a jitdump from an executable mapping of the file, which
//! `perf record` logs as an mmap event; so the first page of the file stays mapped `r-x` (never
//! writable: W^X holds) until the file is closed.

use crate::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const MAGIC: u32 = 0x4A69_5444; // "JiTD"
const VERSION: u32 = 1;
const HEADER_SIZE: u32 = 40;
const EM_X86_64: u32 = 62;

const JIT_CODE_LOAD: u32 = 0;
const JIT_CODE_MOVE: u32 = 1;
const JIT_CODE_DEBUG_INFO: u32 = 2;
const JIT_CODE_CLOSE: u32 = 3;
const JIT_CODE_UNWINDING_INFO: u32 = 4;

/// Offsets in a record of fields the executor fills in.
const TIMESTAMP_AT: usize = 8;
const PID_AT: usize = 16;
const TID_AT: usize = 20;
const LOAD_CODE_ADDR_AT: usize = 32;
const LOAD_INDEX_AT: usize = 48;
const LOAD_FIXED_SIZE: usize = 56;
const MOVE_OLD_ADDR_AT: usize = 32;
const MOVE_NEW_ADDR_AT: usize = 40;
const MOVE_INDEX_AT: usize = 56;
const MOVE_SIZE: usize = 64;
const UNWIND_SIZE_AT: usize = 16;
const UNWIND_HDR_SIZE_AT: usize = 24;
const UNWIND_MAPPED_SIZE_AT: usize = 32;
const UNWIND_FIXED_SIZE: usize = 40;

struct Dump {
    path: PathBuf,
    file: File,
    marker: (usize, usize),
    /// Code index of the code at each address (for JIT_CODE_MOVE).
    index_of: HashMap<u64, u64>,
    next_index: u64,
}

static DUMPS: Mutex<Vec<Dump>> = Mutex::new(Vec::new());

fn timestamp() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

fn tid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

fn failed(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::DebugSink {
        sink: "jitdump",
        why: format!("{}: {why}", path.display()),
    }
}

fn open(dir: &str) -> Result<Dump> {
    let path = Path::new(dir).join(format!("jit-{}.dump", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| failed(&path, e))?;
    let mut h = Vec::with_capacity(HEADER_SIZE as usize);
    h.extend_from_slice(&MAGIC.to_ne_bytes());
    h.extend_from_slice(&VERSION.to_ne_bytes());
    h.extend_from_slice(&HEADER_SIZE.to_ne_bytes());
    h.extend_from_slice(&EM_X86_64.to_ne_bytes());
    h.extend_from_slice(&0u32.to_ne_bytes()); // pad1
    h.extend_from_slice(&std::process::id().to_ne_bytes());
    h.extend_from_slice(&timestamp().to_ne_bytes());
    h.extend_from_slice(&0u64.to_ne_bytes()); // flags: timestamps are CLOCK_MONOTONIC
    file.write_all(&h).map_err(|e| failed(&path, e))?;
    let len = super::mem::page_size() as usize;
    // SAFETY: a new private mapping of our own file chosen by the kernel (no address given), so
    // no existing memory is affected; it is never written through and is unmapped in `close`.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(failed(
            &path,
            format!("mmap: {}", std::io::Error::last_os_error()),
        ));
    }
    Ok(Dump {
        path,
        file,
        marker: (p as usize, len),
        index_of: HashMap::new(),
        next_index: 1,
    })
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(at..at + v.len()) {
        d.copy_from_slice(v);
    }
}

/// Fill in the executor's fields of `records` (checking their framing) for `dump`.
fn patch(dump: &mut Dump, records: &mut [u8]) -> Result<()> {
    let bad = |off: usize, why: &str| {
        Error::InvalidRequest(format!("jitdump records: at offset {off}: {why}"))
    };
    let (now, pid, tid) = (timestamp(), std::process::id(), tid());
    let mut off = 0usize;
    while off < records.len() {
        let hdr = records
            .get(off..off + 16)
            .ok_or_else(|| bad(off, "truncated record header"))?;
        let id = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let size = u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
        let end = off
            .checked_add(size)
            .filter(|e| size >= 16 && *e <= records.len())
            .ok_or_else(|| bad(off, "record size out of range"))?;
        let r = &mut records[off..end];
        put(r, TIMESTAMP_AT, &now.to_ne_bytes());
        match id {
            JIT_CODE_LOAD => {
                if size < LOAD_FIXED_SIZE + 1 {
                    return Err(bad(off, "JIT_CODE_LOAD record too short"));
                }
                let index = dump.next_index;
                dump.next_index += 1;
                dump.index_of.insert(get_u64(r, LOAD_CODE_ADDR_AT), index);
                put(r, PID_AT, &pid.to_ne_bytes());
                put(r, TID_AT, &tid.to_ne_bytes());
                put(r, LOAD_INDEX_AT, &index.to_ne_bytes());
            }
            JIT_CODE_MOVE => {
                if size < MOVE_SIZE {
                    return Err(bad(off, "JIT_CODE_MOVE record too short"));
                }
                let old = get_u64(r, MOVE_OLD_ADDR_AT);
                let index = dump.index_of.remove(&old).unwrap_or(0);
                dump.index_of.insert(get_u64(r, MOVE_NEW_ADDR_AT), index);
                put(r, PID_AT, &pid.to_ne_bytes());
                put(r, TID_AT, &tid.to_ne_bytes());
                put(r, MOVE_INDEX_AT, &index.to_ne_bytes());
            }
            JIT_CODE_UNWINDING_INFO => {
                // perf copies `unwinding_size` bytes of data and splits them at
                // `eh_frame_hdr_size` from the end: both must lie inside the record.
                let data = get_u64(r, UNWIND_SIZE_AT);
                let hdr = get_u64(r, UNWIND_HDR_SIZE_AT);
                let mapped = get_u64(r, UNWIND_MAPPED_SIZE_AT);
                if size < UNWIND_FIXED_SIZE
                    || data > (size - UNWIND_FIXED_SIZE) as u64
                    || hdr > data
                    || mapped > data
                {
                    return Err(bad(off, "JIT_CODE_UNWINDING_INFO sizes out of range"));
                }
            }
            JIT_CODE_DEBUG_INFO => {}
            _ => return Err(bad(off, &format!("unexpected record type {id}"))),
        }
        off = end;
    }
    Ok(())
}

/// Append `records` to `DIR/jit-PID.dump`, creating the file on first use.
pub(crate) fn write(dir: &str, records: &[u8]) -> Result<()> {
    let mut dumps = DUMPS
        .lock()
        .map_err(|_| Error::InvalidRequest("jitdump lock poisoned".into()))?;
    let want = Path::new(dir).join(format!("jit-{}.dump", std::process::id()));
    let i = match dumps.iter().position(|d| d.path == want) {
        Some(i) => i,
        None => {
            dumps.push(open(dir)?);
            dumps.len() - 1
        }
    };
    let dump = &mut dumps[i];
    let mut buf = records.to_vec();
    patch(dump, &mut buf)?;
    dump.file.write_all(&buf).map_err(|e| failed(&dump.path, e))
}

/// End every open dump with JIT_CODE_CLOSE and unmap its marker (at process exit).
pub(crate) fn close_all() {
    let Ok(mut dumps) = DUMPS.lock() else { return };
    for mut d in dumps.drain(..) {
        let mut rec = Vec::with_capacity(16);
        rec.extend_from_slice(&JIT_CODE_CLOSE.to_ne_bytes());
        rec.extend_from_slice(&16u32.to_ne_bytes());
        rec.extend_from_slice(&timestamp().to_ne_bytes());
        let _ = d.file.write_all(&rec);
        // SAFETY: the marker mapping was made in `open` and nothing else refers to it.
        unsafe { libc::munmap(d.marker.0 as *mut libc::c_void, d.marker.1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u32, body: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&id.to_ne_bytes());
        r.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
        r.extend_from_slice(&0u64.to_ne_bytes());
        r.extend_from_slice(body);
        r
    }

    fn u64s(v: &[u64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }

    #[test]
    fn executor_fields_are_filled_in_and_moves_keep_the_code_index() {
        let dir = std::env::temp_dir().join(format!("kiln-jitdump-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir_s = dir.to_str().unwrap();
        // LOAD: pid, tid, vma, code_addr, code_size, code_index, "f\0", code.
        let mut load = vec![0u8; 8];
        load.extend(u64s(&[0x1000, 0x1000, 1, 0]));
        load.extend_from_slice(b"f\0\xc3");
        // MOVE: pid, tid, vma, old, new, size, code_index.
        let mut mv = vec![0u8; 8];
        mv.extend(u64s(&[0x2000, 0x1000, 0x2000, 1, 0]));
        // UNWINDING_INFO: unwinding_size, eh_frame_hdr_size, mapped_size, data (8 bytes).
        let mut unwind = u64s(&[8, 4, 8]);
        unwind.extend_from_slice(b"ehfrhdr!");
        let mut records = record(JIT_CODE_UNWINDING_INFO, &unwind);
        records.extend(record(JIT_CODE_LOAD, &load));
        records.extend(record(JIT_CODE_MOVE, &mv));
        write(dir_s, &records).unwrap();
        // A malformed stream is refused, not written.
        assert!(write(dir_s, &records[..20]).is_err());
        assert!(write(dir_s, &record(9, &[])).is_err());
        let mut too_long = u64s(&[16, 4, 0]);
        too_long.extend_from_slice(b"ehfrhdr!");
        assert!(write(dir_s, &record(JIT_CODE_UNWINDING_INFO, &too_long)).is_err());
        let mut hdr_too_big = u64s(&[8, 9, 0]);
        hdr_too_big.extend_from_slice(b"ehfrhdr!");
        assert!(write(dir_s, &record(JIT_CODE_UNWINDING_INFO, &hdr_too_big)).is_err());
        close_all();

        let path = dir.join(format!("jit-{}.dump", std::process::id()));
        let f = std::fs::read(&path).unwrap();
        let u32_at = |at: usize| u32::from_ne_bytes(f[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_ne_bytes(f[at..at + 8].try_into().unwrap());
        assert_eq!((u32_at(0), u32_at(4), u32_at(8)), (MAGIC, 1, 40));
        assert_eq!(u32_at(20), std::process::id());
        let unwind_at = 40;
        assert_eq!(u32_at(unwind_at), JIT_CODE_UNWINDING_INFO);
        assert!(u64_at(unwind_at + TIMESTAMP_AT) > 0);
        assert_eq!(
            &f[unwind_at + 16..unwind_at + 16 + unwind.len()],
            &unwind[..],
            "the unwinding record is written as given"
        );
        let load_at = unwind_at + 16 + unwind.len();
        let move_at = load_at + 16 + load.len();
        assert_eq!(u32_at(load_at), JIT_CODE_LOAD);
        assert!(u64_at(load_at + TIMESTAMP_AT) > 0);
        assert_eq!(u32_at(load_at + PID_AT), std::process::id());
        assert_ne!(u32_at(load_at + TID_AT), 0);
        let index = u64_at(load_at + LOAD_INDEX_AT);
        assert_ne!(index, 0);
        assert_eq!(u32_at(move_at), JIT_CODE_MOVE);
        assert_eq!(
            u64_at(move_at + MOVE_INDEX_AT),
            index,
            "the moved code keeps its index"
        );
        let close_at = move_at + 16 + mv.len();
        assert_eq!(
            (u32_at(close_at), u32_at(close_at + 4)),
            (JIT_CODE_CLOSE, 16)
        );
        assert_eq!(f.len(), close_at + 16);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
