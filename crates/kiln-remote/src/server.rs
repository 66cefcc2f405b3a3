//! The executor side: serve one controller over one connection with the same target runtime
//! that runs code in process ([`InProcessExecutor`]).

use crate::auth::{nonce, Token};
use crate::error::HandshakeError;
use crate::proto::*;
use crate::wire::{Conn, WireError, MAX_FRAME, MAX_HELLO_FRAME};
use kiln_target::{
    Executor, ExecutorAddr, InProcessExecutor, LazyHandler, LazyRequest, SlabId, SlabWrite,
};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

/// How long a peer may take to say hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the executor side of a handshake learned.
pub struct Greeted {
    pub hello: ClientHello,
    pub nonce: [u8; 32],
    /// Standard input, output and error the controller attached (when it did).
    pub stdio: Vec<OwnedFd>,
}

/// The executor side of the handshake, up to (not including) the `Welcome`: send our hello,
/// read the controller's, check its version and (with a token) its proof. On failure a
/// `Welcome::Refused` has been sent (when possible) and the connection should be dropped;
/// nothing else is read from it.
pub fn greet(conn: &mut Conn, token: Option<&Token>) -> Result<Greeted, HandshakeError> {
    let sn = nonce().map_err(HandshakeError::Nonce)?;
    conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(HandshakeError::SetTimeout)?;
    conn.send(
        &ServerHello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            auth: token.is_some(),
            nonce: sn,
        },
        &[],
    )
    .map_err(HandshakeError::SendHello)?;
    let frame = conn
        .recv(MAX_HELLO_FRAME)
        .map_err(HandshakeError::ReadHello)?;
    // The peer is told why, in the error's words.
    let refuse = |conn: &mut Conn, why: HandshakeError| {
        let _ = conn.send(&Welcome::Refused(why.to_string()), &[]);
        why
    };
    let hello: ClientHello = match frame.decode() {
        Ok(h) => h,
        Err(e) => return Err(refuse(conn, HandshakeError::BadHello(e))),
    };
    if hello.magic != MAGIC {
        return Err(refuse(conn, HandshakeError::NotKiln));
    }
    if hello.version != PROTOCOL_VERSION {
        let theirs = hello.version;
        return Err(refuse(conn, HandshakeError::Version { theirs }));
    }
    if let Some(t) = token {
        let ok = hello
            .mac
            .is_some_and(|m| t.verify_client(&sn, &hello.nonce, &m));
        if !ok {
            return Err(refuse(conn, HandshakeError::AuthenticationFailed));
        }
    }
    let stdio = if hello.stdio_attached && frame.fds.len() == 3 {
        frame.fds
    } else {
        Vec::new()
    };
    Ok(Greeted {
        hello,
        nonce: sn,
        stdio,
    })
}

/// Serve one controller on `conn` until it asks us to exit or goes away; never returns. The
/// connection is trusted (a socket pair from the parent, or one a listener authenticated).
pub fn serve(mut conn: Conn) -> ! {
    let ex = InProcessExecutor::new();
    // A socket pair from our parent: no token, and its standard I/O is already ours.
    if let Err(e) = greet(&mut conn, None) {
        eprintln!("kiln-executor: {e}");
        kiln_target::process::exit_now(2)
    }
    let _ = conn.set_read_timeout(None);
    let handshake = Handshake {
        info: ex.info().clone(),
        bootstrap: ex.runtime_symbols().to_vec(),
        shared_memory: conn.is_unix(),
        forwards_output: false,
        slabs: ex.supports_slabs(),
    };
    if conn
        .send(
            &Welcome::Accepted {
                handshake,
                mac: None,
            },
            &[],
        )
        .is_err()
    {
        kiln_target::process::exit_now(1)
    }
    watch_for_hangup(&conn);
    let Ok(reader) = conn.try_clone() else {
        kiln_target::process::exit_now(1)
    };
    // It serves for the rest of the process, and lazy functions' handlers refer to it.
    let link: &'static Link = Box::leak(Box::new(Link {
        ex,
        out: Mutex::new(conn),
        inbox: Mutex::new(Inbox {
            reader: Some(reader),
            ..Inbox::default()
        }),
        wake: Condvar::new(),
        next_resolve: AtomicU64::new(1),
        serving_thread: std::thread::current().id(),
    }));
    loop {
        match link.next(None) {
            Event::Request(req, written) => link.serve(*req, written),
            // The controller is gone: run nothing further.
            Event::Closed => kiln_target::process::exit_now(0),
            Event::Answer(_) => unreachable!("no answer is awaited here"),
        }
    }
}

