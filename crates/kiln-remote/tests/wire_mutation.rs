//! The wire format against hostile bytes, in memory: every message type, encoded, then
//! truncated at every length, bit-flipped at every bit, overwritten byte by byte, with its
//! length prefix lied about and garbage appended. Reading and decoding must never panic, must
//! give the error the damage calls for (checked against a model of the framing), and must not
//! allocate what a length prefix merely claims.
//!
//! A counting global allocator (per thread) observes what the decoder allocates: the one
//! reason this file allows unsafe code (implementing `GlobalAlloc` is unsafe by definition).
#![allow(unsafe_code)]

use kiln_remote::proto::*;
use kiln_remote::wire::{self, read_frame, Source, WireError, MAX_FRAME, MAX_HELLO_FRAME};
use kiln_target::{
    Action, ActionPair, AllocId, Bytes, ExecutorAddr, FinalizeRequest, LazyRequest, LibraryId,
    MemProt, PerfMapEntry, Placement, Segment, SegmentMove, SlabId, SlabInfo, StubKey, TargetInfo,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::os::fd::OwnedFd;

// ---- allocation accounting ----------------------------------------------------------------

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get().wrapping_add(delta);
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping touches
// only const-initialized thread-locals without destructors (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            account(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            account(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(p, l) };
        account(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            account(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Run `f` and return its result and the most memory (bytes) this thread held at once during
/// it, above what it held before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, (peak - base).max(0) as usize)
}

// ---- sources --------------------------------------------------------------------------------

/// Bytes in memory that know their stream position and how much was read from them.
struct Tracked<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Most bytes handed out by one read (1: a peer that dribbles).
    max_read: usize,
    /// Fail every other read with `Interrupted` (must be retried).
    interrupt: bool,
    toggle: bool,
}

impl<'a> Tracked<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Tracked {
            bytes,
            pos: 0,
            max_read: usize::MAX,
            interrupt: false,
            toggle: false,
        }
    }
}

impl Source for Tracked<'_> {
    fn read_some(&mut self, buf: &mut [u8], _fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        if self.interrupt {
            self.toggle = !self.toggle;
            if self.toggle {
                return Err(io::ErrorKind::Interrupted.into());
            }
        }
        let n = buf
            .len()
            .min(self.max_read)
            .min(self.bytes.len() - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
    fn position(&self) -> u64 {
        self.pos as u64
    }
}

// ---- the messages -----------------------------------------------------------------------------

fn addr(a: u64) -> ExecutorAddr {
    ExecutorAddr(a)
}

fn server_hellos() -> Vec<ServerHello> {
    vec![
        ServerHello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            auth: true,
            nonce: [0xa5; 32],
        },
        ServerHello {
            magic: MAGIC,
            version: u32::MAX,
            auth: false,
            nonce: [0; 32],
        },
    ]
}

fn client_hellos() -> Vec<ClientHello> {
    vec![
        ClientHello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            nonce: [0x11; 32],
            mac: Some([0xee; 32]),
            stdio_attached: true,
        },
        ClientHello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            nonce: [0x80; 32],
            mac: None,
            stdio_attached: false,
        },
    ]
}

fn welcomes() -> Vec<Welcome> {
    vec![
        Welcome::Accepted {
            handshake: Handshake {
                info: TargetInfo {
                    triple: "x86_64-unknown-linux-gnu".into(),
                    page_size: 4096,
                    pid: 4_000_000,
                },
                bootstrap: vec![
                    ("__tls_get_addr".into(), addr(0x7f00_1234_5678)),
                    ("__kiln_atexit".into(), addr(u64::MAX)),
                ],
                shared_memory: true,
                forwards_output: false,
                slabs: true,
            },
            mac: Some([0x42; 32]),
        },
        Welcome::Accepted {
            handshake: Handshake {
                info: TargetInfo {
                    triple: String::new(),
                    page_size: 0,
                    pid: 0,
                },
                bootstrap: Vec::new(),
                shared_memory: false,
                forwards_output: true,
                slabs: false,
            },
            mac: None,
        },
        Welcome::Refused("authentication failed".into()),
    ]
}

