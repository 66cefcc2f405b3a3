//! The executor side: serve one controller over one connection with the same target runtime
//! that runs code in process ([`InProcessExecutor`]).

use crate::auth::{nonce, Token};
use crate::proto::*;
use crate::wire::{Conn, WireError, MAX_FRAME, MAX_HELLO_FRAME};
use kiln_target::{Executor, InProcessExecutor, SlabId, SlabWrite};
use std::os::fd::{AsFd, OwnedFd};
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
pub fn greet(conn: &mut Conn, token: Option<&Token>) -> Result<Greeted, String> {
    let sn = nonce().map_err(|e| format!("no random nonce: {e}"))?;
    conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    conn.send(
        &ServerHello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            auth: token.is_some(),
            nonce: sn,
        },
        &[],
    )
    .map_err(|e| format!("sending hello: {e}"))?;
    let frame = conn
        .recv(MAX_HELLO_FRAME)
        .map_err(|e| format!("reading the controller's hello: {e}"))?;
    let refuse = |conn: &mut Conn, why: String| {
        let _ = conn.send(&Welcome::Refused(why.clone()), &[]);
        why
    };
    let hello: ClientHello = match frame.decode() {
        Ok(h) => h,
        Err(e) => return Err(refuse(conn, format!("bad hello: {e}"))),
    };
    if hello.magic != MAGIC || hello.version != PROTOCOL_VERSION {
        return Err(refuse(
            conn,
            format!(
                "protocol version {} is not this executor's {PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    if let Some(t) = token {
        let ok = hello
            .mac
            .is_some_and(|m| t.verify_client(&sn, &hello.nonce, &m));
        if !ok {
            return Err(refuse(conn, "authentication failed".into()));
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
    loop {
        let frame = match conn.recv(MAX_FRAME) {
            Ok(f) => f,
            // The controller is gone: run nothing further.
            Err(WireError::Closed) => kiln_target::process::exit_now(0),
            Err(e) => fail(&mut conn, format!("{e}")),
        };
        let req: Request = match frame.decode() {
            Ok(r) => r,
            Err(e) => fail(&mut conn, format!("{e}")),
        };
        if let Call::Exit(status) = req.call {
            // As a native program leaves: exit handlers (JIT'd ones, then kiln's, which run the
            // units' finalizers), then stdio is flushed.
            std::process::exit(status)
        }
        let (result, fd) = match apply_writes(&ex, &req.writes) {
            Ok(()) => match dispatch(&ex, req.call) {
                Ok((v, fd)) => (Ok(v), fd),
                Err(e) => (Err(e.to_string()), None),
            },
            Err(e) => (Err(e.to_string()), None),
        };
        let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
        let reply = Message::Reply { id: req.id, result };
        if conn.send(&reply, &fds).is_err() {
            kiln_target::process::exit_now(1)
        }
    }
}

/// Tell the controller why we stop listening to it, and stop.
fn fail(conn: &mut Conn, why: String) -> ! {
    eprintln!("kiln-executor: closing the connection: {why}");
    let _ = conn.send(&Message::ProtocolError(why), &[]);
    kiln_target::process::exit_now(3)
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
                Err(kiln_target::Error::AfterMove { why, .. }) => Value::Moved { error: Some(why) },
                Err(e) => return Err(e),
            }
        }
        // Handled by the serve loop before dispatch.
        Call::Exit(_) => {
            return Err(kiln_target::Error::InvalidRequest(
                "exit is not a dispatched call".into(),
            ))
        }
    };
    Ok((v, None))
}