/// The executor's end of the connection, shared by the thread that serves the controller and
/// the threads of JIT'd code that wait for a lazy function's resolution.
///
/// Nobody reads the connection on their own: a thread that waits (for the next request, or for
/// its resolution) takes the reading turn when no other thread holds it, and files what it reads
/// for the others. Who serves what:
/// - a call that runs code and that the handler of resolution R made ([`Call::ForResolution`]):
///   the thread waiting for R, which is where the code would run in process;
/// - any other call that runs code: the serving thread (the one that started `serve`), as
///   without lazy functions;
/// - the rest (links: reserve, finalize, writes, lookups, ...): any waiting thread, so that a
///   handler's links are served while the serving thread runs the code that needs them.
struct Link {
    ex: InProcessExecutor,
    out: Mutex<Conn>,
    inbox: Mutex<Inbox>,
    wake: Condvar,
    next_resolve: AtomicU64,
    serving_thread: ThreadId,
}

thread_local! {
    /// The resolutions this thread waits for, innermost last.
    static WAITING: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Default)]
struct Inbox {
    /// The reading end; `None` while a thread reads from it.
    reader: Option<Conn>,
    /// Requests read and not yet taken, in arrival order.
    requests: VecDeque<Queued>,
    /// Resolutions asked for and awaited: `None` until the answer arrives.
    answers: HashMap<u64, Option<Resolution>>,
    closed: bool,
}

/// A request read, with the outcome of its slab writes (applied as it was read, so that writes
/// and calls keep the order the controller sent them in).
struct Queued {
    req: Box<Request>,
    written: kiln_target::Result<()>,
    /// The resolution whose handler made it, for a call that runs code.
    made_for: Option<u64>,
}

enum Event {
    Request(Box<Request>, kiln_target::Result<()>),
    Answer(Resolution),
    Closed,
}

