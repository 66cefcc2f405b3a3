//! The messages of the kiln executor protocol (see docs/protocol.md).

use kiln_target::{
    ActionPair, AllocId, ExecutorAddr, FinalizeRequest, LazyRequest, LibraryId, Placement,
    SegmentMove, SlabId, SlabInfo, SlabWrite, StubKey, TargetInfo,
};
use serde::{Deserialize, Serialize};

/// Changes whenever a message changes shape; both ends must agree exactly.
pub const PROTOCOL_VERSION: u32 = 4;
/// First bytes of the first message in each direction.
pub const MAGIC: [u8; 8] = *b"KILNEXEC";

/// Executor → controller, first frame of every connection.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    pub magic: [u8; 8],
    pub version: u32,
    /// Whether the controller must prove it holds the shared secret.
    pub auth: bool,
    pub nonce: [u8; 32],
}

/// Controller → executor, second frame.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    pub magic: [u8; 8],
    pub version: u32,
    pub nonce: [u8; 32],
    /// HMAC-SHA256 over the nonces with the shared secret (see `auth`), if the executor asked.
    pub mac: Option<[u8; 32]>,
    /// The controller attached its standard input, output and error (Unix sockets only): the
    /// program's I/O is the controller's own.
    pub stdio_attached: bool,
}

/// Executor → controller, third frame: the executor's facts, or why it refuses.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Welcome {
    Accepted {
        handshake: Handshake,
        /// The executor's proof that it holds the secret too (when authentication is on).
        mac: Option<[u8; 32]>,
    },
    Refused(String),
}

/// What the controller learns about the executor before linking anything.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Handshake {
    pub info: TargetInfo,
    /// Symbols the target runtime itself provides to JIT'd code (`__tls_get_addr`, ...).
    pub bootstrap: Vec<(String, ExecutorAddr)>,
    /// Slab memory can be shared (a memfd passed back over this Unix socket).
    pub shared_memory: bool,
    /// The program's output arrives as [`Message::Output`] frames (the executor's standard
    /// output and error are not the controller's).
    pub forwards_output: bool,
    /// The executor offers slabs (not while a debugger traces it: see `InProcessExecutor`).
    pub slabs: bool,
}

/// One write into a slab, owned, as it travels.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WireWrite {
    Bytes {
        slab: SlabId,
        addr: ExecutorAddr,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    Fill {
        slab: SlabId,
        addr: ExecutorAddr,
        len: u64,
        byte: u8,
    },
}

impl WireWrite {
    pub fn slab(&self) -> SlabId {
        match self {
            WireWrite::Bytes { slab, .. } | WireWrite::Fill { slab, .. } => *slab,
        }
    }

    pub fn as_slab_write(&self) -> SlabWrite<'_> {
        match self {
            WireWrite::Bytes { addr, bytes, .. } => SlabWrite::Bytes(*addr, bytes),
            WireWrite::Fill {
                addr, len, byte, ..
            } => SlabWrite::Fill(*addr, *len, *byte),
        }
    }
}

/// Controller → executor, after the handshake.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Request {
    /// Echoed in the reply.
    pub id: u64,
    /// Slab writes to apply first (copy mode batches them here, so a finalize and the content
    /// it needs travel in one message). If one fails, `call` is not run.
    pub writes: Vec<WireWrite>,
    pub call: Call,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Call {
    Reserve {
        size: u64,
        placement: Placement,
    },
    Release {
        addr: ExecutorAddr,
        size: u64,
    },
    Finalize(FinalizeRequest),
    Deallocate(AllocId),
    RunInitializers(AllocId),
    LoadLibrary(String),
    Lookup {
        names: Vec<serde_bytes::ByteBuf>,
        libraries: Vec<LibraryId>,
        process: bool,
    },
    AllocateStaticTls {
        #[serde(with = "serde_bytes")]
        image: Vec<u8>,
        block_size: u64,
        align: u64,
    },
    /// `shared`: back the slab by a memfd and attach it to the reply.
    CreateSlab {
        sizes: [u64; 3],
        placement: Placement,
        shared: bool,
    },
    /// Nothing but the request's `writes`.
    Write,
    Patch {
        slab: SlabId,
        addr: ExecutorAddr,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    ReleaseSlab(SlabId),
    RunMain {
        entry: ExecutorAddr,
        args: Vec<String>,
    },
    CallVoid(ExecutorAddr),
    /// `u64 f(u64, ...)` with up to six arguments: [`kiln_target::Executor::call`].
    CallWithArgs {
        f: ExecutorAddr,
        args: Vec<u64>,
    },
    /// Leave with this status, as a native program does: exit handlers, then the units'
    /// finalizers, then stdio is flushed. No reply; the controller waits for the end.
    Exit(i32),
    /// [`kiln_target::Executor::read_memory`]; the reply is `Bytes`.
    ReadMemory {
        addr: ExecutorAddr,
        len: u64,
    },
    /// [`kiln_target::Executor::write_live`] (copy mode): writes over live units' bytes, each
    /// naturally aligned unit stored atomically, then the executor's cores serialize if code
    /// changed.
    WriteLive(Vec<WireWrite>),
    /// Shared mode, after the controller wrote live code into its own mapping of `slab`
    /// (`SharedSlab::write_live`): the executor makes valgrind forget `ranges` and its cores
    /// serialize (`InProcessExecutor::sync_code`).
    SyncCode {
        slab: SlabId,
        ranges: Vec<(ExecutorAddr, u64)>,
    },
    /// [`kiln_target::Executor::move_allocation`]; the reply is `Moved` once the bytes moved
    /// (an error reply: nothing changed).
    MoveAllocation {
        id: AllocId,
        moves: Vec<SegmentMove>,
        actions: Vec<ActionPair>,
    },
    /// Declare a lazy function in the executor's registry: [`kiln_target::Executor::declare_lazy`].
    /// Its handler is the controller's: the executor asks with [`Message::Resolve`].
    DeclareLazy,
    /// Forget a key this connection declared: [`kiln_target::Executor::forget_lazy`].
    ForgetLazy(StubKey),
    /// The answer to [`Message::Resolve`] `resolve` (the request's own `id` is unused, and no
    /// reply follows). The request's `writes` are applied before the waiting thread continues.
    Resolved {
        resolve: u64,
        resolution: Resolution,
    },
    /// A call that runs code, made by the handler of resolution `resolve`: the executor thread
    /// waiting for that resolution runs it (as in process, where a handler runs on the thread
    /// of the call that needs it). Calls that run code without this go to the thread that
    /// serves the controller.
    ForResolution {
        resolve: u64,
        call: CodeCall,
    },
}

/// The calls that run code in the executor (a handler's may be [`Call::ForResolution`]).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum CodeCall {
    RunInitializers(AllocId),
    /// Runs destructors and exit handlers.
    Deallocate(AllocId),
    RunMain {
        entry: ExecutorAddr,
        args: Vec<String>,
    },
    CallVoid(ExecutorAddr),
    CallWithArgs {
        f: ExecutorAddr,
        args: Vec<u64>,
    },
}