fn finalize_request() -> FinalizeRequest {
    FinalizeRequest {
        reservation: (addr(0x7f12_3456_0000), 0x3_0000),
        segments: vec![
            Segment {
                addr: addr(0x7f12_3456_0000),
                prot: MemProt::ReadExec,
                content: vec![0x55, 0x48, 0x89, 0xe5, 0xc3, 0xcc, 0xcc, 0xcc],
                zero_fill: 0,
            },
            Segment {
                addr: addr(0x7f12_3457_0000),
                prot: MemProt::Read,
                content: b"hello, world\n\0".to_vec(),
                zero_fill: 3,
            },
            Segment {
                addr: addr(0x7f12_3458_0000),
                prot: MemProt::ReadWrite,
                content: Vec::new(),
                zero_fill: 0x1_0000,
            },
        ],
        actions: vec![
            ActionPair {
                finalize: Some(Action::RegisterEhFrame {
                    addr: addr(0x7f12_3457_0100),
                    size: 0x40,
                }),
                dealloc: Some(Action::DeregisterEhFrame {
                    addr: addr(0x7f12_3457_0100),
                    size: 0x40,
                }),
            },
            ActionPair {
                finalize: Some(Action::RegisterTls {
                    module: 7,
                    image: addr(0x7f12_3457_0200),
                    image_size: 16,
                    block_size: 64,
                    align: 16,
                    static_offset: Some(-128),
                }),
                dealloc: Some(Action::DeregisterTls { module: 7 }),
            },
            ActionPair {
                finalize: Some(Action::RegisterGdbObjects {
                    key: 0x7f12_3456_0000,
                    objects: vec![Bytes(b"\x7fELF fake object".to_vec()), Bytes(Vec::new())],
                }),
                dealloc: Some(Action::DeregisterGdbObjects {
                    key: 0x7f12_3456_0000,
                }),
            },
            ActionPair {
                finalize: Some(Action::WritePerfMap {
                    entries: vec![PerfMapEntry {
                        addr: addr(0x7f12_3456_0000),
                        size: 5,
                        name: "main".into(),
                    }],
                }),
                dealloc: Some(Action::DiscardTranslations {
                    addr: addr(0x7f12_3456_0000),
                    size: 8,
                }),
            },
            ActionPair {
                finalize: Some(Action::WriteJitdump {
                    dir: "/tmp".into(),
                    records: Bytes(vec![1, 2, 3, 4]),
                }),
                dealloc: None,
            },
            ActionPair {
                finalize: Some(Action::ResolveIfunc {
                    resolver: addr(0x7f12_3456_0004),
                    slot: addr(0x7f12_3458_0008),
                }),
                dealloc: Some(Action::CxaFinalize {
                    dso: addr(0x7f12_3458_0000),
                }),
            },
            ActionPair {
                finalize: None,
                dealloc: Some(Action::CallVoid(addr(0x7f12_3456_0000))),
            },
        ],
        initializers: vec![addr(0x7f12_3456_0000), addr(1)],
        deinitializers: vec![Action::CallVoid(addr(0x7f12_3456_0002))],
        in_slab: true,
    }
}

