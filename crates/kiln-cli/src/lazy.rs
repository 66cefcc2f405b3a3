//! `kiln run --lazy`: objects and archive members given on the command line are linked when
//! first needed instead of up front, as llvm-jitlink's lazy mode does.
//!
//! - The object that defines the entry point, and objects with initializers (constructors must
//!   run at startup, in order, as natively), are linked up front with the libraries: the main
//!   unit, in the session's default scope.
//! - The others wait, each its own unit-to-be in a scope of its own (`lazy`), whose search order
//!   falls back to the default scope: a lazily linked object sees the others already linked
//!   first, then the main unit, the stubs and the libraries.
//! - A generator on the default scope answers the names the waiting inputs define: for a
//!   function, a lazy stub named like it (linked as a unit of its own, in the default scope; its
//!   first call links the object — once — and continues into the function, and
//!   [`kiln::Session::bypass_lazy_stub`] points the stub and the call that entered it at the
//!   function); for data, the object is linked right away and the address is the data's. A name
//!   whose object is linked already is answered with its address.
//! - A waiting input's function whose name a library or the process also defines gets its stub
//!   up front: definitions on demand are asked only for names found nowhere, and natively the
//!   program's own definition wins.
//!
//! Unlike natively, a function's address taken outside its object is its stub's, not the
//! function's (llvm-jitlink's lazy mode has the same), and a weak reference to a waiting input's
//! function is null, as nothing defines it when the referring object is linked.

use anyhow::{Context, Result};
use kiln::{ScopeId, Session, UnitId};
use kiln_target::{ExecutorAddr, LazyHandler, LazyRequest};
use object::{Object, ObjectSection, ObjectSymbol};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::ThreadId;

/// An object or archive member given on the command line.
pub struct Input {
    /// `file.o`, or `lib.a(member.o)`.
    pub name: String,
    pub bytes: Vec<u8>,
    /// Bytes of its allocated sections (code, data, zero-filled data): what it brings.
    pub size: u64,
    /// The global symbols it defines: (name, is a function, is weak).
    symbols: Vec<(String, bool, bool)>,
    has_initializers: bool,
}

impl Input {
    /// Read an object's symbols and sections; `Err` if it is no object `object` can read.
    pub fn parse(name: String, bytes: Vec<u8>) -> Result<Input> {
        let (symbols, size, has_initializers) = {
            let file = object::File::parse(&*bytes).with_context(|| format!("reading {name}"))?;
            let symbols: Vec<(String, bool, bool)> = file
                .symbols()
                .filter(|s| s.is_global() && (s.is_definition() || s.is_common()))
                .filter_map(|s| {
                    let n = s.name().ok()?.to_string();
                    Some((n, s.kind() == object::SymbolKind::Text, s.is_weak()))
                })
                .collect();
            let allocated = |s: &object::Section<'_, '_>| match s.flags() {
                object::SectionFlags::Elf { sh_flags, .. } => {
                    sh_flags.contains(object::elf::SHF_ALLOC)
                }
                _ => false,
            };
            let size: u64 = file.sections().filter(allocated).map(|s| s.size()).sum();
            let has_initializers = file.sections().any(|s| {
                s.name().is_ok_and(|n| {
                    n == ".init"
                        || n.starts_with(".init_array")
                        || n.starts_with(".preinit_array")
                        || n.starts_with(".ctors")
                })
            });
            (symbols, size, has_initializers)
        };
        Ok(Input {
            name,
            bytes,
            size,
            symbols,
            has_initializers,
        })
    }

