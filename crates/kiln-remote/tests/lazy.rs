//! Lazy functions out of process: code in a spawned `kiln-executor` calls a stub; the executor
//! asks the controller, whose handler links the function with a `kiln::Session` on the same
//! executor (requests the executor serves while its thread waits) and answers with its address.
//! First calls from 8 executor threads at once (pthreads started by C code linked into the
//! executor), handlers that themselves run code needing another lazy function, failures going
//! to the controller's error handler, and an executor that aborts when nobody says where to go.

mod common;

use common::*;
use kiln::arch::x86_64::EdgeKind;
use kiln::graph::{InMemoryEdge, InMemoryGraph};
use kiln::Session;
use kiln_remote::proto::*;
use kiln_remote::wire::{Conn, MAX_FRAME, MAX_HELLO_FRAME};
use kiln_remote::{Endpoint, MemoryMode, Options, RemoteExecutor};
use kiln_target::{
    Error, Executor, ExecutorAddr, LazyHandler, LazyRequest, StubKey, TargetInfo, LAZY_STUB,
    LAZY_TRAMPOLINE_SYMBOL,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

fn session(memory: MemoryMode) -> Arc<Session> {
    let ex = spawn_remote(Options {
        memory,
        ..Options::default()
    })
    .expect("spawning kiln-executor");
    let s = Arc::new(Session::new(Arc::new(ex)));
    s.set_debug(kiln::DebugOptions::none());
    s
}

/// A lazy stub named `name` for `key`: its jump slot points at the executor's trampoline.
fn stub_graph(name: &str, key: StubKey) -> InMemoryGraph {
    let mut g = InMemoryGraph::new(format!("{name}.stub"));
    g.add_function(
        name,
        LAZY_STUB.instantiate(key, ExecutorAddr::NULL),
        vec![InMemoryEdge::new(
            LAZY_STUB.target_offset as u32,
            EdgeKind::Pointer64,
            LAZY_TRAMPOLINE_SYMBOL,
            0,
        )],
        None,
    );
    g
}

/// `long NAME(long a, long b, long c) { return a + b + c + k; }`
fn add3(name: &str, k: i8) -> InMemoryGraph {
    let mut g = InMemoryGraph::new(format!("{name}.graph"));
    g.add_function(
        name,
        // lea (%rdi,%rsi), %rax; add %rdx, %rax; add $k, %rax; ret
        vec![
            0x48, 0x8d, 0x04, 0x37, 0x48, 0x01, 0xd0, 0x48, 0x83, 0xc0, k as u8, 0xc3,
        ],
        vec![],
        None,
    );
    g
}

/// A handler that links `graph` (whose function is `name`) with the session and returns its
/// address, counting its runs. It holds the session weakly: the session holds the executor,
/// which holds its handlers.
fn linking_handler(
    s: &Arc<Session>,
    graph: InMemoryGraph,
    name: &str,
    runs: &Arc<Mutex<Vec<LazyRequest>>>,
) -> LazyHandler {
    let (s, runs, name) = (Arc::downgrade(s), runs.clone(), name.to_string());
    Arc::new(move |req| {
        runs.lock().unwrap().push(req);
        let s = Weak::upgrade(&s).ok_or("the session is gone")?;
        s.link_graph(&graph).map_err(|e| e.to_string())?;
        s.lookup(&name)
            .ok_or_else(|| format!("{name} is not defined"))
    })
}

fn first_call_links_the_function(memory: MemoryMode) {
    let s = session(memory);
    let runs = Arc::new(Mutex::new(Vec::new()));
    let key = s
        .executor()
        .declare_lazy(linking_handler(&s, add3("add3", 0), "add3", &runs))
        .unwrap();
    s.link_graph(&stub_graph("lazy_add3", key)).unwrap();
    // `sub $8, %rsp; call lazy_add3; add $8, %rsp; ret`: the call returns to caller + 9.
    let mut g = InMemoryGraph::new("caller");
    g.add_function(
        "call_add3",
        vec![
            0x48, 0x83, 0xec, 0x08, 0xe8, 0, 0, 0, 0, 0x48, 0x83, 0xc4, 0x08, 0xc3,
        ],
        vec![InMemoryEdge::new(
            5,
            EdgeKind::BranchPCRel32,
            "lazy_add3",
            -4,
        )],
        None,
    );
    s.link_graph(&g).unwrap();
    let caller = s.lookup("call_add3").unwrap();
    let stub = s.lookup("lazy_add3").unwrap();
    let ex = s.executor().clone();
    assert_eq!(ex.call(caller, &[40, 1, 1]).unwrap(), 42);
    assert_eq!(ex.call(caller, &[1, 2, 3]).unwrap(), 6);
    assert_eq!(ex.call(stub, &[7, 0, 0]).unwrap(), 7);
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 1, "the handler ran once: {runs:?}");
    assert_eq!(runs[0].key, key);
    assert_eq!(runs[0].return_addr, ExecutorAddr(caller.0 + 9));
}

