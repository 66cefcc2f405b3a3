//! The jitdump file format, as perf reads it: the Linux kernel's
//! `tools/perf/Documentation/jitdump-specification.txt`.
//!
//! One definition for both sides: the controller (`kiln`) encodes the records of the code it
//! links, the executor's sink writes the [`FileHeader`], fills in what only it knows (time, PID,
//! thread, code index) and checks the records it is given before they reach the file.
//!
//! A file is a [`FileHeader`] and a sequence of records. A record is a [`RecordHeader`], the fixed
//! part of its kind ([`CodeLoad`], [`CodeMove`], [`DebugInfo`], [`UnwindingInfo`]; nothing for
//! `JIT_CODE_CLOSE`) and a tail whose layout the kind defines. The structs name their fields as
//! the specification's C structs do, in the same order, with no padding between them.
//!
//! Integers are little endian. perf reads a file in the byte order of its header's magic number,
//! so a file only has to be consistent; little endian is the order of every target kiln runs on.

use std::fmt;

/// `FileHeader::magic`: "JiTD".
pub const MAGIC: u32 = 0x4A69_5444;
/// `FileHeader::version`.
pub const VERSION: u32 = 1;
/// `FileHeader::elf_mach`: the architecture of the code described, x86-64.
pub const ELF_MACHINE: u32 = object::elf::EM_X86_64.0 as u32;

/// A function was loaded: [`CodeLoad`], its name (NUL-terminated), its code.
pub const JIT_CODE_LOAD: u32 = 0;
/// Code moved: [`CodeMove`].
pub const JIT_CODE_MOVE: u32 = 1;
/// Source lines of the next load: [`DebugInfo`], then `nr_entry` times a [`DebugEntry`] and its
/// file name (NUL-terminated).
pub const JIT_CODE_DEBUG_INFO: u32 = 2;
/// The end of the file: the header alone.
pub const JIT_CODE_CLOSE: u32 = 3;
/// Unwinding data of the next load: [`UnwindingInfo`], then `unwinding_size` bytes of data,
/// padding the record to a multiple of 8 bytes.
pub const JIT_CODE_UNWINDING_INFO: u32 = 4;

/// A record or header that does not have the shape its kind requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError(pub &'static str);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for FormatError {}

type Result<T> = std::result::Result<T, FormatError>;

/// `N` bytes at `*at` of `bytes`, and `*at` moved past them.
fn take<const N: usize>(bytes: &[u8], at: &mut usize) -> Option<[u8; N]> {
    let field = bytes.get(*at..at.checked_add(N)?)?.try_into().ok()?;
    *at += N;
    Some(field)
}

/// A fixed-size layout of the format: a struct of little-endian integers with its size in the
/// file and its reader and writers, the fields in file order.
macro_rules! layout {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$field_meta:meta])* pub $field:ident: $ty:ty,)*
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $name {
            /// Size in the file.
            pub const SIZE: usize = 0 $(+ std::mem::size_of::<$ty>())*;

            /// Read from the start of `bytes` (None if it is shorter than [`Self::SIZE`]).
            pub fn read(bytes: &[u8]) -> Option<Self> {
                let mut at = 0;
                Some($name { $($field: <$ty>::from_le_bytes(take(bytes, &mut at)?),)* })
            }

            /// Append to `out`.
            pub fn write(&self, out: &mut Vec<u8>) {
                $(out.extend_from_slice(&self.$field.to_le_bytes());)*
            }

            /// Overwrite the start of `bytes` (None, and nothing written, if it is shorter than
            /// [`Self::SIZE`]).
            pub fn write_over(&self, bytes: &mut [u8]) -> Option<()> {
                let mut rest = bytes.get_mut(..Self::SIZE)?;
                $(
                    let field = self.$field.to_le_bytes();
                    let (dst, after) = rest.split_at_mut(field.len());
                    dst.copy_from_slice(&field);
                    rest = after;
                )*
                debug_assert!(rest.is_empty());
                Some(())
            }
        }
    };
}

