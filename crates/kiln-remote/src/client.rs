//! The controller side: [`RemoteExecutor`] implements [`Executor`] by sending each call to a
//! `kiln-executor` process and waiting for its reply.

use crate::auth::{nonce, Token};
use crate::book::{registered_ranges, SlabBook};
use crate::error::SetupError;
use crate::mux::{reap_child, Mux, Reply};
use crate::proto::*;
use crate::wire::{Conn, MAX_HELLO_FRAME};
use kiln_target::{
    ActionPair, AllocId, Error, Executor, ExecutorAddr, FinalizeRequest, LazyErrorHandler,
    LazyHandler, LibraryId, Placement, Result, SegmentMove, SharedSlab, SlabClaim, SlabId,
    SlabInfo, SlabWrite, StubKey, TargetInfo, MAX_READ,
};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

/// How slab memory reaches the executor.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum MemoryMode {
    /// Shared when the executor can share (same host, Unix socket), copy otherwise.
    #[default]
    Auto,
    /// The executor's memfd, mapped writable here: the linker writes in place, nothing copied.
    Shared,
    /// Content travels in the messages (batched into the finalize that needs it).
    Copy,
}

impl std::str::FromStr for MemoryMode {
    type Err = SetupError;
    fn from_str(s: &str) -> std::result::Result<Self, SetupError> {
        match s {
            "auto" => Ok(MemoryMode::Auto),
            "shared" => Ok(MemoryMode::Shared),
            "copy" => Ok(MemoryMode::Copy),
            _ => Err(SetupError::BadMemoryMode { text: s.into() }),
        }
    }
}

/// Where a listening executor is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `HOST:PORT`.
    Tcp(String),
}

impl std::str::FromStr for Endpoint {
    type Err = SetupError;
    fn from_str(s: &str) -> std::result::Result<Self, SetupError> {
        let bad = |why| SetupError::BadAddress {
            text: s.into(),
            why,
        };
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(bad("needs a socket path"));
            }
            Ok(Endpoint::Unix(p.into()))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            if !a.contains(':') {
                return Err(bad("expected tcp:HOST:PORT"));
            }
            Ok(Endpoint::Tcp(a.into()))
        } else {
            Err(bad("expected unix:PATH or tcp:HOST:PORT"))
        }
    }
}

/// Options for reaching an executor.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub memory: MemoryMode,
    /// The shared secret, for executors that ask for it.
    pub token: Option<Token>,
    /// Hand our standard input, output and error to the executor (Unix sockets): the program
    /// reads and writes them directly. Otherwise its output arrives as messages and is written
    /// to ours.
    pub attach_stdio: bool,
}

/// An executor in another process.
///
/// Any number of threads may use it at once: their requests share one connection, and each
/// gets its own reply. The executor serves them one at a time, in the order they arrive (while
/// it runs code for one, the others wait), except that a thread of the executor waiting for a
/// lazy function's resolution serves the handler's requests, and any that run no code, too.
///
/// Lazy functions ([`Executor::declare_lazy`]): the handler runs here, in the thread whose
/// call (`run_main`, `call`, initializers, ...) runs the code that needs the function, or in a
/// thread of its own if the question arrives while threads wait only for calls that run no code.
/// Someone must be waiting on the executor to read the question: one asked while no thread
/// waits is answered during the next call.
pub struct RemoteExecutor {
    info: TargetInfo,
    bootstrap: Vec<(String, ExecutorAddr)>,
    shared: bool,
    slabs: bool,
    mux: Arc<Mux>,
    /// Shared mode: our mappings of the executor's slabs. Each is used outside this lock (it
    /// guards its own ranges), so threads preparing units in one slab do not wait for each
    /// other.
    mapped: Mutex<HashMap<u32, Arc<SharedSlab>>>,
    /// The slabs' regions and the live units in them: writes are checked here first.
    book: Mutex<SlabBook>,
}

fn channel(e: impl std::fmt::Display) -> Error {
    Error::Channel(e.to_string())
}