fn calls() -> Vec<Call> {
    vec![
        Call::Reserve {
            size: 0x10_0000,
            placement: Placement::Within {
                lo: 0x7f00_0000_0000,
                hi: 0x7fff_0000_0000,
            },
        },
        Call::Reserve {
            size: 1,
            placement: Placement::Fixed(0x4000_0000),
        },
        Call::Release {
            addr: addr(0x7f12_3456_0000),
            size: 0x3_0000,
        },
        Call::Finalize(finalize_request()),
        Call::Finalize(FinalizeRequest::default()),
        Call::Deallocate(AllocId(u64::MAX)),
        Call::RunInitializers(AllocId(3)),
        Call::LoadLibrary("/usr/lib/x86_64-linux-gnu/libm.so.6".into()),
        Call::Lookup {
            names: vec![
                serde_bytes::ByteBuf::from(b"printf".to_vec()),
                serde_bytes::ByteBuf::from(Vec::new()),
                serde_bytes::ByteBuf::from(vec![0xff, 0, 0x80]),
            ],
            libraries: vec![LibraryId(0), LibraryId(u32::MAX)],
            process: true,
        },
        Call::AllocateStaticTls {
            image: vec![9; 40],
            block_size: 64,
            align: 16,
        },
        Call::CreateSlab {
            sizes: [0x10_0000, 0x8_0000, 0x8_0000],
            placement: Placement::Anywhere,
            shared: true,
        },
        Call::Write,
        Call::Patch {
            slab: SlabId(2),
            addr: addr(0x7f12_3456_0010),
            bytes: vec![0xe9, 0, 0, 0, 0],
        },
        Call::ReleaseSlab(SlabId(1)),
        Call::RunMain {
            entry: addr(0x7f12_3456_0000),
            args: vec!["prog".into(), String::new(), "ünïcødé".into()],
        },
        Call::CallVoid(addr(0x7f12_3456_0020)),
        Call::CallWithArgs {
            f: addr(0x7f12_3456_0040),
            args: vec![0, u64::MAX, 42],
        },
        Call::Exit(-1),
        Call::ReadMemory {
            addr: addr(0x7f12_3456_0040),
            len: 0x40_0000,
        },
        Call::WriteLive(vec![
            WireWrite::Bytes {
                slab: SlabId(0),
                addr: addr(0x7f12_3456_0006),
                bytes: vec![0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 0xc3],
            },
            WireWrite::Fill {
                slab: SlabId(u32::MAX),
                addr: addr(u64::MAX),
                len: u64::MAX,
                byte: 0xcc,
            },
        ]),
        Call::SyncCode {
            slab: SlabId(1),
            ranges: vec![(addr(0x7f12_3456_0000), 0x30), (addr(0), 0)],
        },
        Call::MoveAllocation {
            id: AllocId(12),
            moves: vec![
                SegmentMove {
                    from: addr(0x7f12_3456_1000),
                    to: addr(0x7f12_3456_0ff0),
                    len: 0x2a,
                },
                SegmentMove {
                    from: addr(u64::MAX),
                    to: addr(0),
                    len: u64::MAX,
                },
            ],
            actions: finalize_request().actions,
        },
        Call::MoveAllocation {
            id: AllocId(0),
            moves: Vec::new(),
            actions: Vec::new(),
        },
        Call::DeclareLazy,
        Call::ForgetLazy(StubKey(u64::MAX)),
        Call::Resolved {
            resolve: 1,
            resolution: Resolution::Resolved(addr(0x7f12_3456_0080)),
        },
        Call::Resolved {
            resolve: u64::MAX,
            resolution: Resolution::Failed {
                message: "the controller's handler failed: no such method".into(),
                continue_at: Some(addr(0x7f12_3456_00c0)),
            },
        },
        Call::Resolved {
            resolve: 0,
            resolution: Resolution::Failed {
                message: String::new(),
                continue_at: None,
            },
        },
        Call::ForResolution {
            resolve: 3,
            call: CodeCall::CallWithArgs {
                f: addr(0x7f12_3456_0040),
                args: vec![1, 2],
            },
        },
        Call::ForResolution {
            resolve: u64::MAX,
            call: CodeCall::RunInitializers(AllocId(5)),
        },
        Call::ForResolution {
            resolve: 1,
            call: CodeCall::RunMain {
                entry: addr(0x7f12_3456_0000),
                args: vec!["x".into()],
            },
        },
        Call::ForResolution {
            resolve: 2,
            call: CodeCall::Deallocate(AllocId(0)),
        },
        Call::ForResolution {
            resolve: 4,
            call: CodeCall::CallVoid(addr(1)),
        },
    ]
}