impl From<CodeCall> for Call {
    fn from(c: CodeCall) -> Call {
        match c {
            CodeCall::RunInitializers(id) => Call::RunInitializers(id),
            CodeCall::Deallocate(id) => Call::Deallocate(id),
            CodeCall::RunMain { entry, args } => Call::RunMain { entry, args },
            CodeCall::CallVoid(f) => Call::CallVoid(f),
            CodeCall::CallWithArgs { f, args } => Call::CallWithArgs { f, args },
        }
    }
}

impl Call {
    /// The call as one that runs code, if it is one (`Exit` aside: it ends the process).
    pub fn into_code(self) -> Result<CodeCall, Call> {
        Ok(match self {
            Call::RunInitializers(id) => CodeCall::RunInitializers(id),
            Call::Deallocate(id) => CodeCall::Deallocate(id),
            Call::RunMain { entry, args } => CodeCall::RunMain { entry, args },
            Call::CallVoid(f) => CodeCall::CallVoid(f),
            Call::CallWithArgs { f, args } => CodeCall::CallWithArgs { f, args },
            other => return Err(other),
        })
    }

    /// Whether serving it may run code of the program (which may call a lazy function).
    pub fn runs_code(&self) -> bool {
        matches!(
            self,
            Call::RunInitializers(_)
                | Call::Deallocate(_)
                | Call::RunMain { .. }
                | Call::CallVoid(_)
                | Call::CallWithArgs { .. }
                | Call::Exit(_)
                | Call::ForResolution { .. }
        )
    }
}

/// What the controller answers when the executor asks where a lazy function is.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The function's handler linked it here.
    Resolved(ExecutorAddr),
    /// The handler failed with `message`; the controller's error handler chose `continue_at`
    /// (`None`: the executor aborts with the message, as a call cannot return an error).
    Failed {
        message: String,
        continue_at: Option<ExecutorAddr>,
    },
}

/// Executor → controller, after the handshake.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Message {
    Reply {
        id: u64,
        /// An error as the executor's text: the controller shows it, and acts only on the
        /// request having failed (`kiln_target::Error::Remote`).
        result: Result<Value, String>,
    },
    /// Bytes the program wrote to its standard output (1) or error (2), when forwarded.
    Output {
        stream: u8,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The executor process ended (sent by a listener on behalf of the process it started).
    Exited(ExitReport),
    /// The executor could not understand the controller and is closing the connection.
    ProtocolError(String),
    /// A thread of the executor called a lazy function for the first time: the controller runs
    /// the key's handler and answers with [`Call::Resolved`] `{ resolve: id }`. Meanwhile the
    /// executor serves the controller's requests (the handler's links) as usual.
    Resolve { id: u64, request: LazyRequest },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Value {
    Unit,
    Addr(ExecutorAddr),
    Alloc(AllocId),
    Library(LibraryId),
    Lookup(Vec<Option<ExecutorAddr>>),
    Offset(i64),
    /// A slab; for a shared slab, its memfd is attached to the frame.
    Slab(SlabInfo),
    Status(i32),
    /// What a called function returned in rax.
    Word(u64),
    /// Bytes read from the executor's memory.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The allocation's bytes moved; `error` says why its new registrations failed (it lives at
    /// the new addresses without them), if they did.
    Moved {
        error: Option<String>,
    },
    /// A lazy function's key.
    Key(StubKey),
}

/// How an executor process ended.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReport {
    Code(i32),
    Signal(i32),
    Unknown,
}

impl ExitReport {
    pub fn from_status(s: std::process::ExitStatus) -> ExitReport {
        use std::os::unix::process::ExitStatusExt;
        match (s.code(), s.signal()) {
            (Some(c), _) => ExitReport::Code(c),
            (None, Some(sig)) => ExitReport::Signal(sig),
            _ => ExitReport::Unknown,
        }
    }

    pub fn to_error(self) -> kiln_target::Error {
        match self {
            ExitReport::Code(c) => kiln_target::Error::ExecutorExited {
                code: Some(c),
                signal: None,
            },
            ExitReport::Signal(s) => kiln_target::Error::ExecutorExited {
                code: None,
                signal: Some(s),
            },
            ExitReport::Unknown => kiln_target::Error::ExecutorExited {
                code: None,
                signal: None,
            },
        }
    }
}