#[test]
fn the_first_call_links_the_function_shared_memory() {
    with_deadline("shared memory", || {
        first_call_links_the_function(MemoryMode::Shared)
    });
}

#[test]
fn the_first_call_links_the_function_copied_memory() {
    with_deadline("copied memory", || {
        first_call_links_the_function(MemoryMode::Copy)
    });
}

/// Eight pthreads call `lazy_add3_{0..7}` (at once, after a barrier); `eight_at_once` returns
/// how many got the right answer. `SAME` makes them all call `lazy_add3_0`.
const EIGHT_THREADS: &str = r#"
#include <pthread.h>
#define F(i) extern long lazy_add3_##i(long, long, long);
F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7)
static long (*const fns[8])(long, long, long) = {
#ifdef SAME
    lazy_add3_0, lazy_add3_0, lazy_add3_0, lazy_add3_0,
    lazy_add3_0, lazy_add3_0, lazy_add3_0, lazy_add3_0,
#else
    lazy_add3_0, lazy_add3_1, lazy_add3_2, lazy_add3_3,
    lazy_add3_4, lazy_add3_5, lazy_add3_6, lazy_add3_7,
#endif
};
static pthread_barrier_t start;
static long results[8];
static void *worker(void *arg) {
    long t = (long)arg;
    pthread_barrier_wait(&start);
    results[t] = fns[t](t, 1000 * t, 7);
    return 0;
}
long eight_at_once(long expect_same) {
    pthread_t th[8];
    pthread_barrier_init(&start, 0, 8);
    for (long t = 0; t < 8; t++)
        if (pthread_create(&th[t], 0, worker, (void *)t) != 0)
            return -1;
    for (int t = 0; t < 8; t++)
        pthread_join(th[t], 0);
    pthread_barrier_destroy(&start);
    long right = 0;
    for (long t = 0; t < 8; t++)
        right += results[t] == t + 1000 * t + 7 + (expect_same ? 0 : 10 * t);
    return right;
}
"#;

/// 8 executor threads make first calls at once: to one lazy function (its handler runs once
/// and all wait for it), or to eight (eight resolutions in flight, all served).
fn eight_threads(same: bool) {
    let s = session(MemoryMode::Auto);
    let runs = Arc::new(Mutex::new(Vec::new()));
    let concurrent = Arc::new(AtomicUsize::new(0));
    for i in 0..8 {
        let name = format!("add3_{i}");
        let link = linking_handler(&s, add3(&name, 10 * i as i8), &name, &runs);
        let concurrent = concurrent.clone();
        let handler: LazyHandler = Arc::new(move |req| {
            concurrent.fetch_add(1, Ordering::SeqCst);
            // Long enough that the other threads call while this one is resolved (not a
            // timing assertion: the test holds however the threads interleave).
            std::thread::sleep(std::time::Duration::from_millis(50));
            link(req)
        });
        let key = s.executor().declare_lazy(handler).unwrap();
        s.link_graph(&stub_graph(&format!("lazy_add3_{i}"), key))
            .unwrap();
    }
    let dir = tempdir();
    let src = if same {
        format!("#define SAME\n{EIGHT_THREADS}")
    } else {
        EIGHT_THREADS.to_string()
    };
    let obj = compile_c(dir.path(), "eight", &src);
    s.add_file(&obj).unwrap();
    s.link().unwrap();
    let f = s.lookup("eight_at_once").unwrap();
    let right = s.executor().call(f, &[same as u64]).unwrap();
    assert_eq!(right, 8, "every thread got the right answer");
    let runs = runs.lock().unwrap();
    if same {
        assert_eq!(runs.len(), 1, "one handler ran, once: {runs:?}");
    } else {
        let mut keys: Vec<u64> = runs.iter().map(|r| r.key.0).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 8, "each handler ran once: {runs:?}");
        assert_eq!(runs.len(), 8, "each handler ran once: {runs:?}");
    }
}

#[test]
fn eight_executor_threads_call_one_lazy_function_at_once() {
    with_deadline("8 threads, one function", || eight_threads(true));
}