impl RemoteExecutor {
    /// Start `program` (a `kiln-executor`, or anything that serves the protocol given
    /// `ARGS... --fd N`) as a child connected over a socket pair. Its standard input, output and
    /// error are ours.
    pub fn spawn(program: &Path, args: &[&str], opts: Options) -> Result<RemoteExecutor> {
        let (mut conn, mut child) = spawn_child(Command::new(program).args(args))
            .map_err(|e| channel(format!("cannot start {}: {e}", program.display())))?;
        let opts = Options {
            attach_stdio: false, // inherited already
            ..opts
        };
        match client_handshake(&mut conn, &opts) {
            Ok(h) => Self::from_handshake(conn, Some(child), h, &opts),
            Err(e) => {
                // Say how the executor ended, if it did, rather than what the channel saw.
                conn.shutdown();
                Err(match reap_child(&mut child) {
                    ExitReport::Unknown => e,
                    r => r.to_error(),
                })
            }
        }
    }

    /// Connect to a listening `kiln-executor`.
    pub fn connect(endpoint: &Endpoint, opts: Options) -> Result<RemoteExecutor> {
        let mut conn = match endpoint {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p)
                    .map_err(|e| channel(format!("cannot connect to {}: {e}", p.display())))?;
                // Only an executor run by us (or root) gets our code: anyone can put a socket
                // at a path in a shared directory.
                let peer = rustix::net::sockopt::socket_peercred(&s).map_err(channel)?;
                let me = rustix::process::getuid();
                if peer.uid != me && !peer.uid.is_root() {
                    return Err(channel(format!(
                        "{} belongs to a process of user {}, not ours",
                        p.display(),
                        peer.uid.as_raw()
                    )));
                }
                Conn::from(s)
            }
            Endpoint::Tcp(a) => Conn::from(
                std::net::TcpStream::connect(a)
                    .map_err(|e| channel(format!("cannot connect to {a}: {e}")))?,
            ),
        };
        let h = client_handshake(&mut conn, &opts)?;
        Self::from_handshake(conn, None, h, &opts)
    }

    fn from_handshake(
        conn: Conn,
        child: Option<Child>,
        h: Handshake,
        opts: &Options,
    ) -> Result<RemoteExecutor> {
        let shared = match opts.memory {
            MemoryMode::Auto => h.shared_memory,
            MemoryMode::Copy => false,
            MemoryMode::Shared if h.shared_memory => true,
            MemoryMode::Shared => {
                return Err(channel(
                    "this executor cannot share memory (it is not reached over a Unix socket); use copy",
                ))
            }
        };
        Ok(RemoteExecutor {
            info: h.info,
            bootstrap: h.bootstrap,
            shared,
            slabs: h.slabs,
            mux: Arc::new(Mux::new(conn, child)?),
            mapped: Mutex::new(HashMap::new()),
            book: Mutex::new(SlabBook::default()),
        })
    }

    /// Whether slab memory is shared with the executor (rather than copied).
    pub fn shares_memory(&self) -> bool {
        self.shared
    }

    /// The executor's process id.
    pub fn pid(&self) -> u32 {
        self.info.pid
    }

    /// Send `call` (with any pending slab writes) and wait for its reply.
    fn call(&self, call: Call) -> Result<Reply> {
        self.mux.call(call)
    }

    /// Ask the executor to leave with `status` as a native program would (exit handlers, the
    /// units' finalizers, stdio flushed) and wait until it has; how it ended.
    pub fn exit(&self, status: i32) -> Result<ExitReport> {
        self.mux.exit(status)
    }

    fn queue(&self, slab: SlabId, writes: &[SlabWrite<'_>]) {
        self.mux.queue(writes.iter().map(|w| to_wire(slab, w)));
    }

    fn with_mapped<R>(&self, slab: SlabId, f: impl FnOnce(&SharedSlab) -> Result<R>) -> Result<R> {
        let m = self
            .mapped
            .lock()
            .map_err(|_| channel("the slab table's lock is poisoned"))?
            .get(&slab.0)
            .cloned()
            .ok_or(Error::UnknownSlab(slab.0))?;
        f(&m)
    }

    fn book(&self) -> Result<std::sync::MutexGuard<'_, SlabBook>> {
        self.book
            .lock()
            .map_err(|_| channel("the slab book's lock is poisoned"))
    }

    /// The ranges a move touches (each segment's old range and its destination, as one range
    /// where they overlap), by the mapped slab that holds the old range. Ranges in no slab of
    /// ours are left to the executor to refuse.
    fn mapped_move_ranges(&self, moves: &[SegmentMove]) -> Result<Vec<SlabRanges>> {
        let mut by_slab: HashMap<u32, Vec<(ExecutorAddr, u64)>> = HashMap::new();
        {
            let book = self.book()?;
            for m in moves {
                let Some(slab) = book.slab_holding(m.from, m.len) else {
                    continue;
                };
                let (from_end, to_end) = (m.from.0 + m.len, m.to.0.saturating_add(m.len));
                let ranges = by_slab.entry(slab.0).or_default();
                if m.to.0 < from_end && m.from.0 < to_end {
                    let start = m.from.0.min(m.to.0);
                    ranges.push((ExecutorAddr(start), from_end.max(to_end) - start));
                } else {
                    ranges.push((m.from, m.len));
                    ranges.push((m.to, m.len));
                }
            }
        }
        let mapped = self
            .mapped
            .lock()
            .map_err(|_| channel("the slab table's lock is poisoned"))?;
        Ok(by_slab
            .into_iter()
            .filter_map(|(slab, ranges)| Some((mapped.get(&slab)?.clone(), ranges)))
            .collect())
    }

    /// Every range inside one region of `slab`, over no live unit.
    fn check_writes(
        &self,
        slab: SlabId,
        ranges: impl Iterator<Item = (ExecutorAddr, u64)>,
    ) -> Result<()> {
        let book = self.book()?;
        for (a, n) in ranges {
            book.check_write(slab, a, n)?;
        }
        Ok(())
    }
}