layout! {
    /// The start of the file.
    pub struct FileHeader {
        /// [`MAGIC`].
        pub magic: u32,
        /// [`VERSION`].
        pub version: u32,
        /// Size of this header: [`FileHeader::SIZE`].
        pub total_size: u32,
        /// [`ELF_MACHINE`].
        pub elf_mach: u32,
        pub pad1: u32,
        /// The process whose code the file describes.
        pub pid: u32,
        /// When the file was created, in the clock of the records.
        pub timestamp: u64,
        /// 0: timestamps are `CLOCK_MONOTONIC` (what `perf record -k mono` samples with).
        pub flags: u64,
    }
}

impl FileHeader {
    /// The header of a file written by process `pid`, created at `timestamp`.
    pub fn new(pid: u32, timestamp: u64) -> Self {
        FileHeader {
            magic: MAGIC,
            version: VERSION,
            total_size: Self::SIZE as u32,
            elf_mach: ELF_MACHINE,
            pad1: 0,
            pid,
            timestamp,
            flags: 0,
        }
    }
}

layout! {
    /// The start of every record.
    pub struct RecordHeader {
        /// `JIT_CODE_*`.
        pub id: u32,
        /// Size of the whole record, this header included.
        pub total_size: u32,
        /// When the record was written; 0 in the controller's records, set by the executor.
        pub timestamp: u64,
    }
}

layout! {
    /// `JIT_CODE_LOAD`, after the header. The controller leaves `pid`, `tid` and `code_index` 0.
    pub struct CodeLoad {
        pub pid: u32,
        pub tid: u32,
        /// Where the code is (perf names the function at this address).
        pub vma: u64,
        /// Where the code is, again.
        pub code_addr: u64,
        pub code_size: u64,
        /// Unique in the file: `perf inject --jit` names the `.so` it writes after it.
        pub code_index: u64,
    }
}

layout! {
    /// `JIT_CODE_MOVE`, after the header. The controller leaves `pid`, `tid` and `code_index` 0;
    /// the executor gives the record the index of the code at `old_code_addr`.
    pub struct CodeMove {
        pub pid: u32,
        pub tid: u32,
        pub vma: u64,
        pub old_code_addr: u64,
        pub new_code_addr: u64,
        pub code_size: u64,
        pub code_index: u64,
    }
}

layout! {
    /// `JIT_CODE_DEBUG_INFO`, after the header.
    pub struct DebugInfo {
        /// The code the lines describe (the next `JIT_CODE_LOAD`).
        pub code_addr: u64,
        /// How many [`DebugEntry`]s follow.
        pub nr_entry: u64,
    }
}

layout! {
    /// A line of a `JIT_CODE_DEBUG_INFO` record, followed by its file name (NUL-terminated): the
    /// code at `addr` comes from that file's line `lineno`.
    pub struct DebugEntry {
        pub addr: u64,
        pub lineno: u32,
        pub discrim: u32,
    }
}

layout! {
    /// `JIT_CODE_UNWINDING_INFO`, after the header.
    pub struct UnwindingInfo {
        /// Size of the data that follows: `.eh_frame` then `.eh_frame_hdr`.
        pub unwinding_size: u64,
        /// Size of the `.eh_frame_hdr` at the end of the data.
        pub eh_frame_hdr_size: u64,
        /// How much of the data perf maps after the code (0 or `unwinding_size`).
        pub mapped_size: u64,
    }
}

/// Appends a record of kind `id` whose body `body` writes, with its size set (the record padded
/// to a multiple of `align` bytes). A record too large for its `u32` size is not appended.
fn append_record(
    out: &mut Vec<u8>,
    id: u32,
    align: usize,
    body: impl FnOnce(&mut Vec<u8>),
) -> Result<()> {
    let start = out.len();
    RecordHeader::default().write(out);
    body(out);
    out.resize(start + (out.len() - start).next_multiple_of(align), 0);
    let Ok(total_size) = u32::try_from(out.len() - start) else {
        out.truncate(start);
        return Err(FormatError("record larger than 4 GiB"));
    };
    let header = RecordHeader {
        id,
        total_size,
        timestamp: 0,
    };
    header.write_over(&mut out[start..]);
    Ok(())
}