fn requests() -> Vec<Request> {
    let writes = vec![
        WireWrite::Bytes {
            slab: SlabId(0),
            addr: addr(0x7f12_3456_0000),
            bytes: vec![0xc3; 17],
        },
        WireWrite::Fill {
            slab: SlabId(0),
            addr: addr(0x7f12_3456_1000),
            len: 0x1000,
            byte: 0xcc,
        },
        WireWrite::Bytes {
            slab: SlabId(1),
            addr: addr(0x7f12_3466_0000),
            bytes: Vec::new(),
        },
    ];
    calls()
        .into_iter()
        .enumerate()
        .map(|(i, call)| Request {
            id: if i % 2 == 0 {
                i as u64 + 1
            } else {
                u64::MAX - i as u64
            },
            // Copy mode batches writes with the call that needs them.
            writes: if matches!(
                call,
                Call::Write | Call::Finalize(_) | Call::Resolved { .. }
            ) {
                writes.clone()
            } else {
                Vec::new()
            },
            call,
        })
        .collect()
}

fn messages() -> Vec<Message> {
    let values = vec![
        Value::Unit,
        Value::Addr(addr(0x7f12_3456_0000)),
        Value::Alloc(AllocId(9)),
        Value::Library(LibraryId(4)),
        Value::Lookup(vec![Some(addr(0x1000)), None, Some(addr(u64::MAX))]),
        Value::Offset(-4096),
        Value::Slab(SlabInfo {
            id: SlabId(3),
            regions: [
                (addr(0x7f00_0000_0000), 0x10_0000),
                (addr(0x7f00_0010_0000), 0x8_0000),
                (addr(0x7f00_0018_0000), 0x8_0000),
            ],
        }),
        Value::Status(i32::MIN),
        Value::Bytes(vec![0x90; 300]),
        Value::Bytes(Vec::new()),
        Value::Moved { error: None },
        Value::Moved {
            error: Some("registering it there failed: TLS module 0x7 is registered already".into()),
        },
        Value::Word(u64::MAX),
        Value::Key(StubKey(1)),
        Value::Key(StubKey(u64::MAX)),
    ];
    let mut m: Vec<Message> = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| Message::Reply {
            id: i as u64 * 1000,
            result: Ok(v),
        })
        .collect();
    m.push(Message::Reply {
        id: 77,
        result: Err("cannot reserve 0x1000 bytes of address space: ENOMEM".into()),
    });
    m.push(Message::Output {
        stream: 1,
        bytes: b"hello, world\n".to_vec(),
    });
    m.push(Message::Output {
        stream: 2,
        bytes: vec![0xff; 3],
    });
    for r in [
        ExitReport::Code(0),
        ExitReport::Code(-7),
        ExitReport::Signal(11),
        ExitReport::Unknown,
    ] {
        m.push(Message::Exited(r));
    }
    m.push(Message::ProtocolError(
        "malformed frame at stream offset 0".into(),
    ));
    for (id, key, ret) in [(1, 1, 0x7f12_3456_0009), (u64::MAX, u64::MAX, 0)] {
        m.push(Message::Resolve {
            id,
            request: LazyRequest {
                key: StubKey(key),
                return_addr: addr(ret),
            },
        });
    }
    m
}

// ---- the checks -------------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    cases: usize,
    decoded: usize,
    rejected: usize,
}