/// Ranges of one mapped slab.
type SlabRanges = (Arc<SharedSlab>, Vec<(ExecutorAddr, u64)>);

/// A slab write as it travels.
fn to_wire(slab: SlabId, w: &SlabWrite<'_>) -> WireWrite {
    match *w {
        SlabWrite::Bytes(addr, b) => WireWrite::Bytes {
            slab,
            addr,
            bytes: b.to_vec(),
        },
        SlabWrite::Fill(addr, len, byte) => WireWrite::Fill {
            slab,
            addr,
            len,
            byte,
        },
    }
}

/// The executor range a write covers.
fn range_of(w: &SlabWrite<'_>) -> (ExecutorAddr, u64) {
    match *w {
        SlabWrite::Bytes(a, b) => (a, b.len() as u64),
        SlabWrite::Fill(a, n, _) => (a, n),
    }
}

/// Start `cmd` with `--fd N` appended, N its end of a new socket pair; our end as a connection.
pub fn spawn_child(cmd: &mut Command) -> std::io::Result<(Conn, Child)> {
    let (ours, theirs) = UnixStream::pair()?;
    // Inheritable in the child only: a child another thread starts at the same moment must not
    // hold our channel open (we would not see this executor die).
    let n = kiln_target::process::pass_fd(cmd, theirs.as_fd());
    let child = cmd.arg("--fd").arg(n.to_string()).spawn();
    drop(theirs);
    Ok((Conn::from(ours), child?))
}