/// A NUL-terminated string (NUL bytes inside `s` are left out: they would end it early).
fn write_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(s.iter().filter(|b| **b != 0));
    out.push(0);
}

/// Appends a `JIT_CODE_LOAD` record: `name`, loaded at `addr`, with these bytes.
pub fn code_load(out: &mut Vec<u8>, addr: u64, name: &str, code: &[u8]) -> Result<()> {
    append_record(out, JIT_CODE_LOAD, 1, |out| {
        let load = CodeLoad {
            vma: addr,
            code_addr: addr,
            code_size: code.len() as u64,
            ..CodeLoad::default()
        };
        load.write(out);
        write_cstr(out, name.as_bytes());
        out.extend_from_slice(code);
    })
}

/// Appends a `JIT_CODE_MOVE` record: code of `size` bytes moved from `old` to `new`.
pub fn code_move(out: &mut Vec<u8>, old: u64, new: u64, size: u64) -> Result<()> {
    append_record(out, JIT_CODE_MOVE, 1, |out| {
        let moved = CodeMove {
            vma: new,
            old_code_addr: old,
            new_code_addr: new,
            code_size: size,
            ..CodeMove::default()
        };
        moved.write(out);
    })
}

/// Appends a `JIT_CODE_DEBUG_INFO` record for the code at `code_addr`: each line and its file.
pub fn debug_info<'f>(
    out: &mut Vec<u8>,
    code_addr: u64,
    lines: impl ExactSizeIterator<Item = (DebugEntry, &'f str)>,
) -> Result<()> {
    append_record(out, JIT_CODE_DEBUG_INFO, 1, |out| {
        let info = DebugInfo {
            code_addr,
            nr_entry: lines.len() as u64,
        };
        info.write(out);
        for (entry, file) in lines {
            entry.write(out);
            write_cstr(out, file.as_bytes());
        }
    })
}

/// Appends a `JIT_CODE_UNWINDING_INFO` record: `data` is `.eh_frame` followed by an
/// `.eh_frame_hdr` of `eh_frame_hdr_size` bytes; `mapped_size` is `data.len()` or 0. The record
/// is padded to 8 bytes.
pub fn unwinding_info(
    out: &mut Vec<u8>,
    data: &[u8],
    eh_frame_hdr_size: u64,
    mapped_size: u64,
) -> Result<()> {
    append_record(out, JIT_CODE_UNWINDING_INFO, 8, |out| {
        let info = UnwindingInfo {
            unwinding_size: data.len() as u64,
            eh_frame_hdr_size,
            mapped_size,
        };
        info.write(out);
        out.extend_from_slice(data);
    })
}

/// Appends a `JIT_CODE_CLOSE` record.
pub fn code_close(out: &mut Vec<u8>) -> Result<()> {
    append_record(out, JIT_CODE_CLOSE, 1, |_| {})
}

/// The header of the record at the start of `bytes`, checked: its size covers at least the
/// header and lies within `bytes`.
pub fn record_at(bytes: &[u8]) -> Result<RecordHeader> {
    let header = RecordHeader::read(bytes).ok_or(FormatError("truncated record header"))?;
    let size = header.total_size as usize;
    if size < RecordHeader::SIZE || size > bytes.len() {
        return Err(FormatError("record size out of range"));
    }
    Ok(header)
}

/// A record of a stream: its header and its body (the bytes after the header).
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Offset of the record in the stream.
    pub offset: usize,
    pub header: RecordHeader,
    pub body: &'a [u8],
}