#[test]
fn eight_executor_threads_call_eight_lazy_functions_at_once() {
    with_deadline("8 threads, eight functions", || eight_threads(false));
}

/// `outer_in_a_thread` calls `lazy_outer` from a new pthread while the serving thread waits in
/// `pthread_join`; `my_tid` is the calling thread's id.
const OUTER_IN_A_THREAD: &str = r#"
#include <pthread.h>
#include <unistd.h>
#include <sys/syscall.h>
extern long lazy_outer(long, long, long);
static long worker_tid, worker_result;
long my_tid(void) { return syscall(SYS_gettid); }
static void *worker(void *arg) {
    (void)arg;
    worker_tid = my_tid();
    worker_result = lazy_outer(10, 20, 30);
    return 0;
}
long outer_in_a_thread(void) {
    pthread_t t;
    if (pthread_create(&t, 0, worker, 0) != 0)
        return -1;
    pthread_join(t, 0);
    return worker_result;
}
long last_worker_tid(void) { return worker_tid; }
"#;

/// A handler that runs code, some of it needing another lazy function. Its calls run in the
/// executor thread that waits for its resolution, as they would in process (where the handler
/// runs in the thread that needs the function): that thread then asks for the second function,
/// whose handler the controller thread running the first one runs meanwhile. From the serving
/// thread, and from a pthread while the serving thread waits for it in `pthread_join`.
fn nested(from_a_thread: bool) {
    let s = session(MemoryMode::Auto);
    let runs = Arc::new(Mutex::new(Vec::new()));
    let inner_key = s
        .executor()
        .declare_lazy(linking_handler(&s, add3("inner", 5), "inner", &runs))
        .unwrap();
    s.link_graph(&stub_graph("lazy_inner", inner_key)).unwrap();
    let outer_link = linking_handler(&s, add3("outer", 1), "outer", &runs);
    let weak = Arc::downgrade(&s);
    let handler_saw_tid = Arc::new(Mutex::new(None));
    let saw = handler_saw_tid.clone();
    let outer: LazyHandler = Arc::new(move |req| {
        let s = weak.upgrade().ok_or("the session is gone")?;
        let call = |name: &str, args: &[u64]| -> Result<u64, String> {
            let f = s.lookup(name).ok_or(format!("no {name}"))?;
            s.executor().call(f, args).map_err(|e| e.to_string())
        };
        *saw.lock().unwrap() = Some(call("my_tid", &[])?);
        let v = call("lazy_inner", &[1, 2, 3])?;
        if v != 11 {
            return Err(format!("the inner function returned {v}"));
        }
        outer_link(req)
    });
    let outer_key = s.executor().declare_lazy(outer).unwrap();
    s.link_graph(&stub_graph("lazy_outer", outer_key)).unwrap();
    let dir = tempdir();
    s.add_file(compile_c(dir.path(), "outer", OUTER_IN_A_THREAD))
        .unwrap();
    s.link().unwrap();
    let ex = s.executor().clone();
    let lookup = |name: &str| s.lookup(name).unwrap();
    let (result, caller_tid) = if from_a_thread {
        let r = ex.call(lookup("outer_in_a_thread"), &[]).unwrap();
        (r, ex.call(lookup("last_worker_tid"), &[]).unwrap())
    } else {
        let r = ex.call(lookup("lazy_outer"), &[10, 20, 30]).unwrap();
        (r, ex.call(lookup("my_tid"), &[]).unwrap())
    };
    assert_eq!(result, 61);
    assert_eq!(
        *handler_saw_tid.lock().unwrap(),
        Some(caller_tid),
        "the handler's call ran in the thread that needed the function"
    );
    let keys: Vec<StubKey> = runs.lock().unwrap().iter().map(|r| r.key).collect();
    assert_eq!(keys, [inner_key, outer_key], "inner resolved inside outer");
}

#[test]
fn a_handler_may_run_code_that_needs_another_lazy_function() {
    with_deadline("nested resolutions", || nested(false));
}

#[test]
fn a_handler_on_a_pthread_runs_its_code_on_that_thread() {
    with_deadline("nested resolutions on a pthread", || nested(true));
}