/// The controller side of the handshake on a fresh connection: check the executor's hello,
/// prove we hold the token if it asks, attach our standard I/O if wanted, and return what the
/// executor told us about itself.
pub fn client_handshake(conn: &mut Conn, opts: &Options) -> Result<Handshake> {
    conn.set_read_timeout(Some(crate::server::HANDSHAKE_TIMEOUT))
        .map_err(channel)?;
    let hello: ServerHello = conn
        .recv(MAX_HELLO_FRAME)
        .and_then(|f| f.decode())
        .map_err(|e| channel(format!("reading the executor's hello: {e}")))?;
    if hello.magic != MAGIC {
        return Err(channel("the peer is not a kiln executor"));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(channel(format!(
            "the executor speaks protocol version {}, this controller {PROTOCOL_VERSION}",
            hello.version
        )));
    }
    let cn = nonce().map_err(channel)?;
    let mac = match (&opts.token, hello.auth) {
        (Some(t), true) => Some(t.client_proof(&hello.nonce, &cn)),
        (None, true) => {
            return Err(channel(format!(
                "the executor requires a token (set {} or pass a token file)",
                crate::auth::TOKEN_ENV
            )))
        }
        // A real TCP listener always authenticates (it refuses to start without a token): one
        // that does not is not ours, and must not get our code.
        (_, false) if !conn.is_unix() => {
            return Err(channel(
                "the executor at the other end of this TCP connection does not authenticate; \
                 refusing to send it code",
            ))
        }
        (_, false) => None,
    };
    let attach = opts.attach_stdio && conn.is_unix();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let fds = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    conn.send(
        &ClientHello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            nonce: cn,
            mac,
            stdio_attached: attach,
        },
        if attach { &fds } else { &[] },
    )
    .map_err(|e| channel(format!("sending hello: {e}")))?;
    let welcome: Welcome = conn
        .recv(MAX_HELLO_FRAME * 4)
        .and_then(|f| f.decode())
        .map_err(|e| channel(format!("reading the executor's welcome: {e}")))?;
    let _ = conn.set_read_timeout(None);
    match welcome {
        Welcome::Refused(why) => Err(channel(format!("the executor refused: {why}"))),
        Welcome::Accepted { handshake, mac } => {
            if let (Some(t), true) = (&opts.token, hello.auth) {
                let ok = mac.is_some_and(|m| t.verify_server(&hello.nonce, &cn, &m));
                if !ok {
                    return Err(channel("the executor could not prove it holds the token"));
                }
            }
            Ok(handshake)
        }
    }
}

impl Drop for RemoteExecutor {
    fn drop(&mut self) {
        // The executor sees the hangup and leaves without running anything further.
        self.mux.close();
    }
}

fn unexpected(v: Value) -> Error {
    channel(format!("unexpected reply {v:?}"))
}

impl Executor for RemoteExecutor {
    fn info(&self) -> &TargetInfo {
        &self.info
    }

    fn reserve(&self, size: u64, placement: Placement) -> Result<ExecutorAddr> {
        match self.call(Call::Reserve { size, placement })?.0 {
            Value::Addr(a) => Ok(a),
            v => Err(unexpected(v)),
        }
    }

    fn release(&self, addr: ExecutorAddr, size: u64) -> Result<()> {
        self.call(Call::Release { addr, size }).map(drop)
    }