    /// The members of an archive (ELF objects; others are skipped: nothing could link them).
    pub fn members(archive: &str, bytes: &[u8]) -> Result<Vec<Input>> {
        let a = object::read::archive::ArchiveFile::parse(bytes)
            .with_context(|| format!("reading archive {archive}"))?;
        let mut out = Vec::new();
        for m in a.members() {
            let m = m.with_context(|| format!("reading archive {archive}"))?;
            let member = String::from_utf8_lossy(m.name()).into_owned();
            let data = m
                .data(bytes)
                .with_context(|| format!("reading {archive}({member})"))?;
            if kiln::internal::identify(data) != kiln::internal::FileKind::Relocatable {
                tracing::warn!("{archive}({member}) is not an ELF object: ignored");
                continue;
            }
            out.push(Input::parse(format!("{archive}({member})"), data.to_vec())?);
        }
        Ok(out)
    }

    fn defines(&self, name: &str) -> bool {
        self.symbols.iter().any(|(n, _, _)| n == name)
    }
}

/// Where a waiting input stands.
enum State {
    Waiting,
    /// Being linked by this thread (a link that needs it again is a cycle of data references).
    Linking(ThreadId),
    Linked(UnitId),
    Failed(String),
}

/// The inputs linked on demand, and what `--show-stats` reports of them.
pub struct LazyLinker {
    session: Weak<Session>,
    /// Where lazily linked inputs go.
    scope: ScopeId,
    /// Where the stubs go (the main unit's scope).
    main: ScopeId,
    inputs: Vec<Input>,
    states: Vec<Mutex<State>>,
    /// Which waiting input defines each name, and whether it is a function there.
    defined_by: HashMap<String, (usize, bool)>,
    /// Stubs made, by name. Held while one is linked (no code runs then, and the stub's link
    /// asks no generator), so a name never gets two.
    stubs: Mutex<HashMap<String, ExecutorAddr>>,
    /// Lazy links one at a time (a link may need another input's data: nested on the same
    /// thread). Never held while code runs.
    link_lock: ReentrantLock,
    /// Inputs and bytes linked up front.
    eager: (usize, u64),
    available: (usize, u64),
    called: AtomicUsize,
    redirected: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`LazyLinker::setup`] decided: the linker, and the inputs to link up front.
pub struct Setup {
    pub linker: Arc<LazyLinker>,
    pub eager: Vec<Input>,
}

impl LazyLinker {
    /// Sort `inputs` into those linked up front (the one defining `entry`, those with
    /// initializers) and those that wait; register the generator on the session's default
    /// scope; make stubs up front for waiting functions whose names the libraries or the
    /// process define too (call after the libraries are loaded).
    pub fn setup(s: &Arc<Session>, inputs: Vec<Input>, entry: &str) -> Result<Setup> {
        let available = (inputs.len(), inputs.iter().map(|i| i.size).sum::<u64>());
        let (eager, waiting): (Vec<Input>, Vec<Input>) = inputs
            .into_iter()
            .partition(|i| i.has_initializers || i.defines(entry));
        let mut defined_by: HashMap<String, (usize, bool)> = HashMap::default();
        for (idx, input) in waiting.iter().enumerate() {
            for (name, function, weak) in &input.symbols {
                // First definition wins, except that a strong one replaces a weak one.
                let replace = match defined_by.get(name) {
                    None => true,
                    Some((other, _)) => {
                        !weak
                            && waiting[*other]
                                .symbols
                                .iter()
                                .any(|(n, _, w)| n == name && *w)
                    }
                };
                if replace {
                    defined_by.insert(name.clone(), (idx, *function));
                }
            }
        }
        // What the main unit defines is its own.
        for input in &eager {
            for (name, _, weak) in &input.symbols {
                if !weak {
                    defined_by.remove(name);
                }
            }
        }
        let scope = s.create_scope("lazy")?;
        let linker = Arc::new(LazyLinker {
            session: Arc::downgrade(s),
            scope,
            main: s.default_scope(),
            states: waiting.iter().map(|_| Mutex::new(State::Waiting)).collect(),
            inputs: waiting,
            defined_by,
            stubs: Mutex::default(),
            link_lock: ReentrantLock::default(),
            eager: (eager.len(), eager.iter().map(|i| i.size).sum()),
            available,
            called: AtomicUsize::new(0),
            redirected: AtomicUsize::new(0),
        });
        s.add_generator(s.default_scope(), Generator(linker.clone()));
        linker.stub_shadowed_functions(s)?;
        Ok(Setup { linker, eager })
    }