/// The records of `bytes` (a stream of records, without the file header), in order; a record
/// whose size does not fit ends the iteration with an error.
pub fn records(bytes: &[u8]) -> impl Iterator<Item = Result<Record<'_>>> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let rest = bytes.get(offset..).filter(|r| !r.is_empty())?;
        Some(match record_at(rest) {
            Ok(header) => {
                let size = header.total_size as usize;
                let record = Record {
                    offset,
                    header,
                    body: &rest[RecordHeader::SIZE..size],
                };
                offset += size;
                Ok(record)
            }
            Err(e) => {
                offset = bytes.len();
                Err(e)
            }
        })
    })
}

/// The NUL-terminated string at the start of `bytes`, and what follows it.
fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = bytes.iter().position(|b| *b == 0)?;
    Some((&bytes[..n], &bytes[n + 1..]))
}

/// The body of a `JIT_CODE_LOAD` record: its fixed part, the name and the code (which must be
/// `code_size` bytes).
pub fn parse_code_load(body: &[u8]) -> Result<(CodeLoad, &[u8], &[u8])> {
    let load = CodeLoad::read(body).ok_or(FormatError("JIT_CODE_LOAD record too short"))?;
    let (name, code) = split_cstr(&body[CodeLoad::SIZE..])
        .ok_or(FormatError("JIT_CODE_LOAD name is not NUL-terminated"))?;
    if code.len() as u64 != load.code_size {
        return Err(FormatError(
            "JIT_CODE_LOAD code_size disagrees with the record",
        ));
    }
    Ok((load, name, code))
}

/// The body of a `JIT_CODE_MOVE` record.
pub fn parse_code_move(body: &[u8]) -> Result<CodeMove> {
    CodeMove::read(body).ok_or(FormatError("JIT_CODE_MOVE record too short"))
}

/// A line of a parsed `JIT_CODE_DEBUG_INFO` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugLine<'a> {
    pub entry: DebugEntry,
    /// The file name, without its NUL.
    pub file: &'a [u8],
}

/// The body of a `JIT_CODE_DEBUG_INFO` record: its fixed part and each line with its file name.
pub fn parse_debug_info(body: &[u8]) -> Result<(DebugInfo, Vec<DebugLine<'_>>)> {
    let bad = FormatError("JIT_CODE_DEBUG_INFO entries do not fill the record");
    let info = DebugInfo::read(body).ok_or(bad.clone())?;
    let mut rest = &body[DebugInfo::SIZE..];
    let mut lines = Vec::new();
    for _ in 0..info.nr_entry {
        let entry = DebugEntry::read(rest).ok_or(bad.clone())?;
        let (file, after) = split_cstr(&rest[DebugEntry::SIZE..]).ok_or(bad.clone())?;
        lines.push(DebugLine { entry, file });
        rest = after;
    }
    if !rest.is_empty() {
        return Err(bad);
    }
    Ok((info, lines))
}

