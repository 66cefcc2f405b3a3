//! The controller's end of the connection, shared by every thread that talks to the executor.
//!
//! Requests from any number of threads go out on one connection, each with its own id; replies
//! are routed back by id. Nobody reads the connection on their own: a thread waiting for a reply
//! takes the reading turn when no other thread holds it, reads one frame, files it where it
//! belongs and wakes the others (so a lone caller reads its own reply, with no hand-off).
//!
//! The executor may also ask: [`Message::Resolve`], when its code calls a lazy function for the
//! first time. The thread that reads the question runs that key's handler (outside every lock
//! here) and sends the answer, if it is waiting for a request that runs code (`run_main`,
//! `call`, initializers, ...: the code that needs the function, usually). A thread waiting for
//! anything else hands the handler to a new thread instead: it may hold locks of its own caller
//! (a session's slab lock while a slab is created) that the handler needs, and the code needing
//! the function may be what its own request waits for (an IFUNC resolver in a finalize).
//!
//! A handler's own requests (link the function, run its initializers) are ordinary requests,
//! whose replies come back on the same connection; while it waits for one that runs code, the
//! same thread may run another key's handler (code it runs needing a second lazy function).

use crate::proto::*;
use crate::wire::{Conn, WireError, MAX_FRAME};
use kiln_target::{
    Error, ExecutorAddr, LazyErrorHandler, LazyHandler, LazyRequest, Result, StubKey,
};
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

pub(crate) type Reply = (Value, Vec<OwnedFd>);