    /// Stubs now for waiting functions a library or the process defines too.
    fn stub_shadowed_functions(self: &Arc<Self>, s: &Session) -> Result<()> {
        let mut functions: Vec<&str> = self
            .defined_by
            .iter()
            .filter(|(_, (_, function))| *function)
            .map(|(n, _)| n.as_str())
            .collect();
        functions.sort_unstable();
        let found = s.lookup_external(&functions)?;
        for (name, addr) in functions.iter().zip(found) {
            if addr.is_some() {
                tracing::debug!("{name}: a library defines it too; its stub is made now");
                self.stub(s, name)?;
            }
        }
        Ok(())
    }

    /// What `--show-stats` prints.
    pub fn stats(&self) -> String {
        let (mut n, mut bytes) = self.eager;
        for (input, state) in self.inputs.iter().zip(&self.states) {
            if matches!(*lock(state), State::Linked(_)) {
                n += 1;
                bytes += input.size;
            }
        }
        format!(
            "lazy: {n} of {} inputs linked ({} up front), {bytes} of {} bytes; {} stubs made, {} \
             called, {} calls redirected to their function",
            self.available.0,
            self.eager.0,
            self.available.1,
            lock(&self.stubs).len(),
            self.called.load(Ordering::Relaxed),
            self.redirected.load(Ordering::Relaxed),
        )
    }

    /// The stub for waiting function `name`, made if it is not yet.
    fn stub(self: &Arc<Self>, s: &Session, name: &str) -> kiln::Result<ExecutorAddr> {
        let mut stubs = lock(&self.stubs);
        if let Some(a) = stubs.get(name) {
            return Ok(*a);
        }
        let handler: LazyHandler = {
            let (me, name) = (Arc::downgrade(self), name.to_string());
            Arc::new(move |request| {
                let me = me.upgrade().ok_or("kiln's lazy linker is gone")?;
                me.first_call(&name, request).map_err(|e| format!("{e:#}"))
            })
        };
        let key = s.executor().declare_lazy(handler)?;
        s.link_graph_in(self.main, &kiln::lazy_stub_graph(name, key))?;
        let addr = s
            .lookup_symbol(self.main, name)
            .map(|i| i.addr)
            .ok_or_else(|| kiln::Error::Internal(format!("the stub of {name} is not defined")))?;
        tracing::debug!("{name}: lazy stub at {addr}");
        stubs.insert(name.to_string(), addr);
        Ok(addr)
    }

    /// A stub's first call: link its object, go straight to the function from now on.
    fn first_call(&self, name: &str, request: LazyRequest) -> Result<ExecutorAddr> {
        let s = self.session.upgrade().context("the session is gone")?;
        let &(input, _) = self
            .defined_by
            .get(name)
            .with_context(|| format!("no waiting input defines {name}"))?;
        self.link(&s, input)?;
        let addr = s
            .lookup_symbol(self.scope, name)
            .map(|i| i.addr)
            .with_context(|| format!("{} does not define {name}", self.inputs[input].name))?;
        // Units linked just now (archive members of -l libraries among them) may have
        // constructors; no lock is held while they run.
        s.run_initializers()?;
        self.called.fetch_add(1, Ordering::Relaxed);
        let stub = lock(&self.stubs).get(name).copied();
        if let Some(stub) = stub {
            match s.bypass_lazy_stub(stub, addr, request.return_addr) {
                Ok(b) => {
                    tracing::debug!("{name}: at {addr}; the entering call: {:?}", b.entering);
                    self.redirected
                        .fetch_add(b.redirected.len(), Ordering::Relaxed);
                }
                Err(e) => tracing::warn!("{name}: its stub stays in the way: {e}"),
            }
        }
        Ok(addr)
    }