/// The body of a `JIT_CODE_UNWINDING_INFO` record: its fixed part and the data. perf copies
/// `unwinding_size` bytes of data and splits them `eh_frame_hdr_size` from the end, and maps
/// `mapped_size` of them: all of these must lie inside the record.
pub fn parse_unwinding_info(body: &[u8]) -> Result<(UnwindingInfo, &[u8])> {
    let bad = FormatError("JIT_CODE_UNWINDING_INFO sizes out of range");
    let info = UnwindingInfo::read(body).ok_or(bad.clone())?;
    let data = &body[UnwindingInfo::SIZE..];
    let size = usize::try_from(info.unwinding_size).map_err(|_| bad.clone())?;
    if size > data.len()
        || info.eh_frame_hdr_size > info.unwinding_size
        || info.mapped_size > info.unwinding_size
    {
        return Err(bad);
    }
    Ok((info, &data[..size]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_the_specifications_sizes() {
        // Sizes of the C structs in jitdump-specification.txt (none has padding).
        assert_eq!(FileHeader::SIZE, 40);
        assert_eq!(RecordHeader::SIZE, 16);
        assert_eq!(CodeLoad::SIZE, 40);
        assert_eq!(CodeMove::SIZE, 48);
        assert_eq!(DebugInfo::SIZE, 16);
        assert_eq!(DebugEntry::SIZE, 16);
        assert_eq!(UnwindingInfo::SIZE, 24);
        assert_eq!(ELF_MACHINE, 62, "EM_X86_64");
        let mut h = Vec::new();
        FileHeader::new(7, 9).write(&mut h);
        assert_eq!(&h[..4], b"DTiJ", "magic, little endian");
        assert_eq!(FileHeader::read(&h), Some(FileHeader::new(7, 9)));
    }

    #[test]
    fn records_round_trip() {
        let mut out = Vec::new();
        debug_info(
            &mut out,
            0x1000,
            [(
                DebugEntry {
                    addr: 0x1004,
                    lineno: 7,
                    discrim: 0,
                },
                "a\0.c",
            )]
            .into_iter(),
        )
        .unwrap();
        unwinding_info(&mut out, b"ehframe+hdr", 3, 11).unwrap();
        code_load(&mut out, 0x1000, "f", &[0xc3, 0x90]).unwrap();
        code_move(&mut out, 0x1000, 0x2000, 2).unwrap();
        code_close(&mut out).unwrap();
        let recs: Vec<Record> = records(&out).collect::<Result<_>>().unwrap();
        let ids: Vec<u32> = recs.iter().map(|r| r.header.id).collect();
        assert_eq!(
            ids,
            [
                JIT_CODE_DEBUG_INFO,
                JIT_CODE_UNWINDING_INFO,
                JIT_CODE_LOAD,
                JIT_CODE_MOVE,
                JIT_CODE_CLOSE
            ]
        );
        let (info, lines) = parse_debug_info(recs[0].body).unwrap();
        assert_eq!((info.code_addr, info.nr_entry), (0x1000, 1));
        assert_eq!(
            (lines[0].entry.lineno, lines[0].file),
            (7, &b"a.c"[..]),
            "NUL left out"
        );
        assert_eq!(recs[1].header.total_size % 8, 0, "unwinding record padded");
        let (u, data) = parse_unwinding_info(recs[1].body).unwrap();
        assert_eq!(
            (u.unwinding_size, u.eh_frame_hdr_size, u.mapped_size),
            (11, 3, 11)
        );
        assert_eq!(data, b"ehframe+hdr");
        let (load, name, code) = parse_code_load(recs[2].body).unwrap();
        assert_eq!(
            (load.vma, load.code_addr, load.code_size),
            (0x1000, 0x1000, 2)
        );
        assert_eq!((name, code), (&b"f"[..], &[0xc3, 0x90][..]));
        let moved = parse_code_move(recs[3].body).unwrap();
        assert_eq!((moved.old_code_addr, moved.new_code_addr), (0x1000, 0x2000));
        assert!(recs[4].body.is_empty());
    }

    #[test]
    fn malformed_records_are_errors() {
        let mut out = Vec::new();
        code_load(&mut out, 0x1000, "f", &[0xc3]).unwrap();
        // Truncated stream, size below the header, size beyond the stream.
        assert!(records(&out[..20]).any(|r| r.is_err()));
        let mut small = out.clone();
        small[4..8].copy_from_slice(&8u32.to_le_bytes());
        assert!(record_at(&small).is_err());
        let mut big = out.clone();
        big[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(record_at(&big).is_err());
        // A load whose code_size disagrees with its record, or whose name is not terminated.
        let body = &out[RecordHeader::SIZE..];
        assert!(parse_code_load(&body[..body.len() - 1]).is_err());
        assert!(parse_code_load(&body[..CodeLoad::SIZE + 1]).is_err());
        let mut unwind = Vec::new();
        unwinding_info(&mut unwind, b"12345678", 9, 0).unwrap();
        assert!(parse_unwinding_info(&unwind[RecordHeader::SIZE..]).is_err());
        let mut lines = Vec::new();
        DebugInfo {
            code_addr: 0,
            nr_entry: 2,
        }
        .write(&mut lines);
        assert!(parse_debug_info(&lines).is_err(), "entries missing");
    }
}