#[test]
fn a_failed_handler_goes_to_the_controllers_error_handler() {
    with_deadline("error handler", || {
        let s = session(MemoryMode::Auto);
        // `long fallback(long a, long b, long c) { return -a; }`
        let mut g = InMemoryGraph::new("fallback");
        g.add_function(
            "fallback",
            vec![0x48, 0x89, 0xf8, 0x48, 0xf7, 0xd8, 0xc3],
            vec![],
            None,
        );
        s.link_graph(&g).unwrap();
        let fallback = s.lookup("fallback").unwrap();
        let errors = Arc::new(Mutex::new(Vec::<(StubKey, String)>::new()));
        let seen = errors.clone();
        s.executor()
            .set_lazy_error_handler(Some(Arc::new(move |key, why: &str| {
                seen.lock().unwrap().push((key, why.to_string()));
                Some(fallback)
            })))
            .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let key = s
            .executor()
            .declare_lazy(Arc::new(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                Err("no such method".into())
            }))
            .unwrap();
        s.link_graph(&stub_graph("lazy_missing", key)).unwrap();
        let f = s.lookup("lazy_missing").unwrap();
        assert_eq!(s.executor().call(f, &[5, 0, 0]).unwrap(), (-5i64) as u64);
        assert_eq!(s.executor().call(f, &[6, 0, 0]).unwrap(), (-6i64) as u64);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
        let errors = errors.lock().unwrap();
        assert_eq!(errors.len(), 1, "the error handler ran once: {errors:?}");
        assert_eq!(errors[0].0, key);
        assert!(errors[0].1.contains("no such method"), "{}", errors[0].1);
    });
}

#[test]
fn keys_are_the_controllers_own() {
    let s = session(MemoryMode::Auto);
    let h: LazyHandler = Arc::new(|_| Ok(ExecutorAddr(1)));
    let key = s.executor().declare_lazy(h).unwrap();
    assert!(s.executor().forget_lazy(StubKey(key.0 + 1000)).is_err());
    s.executor().forget_lazy(key).unwrap();
    assert!(s.executor().forget_lazy(key).is_err(), "forgotten twice");
    assert!(s.executor().lazy_trampoline().is_ok());
}

const ABORT_CHILD: &str = "KILN_REMOTE_LAZY_ABORT_CHILD";
const SIGABRT: i32 = 6;

/// Run by `without_an_error_handler_the_executor_aborts`, in a child process whose standard
/// error the spawned executor shares.
#[test]
#[ignore = "run in a child process by without_an_error_handler_the_executor_aborts"]
fn abort_child() {
    assert!(std::env::var_os(ABORT_CHILD).is_some(), "only as a child");
    let s = session(MemoryMode::Auto);
    let key = s
        .executor()
        .declare_lazy(Arc::new(|_| Err("the compiler gave up".into())))
        .unwrap();
    s.link_graph(&stub_graph("lazy_doomed", key)).unwrap();
    let f = s.lookup("lazy_doomed").unwrap();
    match s.executor().call(f, &[]) {
        Err(Error::ExecutorExited {
            signal: Some(SIGABRT),
            ..
        }) => {}
        other => panic!("expected the executor to abort, got {other:?}"),
    }
}

#[test]
fn without_an_error_handler_the_executor_aborts() {
    let out = run(std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "abort_child", "--ignored", "--nocapture"])
        .env(ABORT_CHILD, "1"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the compiler gave up"), "{stderr}");
    assert!(stderr.contains("no error handler is set"), "{stderr}");
}