thread_local! {
    /// The resolutions whose handlers this thread runs, innermost last: (connection, id).
    static HANDLING: std::cell::RefCell<Vec<(usize, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn channel(e: impl std::fmt::Display) -> Error {
    Error::Channel(e.to_string())
}

/// Why the connection is over; every waiting and later call gets it as its error.
#[derive(Clone, Debug)]
enum Ended {
    Exited(ExitReport),
    Channel(String),
}

impl Ended {
    fn to_error(&self) -> Error {
        match self {
            Ended::Exited(r) => r.to_error(),
            Ended::Channel(why) => channel(why),
        }
    }
}

struct Sender {
    conn: Conn,
    next_id: u64,
    /// Copy mode: slab writes waiting to ride along with the next request.
    pending: Vec<WireWrite>,
}

#[derive(Default)]
struct Inbox {
    /// The reading end; `None` while a thread reads from it.
    reader: Option<Conn>,
    /// Requests sent and not answered: `None` until the reply arrives. An error is the
    /// executor's message as it came over the wire (`Reply::result`); it becomes
    /// `kiln_target::Error::Remote`.
    replies: HashMap<u64, Option<std::result::Result<Reply, String>>>,
    ended: Option<Ended>,
}

/// A lazy function declared through this connection.
enum Lazy {
    Declared(LazyHandler),
    Resolving,
    Done(Resolution),
}

pub(crate) struct Mux {
    send: Mutex<Sender>,
    inbox: Mutex<Inbox>,
    wake: Condvar,
    /// A third handle on the socket, to shut it down without waiting for the other two.
    closer: Conn,
    child: Mutex<Option<Child>>,
    /// Set by [`Mux::exit`]: the executor is leaving on request and may take its time.
    exiting: AtomicBool,
    lazy: Mutex<HashMap<u64, Lazy>>,
    error_handler: RwLock<Option<LazyErrorHandler>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock, and handlers run outside them: a poisoned lock
    // still guards consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mux {
    pub(crate) fn new(conn: Conn, child: Option<Child>) -> Result<Mux> {
        let reader = conn.try_clone().map_err(channel)?;
        let closer = conn.try_clone().map_err(channel)?;
        Ok(Mux {
            send: Mutex::new(Sender {
                conn,
                next_id: 1,
                pending: Vec::new(),
            }),
            inbox: Mutex::new(Inbox {
                reader: Some(reader),
                ..Inbox::default()
            }),
            wake: Condvar::new(),
            closer,
            child: Mutex::new(child),
            exiting: AtomicBool::new(false),
            lazy: Mutex::new(HashMap::new()),
            error_handler: RwLock::new(None),
        })
    }

    /// Send `call` (with any pending slab writes) and wait for its reply.
    pub(crate) fn call(self: &Arc<Self>, call: Call) -> Result<Reply> {
        let runs_code = call.runs_code();
        let call = match self.handling() {
            Some(resolve) => match call.into_code() {
                Ok(code) => Call::ForResolution {
                    resolve,
                    call: code,
                },
                Err(call) => call,
            },
            None => call,
        };
        if let Some(e) = &lock(&self.inbox).ended {
            return Err(e.to_error());
        }
        let id = {
            let mut s = lock(&self.send);
            let id = s.next_id;
            s.next_id += 1;
            // Filed before it is sent: the reply may arrive before this thread reads again.
            lock(&self.inbox).replies.insert(id, None);
            let req = Request {
                id,
                writes: std::mem::take(&mut s.pending),
                call,
            };
            if let Err(e) = s.conn.send(&req, &[]) {
                drop(s);
                return Err(self.gone(e));
            }
            id
        };
        self.pump(runs_code, |inbox| match inbox.replies.get(&id) {
            Some(Some(_)) => match inbox.replies.remove(&id) {
                Some(Some(Ok(reply))) => Some(Ok(reply)),
                Some(Some(Err(e))) => Some(Err(Error::Remote(e))),
                _ => None,
            },
            _ => inbox.ended.as_ref().map(|e| {
                inbox.replies.remove(&id);
                Err(e.to_error())
            }),
        })
    }

    /// Queue slab writes to travel with the next request (copy mode).
    pub(crate) fn queue(&self, writes: impl IntoIterator<Item = WireWrite>) {
        lock(&self.send).pending.extend(writes);
    }

    /// Ask the executor to leave with `status`, and wait until it has (serving what it asks
    /// meanwhile: exit handlers may call lazy functions); how it ended.
    pub(crate) fn exit(self: &Arc<Self>, status: i32) -> Result<ExitReport> {
        self.exiting.store(true, Ordering::SeqCst);
        if lock(&self.inbox).ended.is_none() {
            let mut s = lock(&self.send);
            let req = Request {
                id: 0,
                writes: std::mem::take(&mut s.pending),
                call: Call::Exit(status),
            };
            // If this fails, the connection is over already and the loop below sees it.
            let _ = s.conn.send(&req, &[]);
        }
        let ended = self.pump(true, |inbox| inbox.ended.clone());
        let mut child = lock(&self.child);
        let report = match child.as_mut() {
            // Exit handlers may take their time: wait for them.
            Some(c) => {
                let st = c.wait().map_err(channel)?;
                *child = None;
                ExitReport::from_status(st)
            }
            None => match ended {
                Ended::Exited(r) => r,
                Ended::Channel(_) => ExitReport::Unknown,
            },
        };
        drop(child);
        // What the process did is the answer now, whatever the connection said last.
        lock(&self.inbox).ended = Some(Ended::Exited(report));
        self.wake.notify_all();
        self.closer.shutdown();
        Ok(report)
    }

    /// Close the connection (the executor leaves without running anything further) and reap
    /// the child, if we started one.
    pub(crate) fn close(&self) {
        self.closer.shutdown();
        self.reap();
    }

    // ---- lazy functions ----

    pub(crate) fn add_lazy(&self, key: StubKey, handler: LazyHandler) {
        lock(&self.lazy).insert(key.0, Lazy::Declared(handler));
    }

    pub(crate) fn forget_lazy(&self, key: StubKey) {
        lock(&self.lazy).remove(&key.0);
    }

    pub(crate) fn set_error_handler(&self, handler: Option<LazyErrorHandler>) {
        *self
            .error_handler
            .write()
            .unwrap_or_else(|e| e.into_inner()) = handler;
    }

    /// Run the handler of a key the executor asked about, and send the answer. While it runs,
    /// the calls that run code it makes on this thread are marked as made for this resolution.
    fn answer(&self, resolve: u64, request: LazyRequest) {
        let me = self as *const Mux as usize;
        HANDLING.with(|h| h.borrow_mut().push((me, resolve)));
        let resolution = self.resolve(request);
        HANDLING.with(|h| h.borrow_mut().pop());
        self.send_answer(resolve, resolution);
    }

    /// The resolution whose handler this thread is running for this connection, if any.
    fn handling(&self) -> Option<u64> {
        let me = self as *const Mux as usize;
        HANDLING.with(|h| {
            h.borrow()
                .iter()
                .rev()
                .find(|(m, _)| *m == me)
                .map(|(_, r)| *r)
        })
    }

    fn send_answer(&self, resolve: u64, resolution: Resolution) {
        let mut s = lock(&self.send);
        let req = Request {
            id: 0,
            writes: std::mem::take(&mut s.pending),
            call: Call::Resolved {
                resolve,
                resolution,
            },
        };
        if let Err(e) = s.conn.send(&req, &[]) {
            drop(s);
            self.gone(e);
        }
    }

    /// Where a lazy function continues: its handler's address, or after a failure the error
    /// handler's choice. The handler runs once per key, whatever the executor asks. A failure
    /// is text: the message of `Resolution::Failed`, which travels to the executor and is what
    /// the error handler (`LazyErrorHandler`) is given.
    fn resolve(&self, request: LazyRequest) -> Resolution {
        let key = request.key;
        let handler = {
            let mut lazy = lock(&self.lazy);
            match lazy.get_mut(&key.0) {
                Some(Lazy::Done(r)) => return r.clone(),
                Some(Lazy::Resolving) => Err(format!(
                    "the executor asked for lazy function {} again while it was being resolved",
                    key.0
                )),
                Some(slot) => match std::mem::replace(slot, Lazy::Resolving) {
                    Lazy::Declared(h) => Ok(h),
                    _ => unreachable!("the other states are matched above"),
                },
                None => Err(format!(
                    "no lazy function with key {} was declared through this controller",
                    key.0
                )),
            }
        };
        let outcome = handler.and_then(|h| match catch_unwind(AssertUnwindSafe(|| h(request))) {
            Ok(Ok(a)) if a.is_null() => {
                Err("the controller's handler returned a null address".into())
            }
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(format!("the controller's handler failed: {e}")),
            Err(_) => Err("the controller's handler panicked".into()),
        });
        let resolution = match outcome {
            Ok(a) => Resolution::Resolved(a),
            Err(message) => {
                let continue_at = self.continue_after_failure(key, &message);
                Resolution::Failed {
                    message,
                    continue_at,
                }
            }
        };
        if let Some(slot) = lock(&self.lazy).get_mut(&key.0) {
            if matches!(slot, Lazy::Resolving) {
                *slot = Lazy::Done(resolution.clone());
            }
        }
        resolution
    }

    fn continue_after_failure(&self, key: StubKey, why: &str) -> Option<ExecutorAddr> {
        let handler = self
            .error_handler
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        catch_unwind(AssertUnwindSafe(|| handler(key, why)))
            .ok()
            .flatten()
            .filter(|a| !a.is_null())
    }

    // ---- reading ----

    /// Wait until `done` says so, reading the connection when nobody else is, and answering
    /// the resolutions the executor asks for meanwhile: here if this thread waits for code
    /// (`runs_code`), else in a new thread.
    fn pump<R>(
        self: &Arc<Self>,
        runs_code: bool,
        mut done: impl FnMut(&mut Inbox) -> Option<R>,
    ) -> R {
        let mut inbox = lock(&self.inbox);
        loop {
            if let Some(r) = done(&mut inbox) {
                return r;
            }
            if inbox.ended.is_none() {
                if let Some(mut conn) = inbox.reader.take() {
                    drop(inbox);
                    let frame = conn.recv(MAX_FRAME);
                    lock(&self.inbox).reader = Some(conn);
                    let resolve = self.file(frame);
                    self.wake.notify_all();
                    if let Some((id, request)) = resolve {
                        if runs_code {
                            self.answer(id, request);
                        } else {
                            self.answer_elsewhere(id, request);
                        }
                    }
                    inbox = lock(&self.inbox);
                    continue;
                }
            }
            inbox = self.wake.wait(inbox).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Answer a resolution in a thread of its own.
    fn answer_elsewhere(self: &Arc<Self>, id: u64, request: LazyRequest) {
        let mux = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name(format!("kiln lazy {}", request.key.0))
            .spawn(move || mux.answer(id, request));
        if let Err(e) = started {
            self.send_answer(
                id,
                Resolution::Failed {
                    message: format!("the controller cannot start a thread to resolve it: {e}"),
                    continue_at: None,
                },
            );
        }
    }

    /// Put what arrived where it belongs; a resolution the executor asks for is returned.
    fn file(
        &self,
        frame: std::result::Result<crate::wire::Frame, WireError>,
    ) -> Option<(u64, LazyRequest)> {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                self.gone(e);
                return None;
            }
        };
        let msg: Message = match frame.decode() {
            Ok(m) => m,
            Err(e) => {
                self.broken(format!("from the executor: {e}"));
                return None;
            }
        };
        match msg {
            Message::Reply { id, result } => {
                let mut inbox = lock(&self.inbox);
                match inbox.replies.get_mut(&id) {
                    Some(slot @ None) => *slot = Some(result.map(|v| (v, frame.fds))),
                    _ => {
                        drop(inbox);
                        self.broken(format!("reply to request {id}, which is not awaited"));
                    }
                }
            }
            Message::Resolve { id, request } => return Some((id, request)),
            Message::Output { stream, bytes } => forward_output(stream, &bytes),
            Message::Exited(r) => {
                self.reap();
                self.end(Ended::Exited(r));
            }
            Message::ProtocolError(why) => {
                self.broken(format!("the executor closed the connection: {why}"))
            }
        }
        None
    }

    /// The executor sent something we cannot follow: close the connection.
    fn broken(&self, why: String) {
        self.closer.shutdown();
        self.end(Ended::Channel(why));
    }

    fn end(&self, why: Ended) {
        let mut inbox = lock(&self.inbox);
        if inbox.ended.is_none() {
            inbox.ended = Some(why);
        }
        drop(inbox);
        self.wake.notify_all();
    }

    /// The connection failed: if we started the executor, find out how it ended (it is reaped
    /// either way, within about a second, unless it is exiting on request), and say that
    /// rather than the channel error.
    fn gone(&self, e: impl std::fmt::Display) -> Error {
        self.closer.shutdown();
        let report = if self.exiting.load(Ordering::SeqCst) {
            None
        } else {
            self.reap()
        };
        let why = match report {
            Some(r) => Ended::Exited(r),
            None => Ended::Channel(format!("lost the connection to the executor: {e}")),
        };
        self.end(why);
        lock(&self.inbox)
            .ended
            .as_ref()
            .map_or_else(|| channel("the connection ended"), Ended::to_error)
    }

    /// Wait for our child (up to a second after its channel closed), killing it if it lingers.
    fn reap(&self) -> Option<ExitReport> {
        let mut child = lock(&self.child);
        let c = child.as_mut()?;
        let report = reap_child(c);
        *child = None;
        Some(report)
    }
}

/// Wait for a child whose channel closed (up to a second), killing it if it lingers.
pub(crate) fn reap_child(child: &mut Child) -> ExitReport {
    let deadline = Instant::now() + Duration::from_secs(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                break child.wait().ok();
            }
            Err(_) => break None,
        }
    };
    status.map_or(ExitReport::Unknown, ExitReport::from_status)
}

fn forward_output(stream: u8, bytes: &[u8]) {
    // The program's output is ours; if our own stdout is gone there is nobody to tell.
    let _ = if stream == 2 {
        std::io::stderr().write_all(bytes)
    } else {
        let mut o = std::io::stdout();
        o.write_all(bytes).and_then(|_| o.flush())
    };
}