enum Incoming {
    Request(Queued),
    Answer(u64, Resolution),
    Closed,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link {
    /// The next thing for this thread to do: the answer to resolution `awaiting` when it has
    /// come, else a request this thread may serve, else the end of the connection.
    fn next(&self, awaiting: Option<u64>) -> Event {
        let serving = std::thread::current().id() == self.serving_thread;
        let mine = WAITING.with(|w| w.borrow().clone());
        let mut inbox = lock(&self.inbox);
        loop {
            if let Some(id) = awaiting {
                if let Some(Some(_)) = inbox.answers.get(&id) {
                    if let Some(Some(a)) = inbox.answers.remove(&id) {
                        return Event::Answer(a);
                    }
                }
            }
            let awaited = |r: &u64| matches!(inbox.answers.get(r), Some(None));
            let ours = inbox.requests.iter().position(|q| match q.made_for {
                Some(r) if awaited(&r) => mine.contains(&r),
                _ => serving || !q.req.call.runs_code(),
            });
            if let Some(q) = ours.and_then(|i| inbox.requests.remove(i)) {
                return Event::Request(q.req, q.written);
            }
            if inbox.closed {
                return Event::Closed;
            }
            if let Some(mut conn) = inbox.reader.take() {
                drop(inbox);
                let incoming = self.read(&mut conn);
                inbox = lock(&self.inbox);
                inbox.reader = Some(conn);
                match incoming {
                    Incoming::Request(q) => inbox.requests.push_back(q),
                    Incoming::Answer(id, a) => match inbox.answers.get_mut(&id) {
                        Some(slot @ None) => *slot = Some(a),
                        _ => {
                            drop(inbox);
                            self.fail(format!(
                                "an answer to resolution {id}, which is not awaited"
                            ))
                        }
                    },
                    Incoming::Closed => inbox.closed = true,
                }
                self.wake.notify_all();
                continue;
            }
            inbox = self.wake.wait(inbox).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Read one frame; a request's slab writes are applied here, in arrival order.
    fn read(&self, conn: &mut Conn) -> Incoming {
        let frame = match conn.recv(MAX_FRAME) {
            Ok(f) => f,
            Err(WireError::Closed) => return Incoming::Closed,
            Err(e) => self.fail(format!("{e}")),
        };
        let mut req: Request = match frame.decode() {
            Ok(r) => r,
            Err(e) => self.fail(format!("{e}")),
        };
        let written = apply_writes(&self.ex, &req.writes);
        let made_for = match req.call {
            Call::Resolved {
                resolve,
                resolution,
            } => {
                let resolution = match written {
                    Ok(()) => resolution,
                    Err(e) => Resolution::Failed {
                        message: format!("the slab writes sent with the answer failed: {e}"),
                        continue_at: None,
                    },
                };
                return Incoming::Answer(resolve, resolution);
            }
            Call::ForResolution { resolve, call } => {
                req.call = call.into();
                Some(resolve)
            }
            _ => None,
        };
        Incoming::Request(Queued {
            req: Box::new(req),
            written,
            made_for,
        })
    }

    /// Serve one request: run it and send the reply.
    fn serve(&'static self, req: Request, written: kiln_target::Result<()>) {
        if let Call::Exit(status) = req.call {
            // As a native program leaves: exit handlers (JIT'd ones, then kiln's, which run the
            // units' finalizers), then stdio is flushed.
            std::process::exit(status)
        }
        let (result, fd) = match written.and_then(|()| self.dispatch(req.call)) {
            Ok((v, fd)) => (Ok(v), fd),
            Err(e) => (Err(e.to_string()), None),
        };
        let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
        let reply = Message::Reply { id: req.id, result };
        if lock(&self.out).send(&reply, &fds).is_err() {
            kiln_target::process::exit_now(1)
        }
    }

    fn dispatch(&'static self, call: Call) -> kiln_target::Result<(Value, Option<OwnedFd>)> {
        match call {
            Call::DeclareLazy => {
                let handler: LazyHandler = Arc::new(move |request| self.resolve(request));
                Ok((Value::Key(self.ex.declare_lazy(handler)?), None))
            }
            Call::ForgetLazy(key) => {
                self.ex.forget_lazy(key)?;
                Ok((Value::Unit, None))
            }
            call => dispatch(&self.ex, call),
        }
    }

    /// A lazy function's handler in the executor: ask the controller, serve what it asks
    /// meanwhile, and continue where it says. A failure without a place to continue goes back
    /// to the registry as an error (which aborts, unless this process set an error handler).
    /// The error is the controller's handler's message, as [`LazyHandler`] carries it.
    fn resolve(&'static self, request: LazyRequest) -> Result<ExecutorAddr, String> {
        let id = self.next_resolve.fetch_add(1, Ordering::Relaxed);
        lock(&self.inbox).answers.insert(id, None);
        WAITING.with(|w| w.borrow_mut().push(id));
        if lock(&self.out)
            .send(&Message::Resolve { id, request }, &[])
            .is_err()
        {
            kiln_target::process::exit_now(1)
        }
        let answer = loop {
            match self.next(Some(id)) {
                Event::Answer(a) => break a,
                Event::Request(req, written) => self.serve(*req, written),
                // The controller is gone: nobody can say where to go, and nothing further runs.
                Event::Closed => kiln_target::process::exit_now(0),
            }
        };
        WAITING.with(|w| w.borrow_mut().pop());
        match answer {
            Resolution::Resolved(a)
            | Resolution::Failed {
                continue_at: Some(a),
                ..
            } => Ok(a),
            Resolution::Failed { message, .. } => Err(message),
        }
    }

    /// Tell the controller why we stop listening to it, and stop.
    fn fail(&self, why: String) -> ! {
        eprintln!("kiln-executor: closing the connection: {why}");
        let _ = lock(&self.out).send(&Message::ProtocolError(why), &[]);
        kiln_target::process::exit_now(3)
    }
}

/// While JIT'd code runs, nobody reads the connection: a thread watches it, and if the
/// controller hangs up (closes the connection, or its process dies), the process leaves at once,
/// running nothing further. A half-close (the controller only stops writing) is not a hang-up:
/// pending replies are still sent, and the read loop sees the end of the stream.
fn watch_for_hangup(conn: &Conn) {
    let Ok(fd) = conn.fd().try_clone_to_owned() else {
        return;
    };
    std::thread::spawn(move || loop {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [PollFd::new(&fd, PollFlags::empty())];
        match poll(&mut fds, None) {
            Ok(_) => {
                let r = fds[0].revents();
                if r.intersects(PollFlags::HUP | PollFlags::ERR) {
                    kiln_target::process::exit_now(0)
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
    });
}

fn apply_writes(ex: &InProcessExecutor, writes: &[WireWrite]) -> kiln_target::Result<()> {
    by_slab(writes, |slab, batch| ex.write_slab(slab, batch))
}

/// Hand `writes` to `apply`, consecutive writes to one slab in one call.
fn by_slab(
    writes: &[WireWrite],
    mut apply: impl FnMut(SlabId, &[SlabWrite<'_>]) -> kiln_target::Result<()>,
) -> kiln_target::Result<()> {
    let mut i = 0;
    while i < writes.len() {
        let slab = writes[i].slab();
        let n = writes[i..].iter().take_while(|w| w.slab() == slab).count();
        let batch: Vec<SlabWrite<'_>> = writes[i..i + n]
            .iter()
            .map(WireWrite::as_slab_write)
            .collect();
        apply(slab, &batch)?;
        i += n;
    }
    Ok(())
}

fn dispatch(ex: &InProcessExecutor, call: Call) -> kiln_target::Result<(Value, Option<OwnedFd>)> {
    let v = match call {
        Call::Reserve { size, placement } => Value::Addr(ex.reserve(size, placement)?),
        Call::Release { addr, size } => {
            ex.release(addr, size)?;
            Value::Unit
        }
        Call::Finalize(r) => Value::Alloc(ex.finalize(r)?),
        Call::Deallocate(id) => {
            ex.deallocate(id)?;
            Value::Unit
        }
        Call::RunInitializers(id) => {
            ex.run_initializers(id)?;
            Value::Unit
        }
        Call::LoadLibrary(p) => Value::Library(ex.load_library(std::path::Path::new(&p))?),
        Call::Lookup {
            names,
            libraries,
            process,
        } => {
            let names: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
            Value::Lookup(ex.lookup(&names, &libraries, process)?)
        }
        Call::AllocateStaticTls {
            image,
            block_size,
            align,
        } => Value::Offset(ex.allocate_static_tls(&image, block_size, align)?),
        Call::CreateSlab {
            sizes,
            placement,
            shared,
        } => {
            if shared {
                let (info, fd) = ex.create_shared_slab(sizes, placement)?;
                return Ok((Value::Slab(info), Some(fd)));
            }
            Value::Slab(ex.create_slab(sizes, placement)?)
        }
        Call::Write => Value::Unit,
        Call::Patch { slab, addr, bytes } => {
            ex.patch(slab, addr, &bytes)?;
            Value::Unit
        }
        Call::ReleaseSlab(s) => {
            ex.release_slab(s)?;
            Value::Unit
        }
        Call::RunMain { entry, args } => Value::Status(ex.run_main(entry, &args)?),
        Call::CallVoid(f) => {
            ex.call_void(f)?;
            Value::Unit
        }
        Call::CallWithArgs { f, args } => Value::Word(ex.call(f, &args)?),
        Call::ReadMemory { addr, len } => Value::Bytes(ex.read_memory(addr, len)?),
        Call::WriteLive(writes) => {
            by_slab(&writes, |slab, batch| ex.write_live(slab, batch))?;
            Value::Unit
        }
        Call::SyncCode { slab, ranges } => {
            ex.sync_code(slab, &ranges)?;
            Value::Unit
        }
        Call::MoveAllocation { id, moves, actions } => {
            match ex.move_allocation(id, &moves, actions) {
                Ok(()) => Value::Moved { error: None },
                Err(kiln_target::Error::AfterMove { why, .. }) => Value::Moved {
                    error: Some(why.into()),
                },
                Err(e) => return Err(e),
            }
        }
        // Handled before dispatch: by `Link::serve`, and (lazy functions) by `Link::dispatch`
        // and `Link::read`.
        Call::Exit(_)
        | Call::DeclareLazy
        | Call::ForgetLazy(_)
        | Call::Resolved { .. }
        | Call::ForResolution { .. } => {
            return Err(kiln_target::Error::InvalidRequest(
                "not a call dispatched to the executor".into(),
            ))
        }
    };
    Ok((v, None))
}