    fn finalize(&self, request: FinalizeRequest) -> Result<AllocId> {
        let in_slab: Vec<(u64, u64)> = if request.in_slab {
            request
                .segments
                .iter()
                .map(|s| {
                    (
                        s.addr.0,
                        (s.content.len() as u64).saturating_add(s.zero_fill),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let registered = if request.in_slab {
            registered_ranges(&request.actions)
        } else {
            Vec::new()
        };
        match self.call(Call::Finalize(request))?.0 {
            Value::Alloc(a) => {
                self.book()?.add_unit(a, &in_slab, &registered);
                Ok(a)
            }
            v => Err(unexpected(v)),
        }
    }

    fn deallocate(&self, id: AllocId) -> Result<()> {
        let r = self.call(Call::Deallocate(id)).map(drop);
        // Also on an error: the executor finishes a deallocation whose actions failed, and
        // refuses one it cannot do (stale id, code running) before touching anything; keeping
        // the unit in the book would only refuse writes the executor would allow.
        self.book()?.remove_unit(id);
        r
    }

    fn run_initializers(&self, id: AllocId) -> Result<()> {
        self.call(Call::RunInitializers(id)).map(drop)
    }

    fn load_library(&self, path: &Path) -> Result<LibraryId> {
        let p = path
            .to_str()
            .ok_or_else(|| Error::InvalidRequest(format!("{} is not UTF-8", path.display())))?;
        match self.call(Call::LoadLibrary(p.into()))?.0 {
            Value::Library(l) => Ok(l),
            v => Err(unexpected(v)),
        }
    }

    fn lookup(
        &self,
        names: &[&[u8]],
        libraries: &[LibraryId],
        process: bool,
    ) -> Result<Vec<Option<ExecutorAddr>>> {
        let call = Call::Lookup {
            names: names
                .iter()
                .map(|n| serde_bytes::ByteBuf::from(n.to_vec()))
                .collect(),
            libraries: libraries.to_vec(),
            process,
        };
        match self.call(call)?.0 {
            Value::Lookup(v) if v.len() == names.len() => Ok(v),
            v => Err(unexpected(v)),
        }
    }

    fn runtime_symbols(&self) -> &[(String, ExecutorAddr)] {
        &self.bootstrap
    }

    fn allocate_static_tls(&self, image: &[u8], block_size: u64, align: u64) -> Result<i64> {
        let call = Call::AllocateStaticTls {
            image: image.to_vec(),
            block_size,
            align,
        };
        match self.call(call)?.0 {
            Value::Offset(o) => Ok(o),
            v => Err(unexpected(v)),
        }
    }

    fn supports_slabs(&self) -> bool {
        self.slabs
    }

    fn create_slab(&self, sizes: [u64; 3], placement: Placement) -> Result<SlabInfo> {
        let call = Call::CreateSlab {
            sizes,
            placement,
            shared: self.shared,
        };
        let (v, mut fds) = self.call(call)?;
        let Value::Slab(info) = v else {
            return Err(unexpected(v));
        };
        if self.shared {
            let fd = fds
                .pop()
                .filter(|_| fds.is_empty())
                .ok_or_else(|| channel("the shared slab came without its memory descriptor"))?;
            let m = SharedSlab::map(fd, info)?;
            self.mapped
                .lock()
                .map_err(|_| channel("the slab table's lock is poisoned"))?
                .insert(info.id.0, Arc::new(m));
        }
        self.book()?.add_slab(info);
        Ok(info)
    }

    fn write_slab(&self, slab: SlabId, writes: &[SlabWrite<'_>]) -> Result<()> {
        self.check_writes(slab, writes.iter().map(range_of))?;
        if self.shared {
            self.with_mapped(slab, |m| m.write(writes))
        } else {
            self.queue(slab, writes);
            Ok(())
        }
    }

    fn with_slab_memory(
        &self,
        slab: SlabId,
        ranges: &[(ExecutorAddr, u64)],
        f: &mut dyn FnMut(&mut [&mut [u8]]),
    ) -> Result<()> {
        self.check_writes(slab, ranges.iter().copied())?;
        if self.shared {
            return self.with_mapped(slab, |m| m.with_memory(ranges, f));
        }
        kiln_target::slab_memory_by_copy(self, slab, ranges, f)
    }

    fn patch(&self, slab: SlabId, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        if self.shared {
            return self.with_mapped(slab, |m| m.patch(addr, bytes));
        }
        let call = Call::Patch {
            slab,
            addr,
            bytes: bytes.to_vec(),
        };
        self.call(call).map(drop)
    }

    /// Shared mode writes into this process's mapping (aligned units atomically), then asks
    /// the executor to serialize its cores if code changed; copy mode sends the writes. The
    /// book refuses writes outside the slab's regions and over registered unwind info or TLS
    /// images at once; the executor checks again in copy mode.
    fn write_live(&self, slab: SlabId, writes: &[SlabWrite<'_>]) -> Result<()> {
        let ranges: Vec<(ExecutorAddr, u64)> = writes.iter().map(range_of).collect();
        {
            let book = self.book()?;
            for &(a, n) in &ranges {
                book.check_live_write(slab, a, n)?;
            }
        }
        if !self.shared {
            let wire = writes.iter().map(|w| to_wire(slab, w)).collect();
            return self.call(Call::WriteLive(wire)).map(drop);
        }
        let written = self.with_mapped(slab, |m| m.write_live(writes));
        let code: Vec<(ExecutorAddr, u64)> = {
            let book = self.book()?;
            ranges
                .into_iter()
                .filter(|&(a, n)| n > 0 && book.in_code(slab, a))
                .collect()
        };
        // Also after an error: what was written must not run stale.
        let synced = if code.is_empty() {
            Ok(())
        } else {
            self.call(Call::SyncCode { slab, ranges: code }).map(drop)
        };
        written.and(synced)
    }

    /// Shared mode reads slab memory from this process's mapping; anything else (and copy mode)
    /// asks the executor, which checks the range against its table.
    fn read_memory(&self, addr: ExecutorAddr, len: u64) -> Result<Vec<u8>> {
        if len > MAX_READ {
            return Err(Error::InvalidRequest(format!(
                "a read of {len:#x} bytes (at most {MAX_READ:#x} at once)"
            )));
        }
        if self.shared {
            if let Some(slab) = self.book()?.slab_holding(addr, len) {
                return self.with_mapped(slab, |m| m.read(addr, len));
            }
        }
        match self.call(Call::ReadMemory { addr, len })?.0 {
            Value::Bytes(b) if b.len() as u64 == len => Ok(b),
            v => Err(unexpected(v)),
        }
    }

    /// The executor moves the bytes and checks everything; meanwhile, in shared mode, the old
    /// and new ranges are claimed in this process's mappings so that no write of ours (nor a
    /// patch) lands in them while the executor copies.
    fn move_allocation(
        &self,
        id: AllocId,
        moves: &[SegmentMove],
        actions: Vec<ActionPair>,
    ) -> Result<()> {
        let registered = registered_ranges(&actions);
        let mapped = if self.shared {
            self.mapped_move_ranges(moves)?
        } else {
            Vec::new()
        };
        let _claims = mapped
            .iter()
            .map(|(m, ranges)| m.claim_ranges(ranges))
            .collect::<Result<Vec<SlabClaim<'_>>>>()?;
        let call = Call::MoveAllocation {
            id,
            moves: moves.to_vec(),
            actions,
        };
        let Value::Moved { error } = self.call(call)?.0 else {
            return Err(channel("unexpected reply to a move"));
        };
        let mut book = self.book()?;
        book.move_unit(id, moves);
        match error {
            None => {
                book.set_registered(id, &registered);
                Ok(())
            }
            Some(why) => {
                book.set_registered(id, &[]);
                Err(Error::AfterMove {
                    id: id.0,
                    why: why.into(),
                })
            }
        }
    }

    /// The executor refuses while units live in the slab; only once it has released it does
    /// the controller drop its mapping.
    fn release_slab(&self, slab: SlabId) -> Result<()> {
        self.call(Call::ReleaseSlab(slab))?;
        if let Ok(mut m) = self.mapped.lock() {
            m.remove(&slab.0);
        }
        self.book()?.remove_slab(slab);
        Ok(())
    }

    fn run_main(&self, entry: ExecutorAddr, args: &[String]) -> Result<i32> {
        let call = Call::RunMain {
            entry,
            args: args.to_vec(),
        };
        match self.call(call)?.0 {
            Value::Status(s) => Ok(s),
            v => Err(unexpected(v)),
        }
    }

    fn call_void(&self, f: ExecutorAddr) -> Result<()> {
        self.call(Call::CallVoid(f)).map(drop)
    }

    fn call(&self, f: ExecutorAddr, args: &[u64]) -> Result<u64> {
        let call = Call::CallWithArgs {
            f,
            args: args.to_vec(),
        };
        match RemoteExecutor::call(self, call)?.0 {
            Value::Word(w) => Ok(w),
            v => Err(unexpected(v)),
        }
    }

    /// The key is declared in the executor's registry; `handler` runs here, in a thread
    /// waiting on this executor, when the executor first needs the function (see
    /// [`RemoteExecutor`]).
    fn declare_lazy(&self, handler: LazyHandler) -> Result<StubKey> {
        match RemoteExecutor::call(self, Call::DeclareLazy)?.0 {
            Value::Key(k) => {
                self.mux.add_lazy(k, handler);
                Ok(k)
            }
            v => Err(unexpected(v)),
        }
    }

    fn forget_lazy(&self, key: StubKey) -> Result<()> {
        RemoteExecutor::call(self, Call::ForgetLazy(key))?;
        self.mux.forget_lazy(key);
        Ok(())
    }

    /// Runs here, when a handler fails; its answer travels to the executor with the failure.
    /// Without one (or with `None` from it), the executor process aborts with the handler's
    /// message on its standard error.
    fn set_lazy_error_handler(&self, handler: Option<LazyErrorHandler>) -> Result<()> {
        self.mux.set_error_handler(handler);
        Ok(())
    }
}