/// A fake executor asks for a key nobody declared, before answering the controller's first
/// request: the controller answers that it failed (no handler, no error handler), and goes on.
#[test]
fn a_resolution_of_an_unknown_key_is_answered_as_failed() {
    let dir = tempdir();
    let path = dir.path().join("fake.sock");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fake = std::thread::spawn(move || {
        let (sock, _) = l.accept().unwrap();
        let mut c = Conn::from(sock);
        c.set_read_timeout(Some(HANG)).unwrap();
        c.send(
            &ServerHello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                auth: false,
                nonce: [1; 32],
            },
            &[],
        )
        .unwrap();
        let _: ClientHello = c.recv(MAX_HELLO_FRAME).unwrap().decode().unwrap();
        let handshake = Handshake {
            info: TargetInfo {
                triple: "x86_64-unknown-linux-gnu".into(),
                page_size: 4096,
                pid: 1,
            },
            bootstrap: Vec::new(),
            shared_memory: false,
            forwards_output: false,
            slabs: false,
        };
        c.send(
            &Welcome::Accepted {
                handshake,
                mac: None,
            },
            &[],
        )
        .unwrap();
        let first: Request = c.recv(MAX_FRAME).unwrap().decode().unwrap();
        let request = LazyRequest {
            key: StubKey(999),
            return_addr: ExecutorAddr(0x1234),
        };
        c.send(&Message::Resolve { id: 7, request }, &[]).unwrap();
        let answer: Request = c.recv(MAX_FRAME).unwrap().decode().unwrap();
        c.send(
            &Message::Reply {
                id: first.id,
                result: Ok(Value::Lookup(vec![None])),
            },
            &[],
        )
        .unwrap();
        answer.call
    });
    let ex = RemoteExecutor::connect(&Endpoint::Unix(path), Options::default()).unwrap();
    let r = with_deadline("lookup", move || {
        ex.lookup(&[b"x"], &[], true).map_err(|e| e.to_string())
    });
    assert_eq!(r.unwrap(), vec![None]);
    match fake.join().unwrap() {
        Call::Resolved {
            resolve: 7,
            resolution:
                Resolution::Failed {
                    message,
                    continue_at: None,
                },
        } => assert!(
            message.contains("no lazy function with key 999"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

/// A controller that answers a resolution nobody asked for is not followed: the executor says
/// so (`ProtocolError`) and leaves without running anything further.
#[test]
fn an_answer_nobody_awaits_is_a_protocol_error() {
    let (mut conn, mut child) = {
        let _g = spawn_lock();
        kiln_remote::client::spawn_child(&mut std::process::Command::new(EXECUTOR))
            .expect("spawning kiln-executor")
    };
    kiln_remote::client::client_handshake(&mut conn, &Options::default()).expect("handshake");
    conn.send(
        &Request {
            id: 0,
            writes: Vec::new(),
            call: Call::Resolved {
                resolve: 5,
                resolution: Resolution::Resolved(ExecutorAddr(0x1000)),
            },
        },
        &[],
    )
    .unwrap();
    conn.set_read_timeout(Some(HANG)).unwrap();
    match conn.recv(MAX_FRAME).unwrap().decode::<Message>().unwrap() {
        Message::ProtocolError(why) => assert!(why.contains("not awaited"), "{why}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_eq!(wait_child(&mut child, "the executor").code(), Some(3));
}

/// A thread of the executor started earlier calls a lazy function while the controller only
/// makes requests that run no code (lookups): the handler runs in a thread of its own, and the
/// lookups go on meanwhile.
const BACKGROUND: &str = r#"
#include <pthread.h>
#include <unistd.h>
extern long lazy_late(long, long, long);
static pthread_t th;
static const char *go;
static long result;
static void *worker(void *arg) {
    (void)arg;
    while (access(go, F_OK) != 0)
        usleep(1000);
    result = lazy_late(1, 2, 3);
    return 0;
}
long start_background(const char *path) {
    go = path;
    return pthread_create(&th, 0, worker, 0);
}
long join_background(void) {
    pthread_join(th, 0);
    return result;
}
"#;

#[test]
fn a_resolution_asked_during_a_request_that_runs_no_code_gets_a_thread() {
    with_deadline("a background resolution", || {
        let s = session(MemoryMode::Auto);
        let (tx, rx) = std::sync::mpsc::channel();
        let link = linking_handler(&s, add3("late", 100), "late", &Arc::new(Mutex::new(vec![])));
        let tx = Mutex::new(tx);
        let handler: LazyHandler = Arc::new(move |req| {
            let thread = std::thread::current().name().map(str::to_string);
            let r = link(req);
            let _ = tx.lock().unwrap().send(thread);
            r
        });
        let key = s.executor().declare_lazy(handler).unwrap();
        s.link_graph(&stub_graph("lazy_late", key)).unwrap();
        let dir = tempdir();
        s.add_file(compile_c(dir.path(), "background", BACKGROUND))
            .unwrap();
        // The path travels as bytes in a data object of its own.
        let go = dir.path().join("go");
        let mut path = go.to_str().unwrap().as_bytes().to_vec();
        path.push(0);
        let mut g = InMemoryGraph::new("path");
        g.add_data("go_path", path, 1, kiln_target::MemProt::Read);
        s.add_graph(g);
        s.link().unwrap();
        let ex = s.executor().clone();
        let go_path = s.lookup("go_path").unwrap();
        let start = s.lookup("start_background").unwrap();
        assert_eq!(ex.call(start, &[go_path.0]).unwrap(), 0, "pthread_create");
        std::fs::write(&go, b"").unwrap();
        let thread = loop {
            assert_eq!(ex.lookup(&[b"printf"], &[], true).unwrap().len(), 1);
            if let Ok(t) = rx.try_recv() {
                break t;
            }
        };
        assert!(
            thread
                .as_deref()
                .is_some_and(|t| t.starts_with("kiln lazy")),
            "the handler ran in {thread:?}"
        );
        let join = s.lookup("join_background").unwrap();
        assert_eq!(ex.call(join, &[]).unwrap(), 106);
    });
}