fn le32(b: &[u8]) -> usize {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// Read one frame from `bytes` with `limit` and decode it as `T`, checking the outcome against
/// what the framing says must happen to these bytes:
/// - no bytes: `Closed`; fewer than 4: `Truncated` of the length prefix;
/// - a prefix over the limit: `TooLarge`, with nothing read past the prefix;
/// - fewer body bytes than the prefix claims: `Truncated`, all of them read;
/// - otherwise a frame of exactly the claimed body, and decoding gives a value (that encodes
///   and decodes again) or `Malformed`, nothing else.
fn check<T: DeserializeOwned + Serialize>(what: &str, bytes: &[u8], limit: usize, st: &mut Stats) {
    st.cases += 1;
    let mut src = Tracked::new(bytes);
    let got = read_frame(&mut src, limit);
    let ctx = || {
        format!(
            "{what}: {} bytes {:02x?}",
            bytes.len(),
            &bytes[..bytes.len().min(24)]
        )
    };
    if bytes.is_empty() {
        assert!(matches!(got, Err(WireError::Closed)), "{}: {got:?}", ctx());
        st.rejected += 1;
        return;
    }
    if bytes.len() < 4 {
        assert!(
            matches!(got, Err(WireError::Truncated { offset: 0, got: g, want: 4 }) if g == bytes.len()),
            "{}: {got:?}",
            ctx()
        );
        st.rejected += 1;
        return;
    }
    let len = le32(bytes);
    if len > limit {
        assert!(
            matches!(got, Err(WireError::TooLarge { offset: 0, len: l, limit: m }) if l == len && m == limit),
            "{}: {got:?}",
            ctx()
        );
        assert_eq!(
            src.pos,
            4,
            "{}: read past an oversized length prefix",
            ctx()
        );
        st.rejected += 1;
        return;
    }
    let avail = bytes.len() - 4;
    if len > avail {
        assert!(
            matches!(got, Err(WireError::Truncated { offset: 0, got: g, want: w })
                if g == bytes.len() && w == 4 + len),
            "{}: {got:?}",
            ctx()
        );
        st.rejected += 1;
        return;
    }
    let frame = match got {
        Ok(f) => f,
        Err(e) => panic!("{}: a complete frame was not read: {e:?}", ctx()),
    };
    assert_eq!(frame.body, &bytes[4..4 + len], "{}: wrong body", ctx());
    assert_eq!(src.pos, 4 + len, "{}: read past the frame", ctx());
    assert!(frame.fds.is_empty());
    match frame.decode::<T>() {
        Ok(v) => {
            st.decoded += 1;
            let again = wire::encode(&v)
                .unwrap_or_else(|e| panic!("{}: decoded value does not encode: {e}", ctx()));
            let (v2, _) = decode_frame::<T>(&again);
            let again2 = wire::encode(&v2).expect("encodes");
            assert_eq!(again, again2, "{}: decode/encode is not stable", ctx());
        }
        Err(WireError::Malformed { offset: 0, why }) => {
            assert!(!why.is_empty());
            st.rejected += 1;
        }
        Err(e) => panic!("{}: decoding gave {e:?}, expected Malformed", ctx()),
    }
}

fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> (T, usize) {
    let f = read_frame(&mut &bytes[..], MAX_FRAME).expect("a valid frame reads");
    let n = f.body.len();
    (f.decode::<T>().expect("a valid frame decodes"), n)
}

/// Every mutation of one encoded message.
fn mutate_all<T: DeserializeOwned + Serialize>(what: &str, msg: &T, limit: usize, st: &mut Stats) {
    let frame = wire::encode(msg).expect("encodes");
    let body_len = frame.len() - 4;
    assert_eq!(le32(&frame), body_len, "{what}: length prefix");
    // Valid: decodes to the same encoding, through a plain slice, a dribbling source and one
    // that is interrupted at every other read.
    let (v, _) = decode_frame::<T>(&frame);
    assert_eq!(
        wire::encode(&v).expect("encodes"),
        frame,
        "{what}: round trip"
    );
    for (max_read, interrupt) in [(1, false), (3, true), (usize::MAX, true)] {
        let mut src = Tracked::new(&frame);
        src.max_read = max_read;
        src.interrupt = interrupt;
        let f = read_frame(&mut src, limit).expect("reads piecewise");
        assert_eq!(f.body, &frame[4..], "{what}: piecewise read");
        f.decode::<T>().expect("decodes");
    }
    check::<T>(&format!("{what} intact"), &frame, limit, st);

    // Every truncation.
    for n in 0..frame.len() {
        check::<T>(&format!("{what} cut at {n}"), &frame[..n], limit, st);
    }
    // Every bit flipped.
    let mut m = frame.clone();
    for i in 0..frame.len() {
        for bit in 0..8 {
            m[i] ^= 1 << bit;
            check::<T>(&format!("{what} bit {bit} of byte {i}"), &m, limit, st);
            m[i] ^= 1 << bit;
        }
    }
    // Every byte overwritten with 0x00, 0xff and 0x80.
    for i in 0..frame.len() {
        for b in [0x00, 0xff, 0x80] {
            let old = m[i];
            m[i] = b;
            check::<T>(&format!("{what} byte {i} = {b:#x}"), &m, limit, st);
            m[i] = old;
        }
    }
    // Length prefix lies.
    for claimed in [
        0usize,
        1,
        body_len.saturating_sub(1),
        body_len + 1,
        body_len + 4096,
        limit,
        limit + 1,
        MAX_HELLO_FRAME + 1,
        MAX_FRAME,
        MAX_FRAME + 1,
        200 << 20,
        u32::MAX as usize,
    ] {
        let Ok(c) = u32::try_from(claimed) else {
            continue;
        };
        let mut m = frame.clone();
        m[..4].copy_from_slice(&c.to_le_bytes());
        check::<T>(&format!("{what} claiming {claimed}"), &m, limit, st);
    }
    // A zero-length frame is no message of ours.
    {
        let mut src: &[u8] = &[0, 0, 0, 0];
        let f = read_frame(&mut src, limit).expect("an empty frame reads");
        assert!(
            matches!(f.decode::<T>(), Err(WireError::Malformed { .. })),
            "{what}: an empty body decoded"
        );
    }
    // Garbage after the frame stays in the stream (the frame reads as it was); garbage counted
    // in the length prefix is trailing bytes, which the decoder refuses.
    for garbage in [
        &[0u8][..],
        &[0xff; 7][..],
        &b"KILNEXEC"[..],
        &[0x80; 40][..],
    ] {
        let mut after = frame.clone();
        after.extend_from_slice(garbage);
        let mut src = Tracked::new(&after);
        let f = read_frame(&mut src, limit).expect("reads");
        assert_eq!(src.pos, frame.len(), "{what}: read into the next frame");
        f.decode::<T>().expect("decodes");
        st.cases += 1;

        let mut inside = after.clone();
        inside[..4].copy_from_slice(&((body_len + garbage.len()) as u32).to_le_bytes());
        let f = read_frame(&mut &inside[..], limit).expect("reads");
        match f.decode::<T>() {
            Err(WireError::Malformed { why, .. }) => {
                assert!(why.contains("trailing"), "{what}: {why}")
            }
            Err(e) => panic!("{what} with {} garbage bytes inside: {e:?}", garbage.len()),
            Ok(_) => panic!(
                "{what} with {} garbage bytes inside: decoded",
                garbage.len()
            ),
        }
        st.cases += 1;
    }
    // A random walk of several mutations of the body at once (deterministic); the prefix is
    // either the original or made honest (its lies are covered exhaustively above).
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ frame.len() as u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..1500 {
        let mut m = frame.clone();
        for _ in 0..1 + rnd() % 4 {
            let i = 4 + (rnd() % (m.len() as u64 - 4)) as usize;
            match rnd() % 4 {
                0 => m[i] = rnd() as u8,
                1 => m[i] ^= 1 << (rnd() % 8),
                2 => {
                    let j = 4 + (rnd() % (m.len() as u64 - 3)) as usize;
                    m.truncate(j.min(m.len()))
                }
                _ => m.insert(i, rnd() as u8),
            }
            if m.len() < 5 {
                break;
            }
        }
        // Keep the prefix honest half the time, so that the body mutations reach the decoder.
        if rnd() % 2 == 0 && m.len() >= 4 {
            let n = (m.len() - 4) as u32;
            m[..4].copy_from_slice(&n.to_le_bytes());
        }
        check::<T>(&format!("{what} random"), &m, limit, st);
    }
}

/// Decoding a valid frame of one type as each other type: an error or a value, never a panic.
fn cross_decode(frame: &[u8], st: &mut Stats) {
    let f = read_frame(&mut &frame[..], MAX_FRAME).expect("reads");
    let _ = f.decode::<ServerHello>();
    let _ = f.decode::<ClientHello>();
    let _ = f.decode::<Welcome>();
    let _ = f.decode::<Request>();
    let _ = f.decode::<Message>();
    st.cases += 5;
}

#[test]
fn every_message_survives_every_mutation() {
    let mut st = Stats::default();
    let mut frames = Vec::new();
    for (i, m) in server_hellos().iter().enumerate() {
        mutate_all(&format!("ServerHello#{i}"), m, MAX_HELLO_FRAME, &mut st);
        frames.push(wire::encode(m).unwrap());
    }
    for (i, m) in client_hellos().iter().enumerate() {
        mutate_all(&format!("ClientHello#{i}"), m, MAX_HELLO_FRAME, &mut st);
        frames.push(wire::encode(m).unwrap());
    }
    for (i, m) in welcomes().iter().enumerate() {
        // The controller reads the welcome with four times the hello limit.
        mutate_all(&format!("Welcome#{i}"), m, MAX_HELLO_FRAME * 4, &mut st);
        frames.push(wire::encode(m).unwrap());
    }
    for (i, m) in requests().iter().enumerate() {
        let what = format!("Request#{i} {:?}", std::mem::discriminant(&m.call));
        mutate_all(&what, m, MAX_FRAME, &mut st);
        frames.push(wire::encode(m).unwrap());
    }
    for (i, m) in messages().iter().enumerate() {
        mutate_all(&format!("Message#{i}"), m, MAX_FRAME, &mut st);
        frames.push(wire::encode(m).unwrap());
    }
    for f in &frames {
        cross_decode(f, &mut st);
    }
    println!(
        "wire mutation: {} cases over {} messages ({} decoded to a value, {} rejected)",
        st.cases,
        frames.len(),
        st.decoded,
        st.rejected
    );
    assert!(st.cases > 20_000, "only {} cases", st.cases);
    assert!(
        st.rejected > st.cases / 4,
        "too few rejections: the checks may be vacuous"
    );
}

#[test]
fn a_stream_of_frames_reads_in_order_with_offsets() {
    let frames: Vec<Vec<u8>> = requests()
        .iter()
        .map(|r| wire::encode(r).unwrap())
        .collect();
    let stream: Vec<u8> = frames.concat();
    let mut src = Tracked::new(&stream);
    src.max_read = 5; // frames straddle reads
    let mut at = 0u64;
    for (i, f) in frames.iter().enumerate() {
        let got = read_frame(&mut src, MAX_FRAME).expect("reads");
        assert_eq!(got.offset, at, "frame {i}: offset");
        assert_eq!(got.body, &f[4..]);
        let r: Request = got.decode().expect("decodes");
        assert_eq!(r.id, requests()[i].id);
        at += f.len() as u64;
    }
    assert!(matches!(
        read_frame(&mut src, MAX_FRAME),
        Err(WireError::Closed)
    ));

    // Cut inside the last frame: the error names the offset where that frame began.
    let last = frames.last().unwrap();
    let cut = &stream[..stream.len() - 1];
    let mut src = Tracked::new(cut);
    for _ in 0..frames.len() - 1 {
        read_frame(&mut src, MAX_FRAME).expect("reads");
    }
    let start = (stream.len() - last.len()) as u64;
    match read_frame(&mut src, MAX_FRAME) {
        Err(WireError::Truncated { offset, got, want }) => {
            assert_eq!(offset, start);
            assert_eq!(got, last.len() - 1);
            assert_eq!(want, last.len());
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    // An oversized prefix in the middle of a stream: refused at its own offset.
    let mut s2 = frames[0].clone();
    s2.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
    s2.extend_from_slice(&[0; 64]);
    let mut src = Tracked::new(&s2);
    read_frame(&mut src, MAX_FRAME).expect("first frame");
    match read_frame(&mut src, MAX_FRAME) {
        Err(WireError::TooLarge { offset, len, limit }) => {
            assert_eq!(offset, frames[0].len() as u64);
            assert_eq!(len, MAX_FRAME + 1);
            assert_eq!(limit, MAX_FRAME);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        src.pos,
        frames[0].len() + 4,
        "read past the oversized prefix"
    );
}

#[test]
fn claimed_lengths_cost_nothing_until_sent() {
    // The accounting sees allocations (or the checks below would pass vacuously).
    let (v, peak) = peak_during(|| std::hint::black_box(vec![1u8; 8 << 20]).len());
    assert_eq!(v, 8 << 20);
    assert!(
        peak >= 8 << 20,
        "the counting allocator saw {peak} bytes for an 8 MiB vector"
    );

    // 200 MB claimed (under MAX_FRAME), 10 bytes sent: Truncated, and the reader held nowhere
    // near 200 MB meanwhile.
    let mut bytes = (200u32 << 20).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[7; 10]);
    let (r, peak) = peak_during(|| read_frame(&mut &bytes[..], MAX_FRAME));
    match r {
        Err(WireError::Truncated { got, want, .. }) => {
            assert_eq!(got, 14);
            assert_eq!(want, 4 + (200 << 20));
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(
        peak < 4 << 20,
        "reading a 10-byte body claimed as 200 MB held {peak} bytes at once"
    );

    // Without a limit at all (usize::MAX): 4 GiB claimed, still nothing allocated for it.
    let mut bytes = u32::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[1; 3]);
    let (r, peak) = peak_during(|| read_frame(&mut &bytes[..], usize::MAX));
    assert!(matches!(r, Err(WireError::Truncated { .. })), "{r:?}");
    assert!(peak < 4 << 20, "a 4 GiB claim held {peak} bytes at once");

    // Over the limit: refused from the prefix alone, allocating nothing for the body.
    let bytes = (MAX_FRAME as u32 + 1).to_le_bytes();
    let (r, peak) = peak_during(|| read_frame(&mut &bytes[..], MAX_FRAME));
    assert!(matches!(r, Err(WireError::TooLarge { .. })), "{r:?}");
    assert!(
        peak < 64 << 10,
        "refusing an oversized frame held {peak} bytes"
    );
}

/// Postcard sequences and byte strings carry their own lengths: a small frame claiming a huge
/// collection inside must be refused without allocating what it claims.
#[test]
fn claimed_collection_lengths_cost_nothing() {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }
    let mut cases = Vec::new();
    for claim in [1u64 << 20, 1 << 32, u32::MAX as u64, u64::MAX >> 1] {
        // Request { id: 1, writes: <claim> elements, ... }
        let mut b = Vec::new();
        varint(1, &mut b);
        varint(claim, &mut b);
        b.extend_from_slice(&[0; 16]);
        cases.push(("Request.writes", framed(&b)));
        // Request { id, writes: [], call: Lookup { names: <claim> byte strings } }
        let lookup = {
            let v = wire::encode(&Request {
                id: 1,
                writes: Vec::new(),
                call: Call::Lookup {
                    names: Vec::new(),
                    libraries: Vec::new(),
                    process: false,
                },
            })
            .unwrap();
            // id (1 byte), writes len (1 byte), variant tag (1 byte): then the names' count.
            let mut b = v[4..7].to_vec();
            varint(claim, &mut b);
            b.extend_from_slice(&[0x05, b'a', b'b', b'c', b'd', b'e']);
            b
        };
        cases.push(("Lookup.names", framed(&lookup)));
        // Request { id, writes: [ Bytes { slab, addr, bytes: <claim> bytes } ] }
        let mut b = Vec::new();
        varint(1, &mut b);
        varint(1, &mut b);
        b.push(0); // WireWrite::Bytes
        varint(0, &mut b);
        varint(0x1000, &mut b);
        varint(claim, &mut b);
        b.extend_from_slice(&[0xaa; 32]);
        cases.push(("WireWrite.bytes", framed(&b)));
        // Message::Output { stream, bytes: <claim> bytes }
        let mut b = vec![1, 1];
        varint(claim, &mut b);
        b.extend_from_slice(b"abc");
        cases.push(("Output.bytes", framed(&b)));
        // Message::ProtocolError(<claim>-byte string)
        let mut b = vec![3];
        varint(claim, &mut b);
        b.extend_from_slice(b"why");
        cases.push(("ProtocolError", framed(&b)));
    }
    for (what, f) in &cases {
        let frame = read_frame(&mut &f[..], MAX_FRAME).expect("reads");
        let (r, peak) = peak_during(|| {
            (
                frame.decode::<Request>().is_ok(),
                frame.decode::<Message>().is_ok(),
            )
        });
        let as_request = !what.starts_with("Output") && !what.starts_with("ProtocolError");
        let decoded = if as_request { r.0 } else { r.1 };
        assert!(
            !decoded,
            "{what}: a frame claiming a huge collection decoded"
        );
        assert!(
            peak < 4 << 20,
            "{what}: decoding a {}-byte frame held {peak} bytes at once",
            f.len()
        );
    }
}