    /// Link waiting input `idx` into the lazy scope, unless it is linked already.
    fn link(&self, s: &Session, idx: usize) -> Result<UnitId> {
        let _serial = self.link_lock.lock();
        let me = std::thread::current().id();
        let input = &self.inputs[idx];
        {
            let mut st = lock(&self.states[idx]);
            match &*st {
                State::Linked(u) => return Ok(*u),
                State::Failed(why) => anyhow::bail!("{why}"),
                State::Linking(t) if *t == me => anyhow::bail!(
                    "{} is needed while it is being linked (its data and another waiting \
                     object's refer to each other): run without --lazy",
                    input.name
                ),
                State::Linking(_) | State::Waiting => *st = State::Linking(me),
            }
        }
        tracing::debug!("linking {} on demand", input.name);
        let mut one = kiln::Inputs::new();
        one.add_object(input.name.clone(), input.bytes.clone());
        // Relink records: a stub's first call finds every direct call of it (see main).
        let options = kiln::UnitOptions {
            relink: true,
            ..kiln::UnitOptions::new(self.scope)
        };
        let linked = s
            .link_inputs_with(&one, &options)
            .with_context(|| format!("linking {} on demand", input.name));
        *lock(&self.states[idx]) = match &linked {
            Ok(u) => State::Linked(*u),
            Err(e) => State::Failed(format!("{e:#}")),
        };
        linked
    }

    /// Answer a link's need for `name`.
    fn generate(self: &Arc<Self>, name: &str) -> kiln::Result<kiln::Generated> {
        let Some(&(input, function)) = self.defined_by.get(name) else {
            return Ok(kiln::Generated::NotMine);
        };
        let s = self
            .session
            .upgrade()
            .ok_or_else(|| kiln::Error::Usage("the session is gone".into()))?;
        let linked = matches!(*lock(&self.states[input]), State::Linked(_));
        let addr = if function && !linked {
            self.stub(&s, name)?
        } else {
            self.link(&s, input)
                .map_err(|e| kiln::Error::Usage(format!("{e:#}")))?;
            s.lookup_symbol(self.scope, name)
                .map(|i| i.addr)
                .ok_or_else(|| {
                    kiln::Error::Usage(format!(
                        "{} does not define {name}",
                        self.inputs[input].name
                    ))
                })?
        };
        Ok(kiln::Generated::Address(addr))
    }
}

/// The generator on the default scope (a newtype: the session holds it, it holds the linker).
struct Generator(Arc<LazyLinker>);

impl kiln::DefinitionGenerator for Generator {
    fn generate(&self, name: &str, _scope: ScopeId) -> kiln::Result<kiln::Generated> {
        self.0.generate(name)
    }
}

/// A lock its holder may take again (a lazy link whose generator links another input).
#[derive(Default)]
struct ReentrantLock {
    owner: Mutex<Option<(ThreadId, usize)>>,
    free: Condvar,
}

struct ReentrantGuard<'a>(&'a ReentrantLock);

impl ReentrantLock {
    fn lock(&self) -> ReentrantGuard<'_> {
        let me = std::thread::current().id();
        let mut owner = lock(&self.owner);
        loop {
            match &mut *owner {
                None => {
                    *owner = Some((me, 1));
                    break;
                }
                Some((t, depth)) if *t == me => {
                    *depth += 1;
                    break;
                }
                Some(_) => owner = self.free.wait(owner).unwrap_or_else(|e| e.into_inner()),
            }
        }
        ReentrantGuard(self)
    }
}

impl Drop for ReentrantGuard<'_> {
    fn drop(&mut self) {
        let mut owner = lock(&self.0.owner);
        if let Some((_, depth)) = &mut *owner {
            *depth -= 1;
            if *depth == 0 {
                *owner = None;
                self.0.free.notify_one();
            }
        }
    }
}
