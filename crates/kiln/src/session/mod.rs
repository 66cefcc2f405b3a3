//! The library API: a session links inputs into units in its executor, keeps their symbols in
//! scopes, knows who depends on whom, looks symbols up, runs code, and removes units.
//!
//! A session is `Send + Sync`: compiler threads share it (behind an `Arc`) and link in parallel.
//! Parsing, layout and fixups of a unit happen outside any session-wide lock; only binding
//! names (a read lock) and publishing the new unit's symbols (a write lock) synchronise.

mod edges;
mod generate;
mod inputs;
mod lazy;
mod moving;
mod relocate;
mod state;
mod symbols;
mod units;

pub use generate::{DefinitionGenerator, Generated};
pub use inputs::Inputs;
pub use lazy::{lazy_stub_graph, CallLeft, CallRedirect, CallSite, StubBypass};
pub use moving::{RelinkBytes, RelocationInfo};
pub use state::{ScopeId, SymbolInfo, SymbolKind, UnitId};

use crate::debug::DebugOptions;
use crate::error::{Error, Result, Unresolved};
use crate::graph::{FunctionRef, InMemoryGraph};
use crate::link::{self, LinkInput, LinkStats, LinkedUnit, SessionSymbols};
use crate::memory::{CodeMemory, SlabMemory};
use crate::search::LibrarySearch;
use crate::LinkMap;
use generate::{GeneratedInputs, NO_GENERATED};
use kiln_target::{Executor, ExecutorAddr, InProcessExecutor, LibraryId};
use rustc_hash::{FxHashMap, FxHashSet};
use smallvec::SmallVec;
use state::{NewSymbols, NewUnit, State, Unit};
use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A JIT session: links inputs into units in one executor (this process, or another).
///
/// ```no_run
/// use kiln::Session;
/// let s = Session::in_process();
/// s.add_file("hello.o")?;
/// s.link()?;
/// s.run_initializers()?;
/// let status = s.run_main("main", &["hello".to_string()])?;
/// # Ok::<(), kiln::Error>(())
/// ```
pub struct Session {
    executor: Arc<dyn Executor>,
    config: RwLock<Arc<Config>>,
    state: RwLock<State>,
    /// The session's own code memory (slabs made as needed).
    memory: Arc<dyn CodeMemory>,
    /// What [`Session::add_object`] and friends added, for [`Session::link`].
    pending: Mutex<Inputs>,
    generators: RwLock<Vec<(ScopeId, Arc<dyn DefinitionGenerator>)>>,
    /// Units stay live in the executor when the session is dropped ([`Session::detach`]).
    detached: AtomicBool,
}

/// Where a unit goes and what it keeps: for [`Session::link_graph_with`] and
/// [`Session::link_inputs_with`].
///
/// ```
/// use kiln::{Session, UnitOptions};
/// let s = Session::in_process();
/// let scope = s.create_scope("jit-module")?;
/// let options = UnitOptions { relink: true, ..UnitOptions::new(scope) };
/// # let _ = options;
/// # Ok::<(), kiln::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct UnitOptions {
    /// The scope the unit's symbols go into.
    pub scope: ScopeId,
    /// Take the unit's memory from here instead of the session's own slabs (a JIT layer's
    /// code zone).
    pub memory: Option<Arc<dyn CodeMemory>>,
    /// Keep the unit's edges ([`Session::relink_record`]) so that they can be applied again
    /// when its code or what it references moves.
    pub relink: bool,
}

impl UnitOptions {
    /// The defaults: scope `scope`, the session's memory, no relink record.
    pub fn new(scope: ScopeId) -> Self {
        UnitOptions {
            scope,
            memory: None,
            relink: false,
        }
    }
}

/// Settings every link reads; replaced as a whole when one changes, so that a link in progress
/// keeps a consistent copy.
#[derive(Clone)]
struct Config {
    libraries: Vec<LibraryId>,
    /// The files behind `libraries`.
    loaded: Vec<std::path::PathBuf>,
    defines: FxHashMap<String, u64>,
    process_symbols: bool,
    allow: Option<FxHashSet<String>>,
    debug: DebugOptions,
    search: LibrarySearch,
    use_slabs: bool,
    want_map: bool,
    collect_stats: bool,
}

impl Session {
    pub fn new(executor: Arc<dyn Executor>) -> Self {
        let debug = DebugOptions::from_env().unwrap_or_else(|e| {
            tracing::warn!("{e}; using the default debug sinks");
            DebugOptions::default()
        });
        let config = Config {
            libraries: Vec::new(),
            loaded: Vec::new(),
            defines: FxHashMap::default(),
            process_symbols: true,
            allow: None,
            debug,
            search: LibrarySearch::default(),
            use_slabs: executor.supports_slabs(),
            want_map: false,
            collect_stats: false,
        };
        Session {
            executor,
            config: RwLock::new(Arc::new(config)),
            state: RwLock::new(State::new()),
            memory: Arc::new(SlabMemory::new()),
            pending: Mutex::default(),
            generators: RwLock::default(),
            detached: AtomicBool::new(false),
        }
    }

    /// A session whose code runs in this process.
    pub fn in_process() -> Self {
        Self::new(Arc::new(InProcessExecutor::new()))
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    // ---- inputs for the next `link()` ----

    /// Add a relocatable object from memory, for the next [`Session::link`].
    pub fn add_object(&self, name: impl Into<String>, bytes: Vec<u8>) {
        lock(&self.pending).add_object(name, bytes);
    }

    /// Add a graph a JIT compiler built in memory, for the next [`Session::link`].
    pub fn add_graph(&self, graph: InMemoryGraph) {
        lock(&self.pending).add_graph(graph);
    }

    /// Add a static archive from memory; members are linked only when needed.
    pub fn add_archive(&self, name: impl Into<String>, bytes: Vec<u8>) {
        lock(&self.pending).add_archive(name, bytes);
    }

    /// Add a file by what it contains: object, archive, shared library or GNU ld script.
    pub fn add_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let search = self.config().search.clone();
        let mut more = Inputs::new();
        more.add_file(path, &search)?;
        lock(&self.pending).append(more);
        Ok(())
    }

    /// `-l SPEC` (`NAME` or `:FILE`), found as `ld` finds it.
    pub fn add_library(&self, spec: &str) -> Result<()> {
        let p = self.config().search.find(spec)?;
        tracing::debug!("-l{spec} is {}", p.display());
        self.add_file(&p)
    }

    /// Load a shared library into the executor now; its symbols are searched after the
    /// session's units and before the process's.
    pub fn add_shared_library(&self, path: &Path) -> Result<()> {
        self.load_once(path)
    }

    /// Load `path` unless it is loaded already.
    fn load_once(&self, path: &Path) -> Result<()> {
        if self.config().loaded.iter().any(|p| p == path) {
            return Ok(());
        }
        let id = self.executor.load_library(path)?;
        self.configure(|c| {
            c.libraries.push(id);
            c.loaded.push(path.to_path_buf());
        });
        Ok(())
    }

    /// A symbol the next link must define and keep (an entry point).
    pub fn add_root(&self, name: impl Into<String>) {
        lock(&self.pending).add_root(name);
    }

    /// Place the next unit [`Session::link`] makes at exactly this address.
    pub fn set_fixed_address(&self, addr: Option<u64>) {
        lock(&self.pending).set_fixed_address(addr);
    }

    // ---- settings ----

    /// Define an absolute symbol (wins over libraries and the process).
    pub fn define(&self, name: impl Into<String>, addr: u64) {
        let name = name.into();
        self.configure(|c| {
            c.defines.insert(name, addr);
        });
    }

    /// Whether symbols of the executor process itself may be bound (default: yes).
    pub fn set_process_symbols(&self, on: bool) {
        self.configure(|c| c.process_symbols = on);
    }

    /// Only these names may be bound outside the linked inputs (libraries, the process,
    /// definitions); any other reference fails the link, naming the symbol and the input.
    pub fn set_allow_list<I, S>(&self, names: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let allow: FxHashSet<String> = names.into_iter().map(Into::into).collect();
        self.configure(|c| c.allow = Some(allow));
    }

    /// Any name may be bound again.
    pub fn clear_allow_list(&self) {
        self.configure(|c| c.allow = None);
    }

    /// Record a [`LinkMap`] for the units linked from now on (see [`Session::link_map`]).
    pub fn set_want_map(&self, on: bool) {
        self.configure(|c| c.want_map = on);
    }

    /// Keep [`LinkStats`] (with the time of each phase) for the units linked from now on.
    /// Off by default: a JIT linking a million small units should not pay for them.
    pub fn set_collect_stats(&self, on: bool) {
        self.configure(|c| c.collect_stats = on);
    }

    /// Which debugger and profiler sinks learn about the units linked from now on (gdb, perf
    /// map, jitdump, valgrind). A new session starts with [`DebugOptions::default`] changed by
    /// `KILN_DEBUG`.
    pub fn set_debug(&self, options: DebugOptions) {
        self.configure(|c| c.debug = options);
    }

    pub fn debug_options(&self) -> DebugOptions {
        self.config().debug.clone()
    }

    /// How `-l` names are found.
    pub fn set_library_search(&self, search: LibrarySearch) {
        self.configure(|c| c.search = search);
    }

    pub fn library_search(&self) -> LibrarySearch {
        self.config().search.clone()
    }

    /// Put units in shared slabs (the default where the executor has them): many units share
    /// pages, nothing is copied at finalize, and code can be patched through the slab's
    /// writable alias. Off: each unit gets a reservation of its own, as with a fixed address.
    pub fn set_use_slabs(&self, on: bool) {
        let on = on && self.executor.supports_slabs();
        self.configure(|c| c.use_slabs = on);
    }

    fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn configure(&self, f: impl FnOnce(&mut Config)) {
        let mut c = self.config.write().unwrap_or_else(|e| e.into_inner());
        f(Arc::make_mut(&mut c));
    }

    // ---- scopes and generators ----

    /// The scope units go into unless told otherwise.
    pub fn default_scope(&self) -> ScopeId {
        ScopeId(0)
    }

    /// A new, empty scope named `name`. Its units see their own scope first, then the default
    /// scope (change it with [`Session::set_search_order`]).
    pub fn create_scope(&self, name: &str) -> Result<ScopeId> {
        let mut st = write(&self.state);
        if st.scopes.iter().any(|s| s.name == name) {
            return Err(Error::Usage(format!(
                "a scope named {name:?} exists already"
            )));
        }
        st.scopes.push(state::Scope {
            name: name.to_string(),
            search: vec![ScopeId(0)],
            symbols: symbols::SymbolTable::default(),
        });
        Ok(ScopeId(st.scopes.len() as u32 - 1))
    }

    /// The scope named `name`.
    pub fn scope_by_name(&self, name: &str) -> Option<ScopeId> {
        let st = read(&self.state);
        let i = st.scopes.iter().position(|s| s.name == name)?;
        Some(ScopeId(i as u32))
    }

    /// The scopes units of `scope` search after `scope` itself, in order (only their exported
    /// symbols are visible).
    pub fn set_search_order(&self, scope: ScopeId, order: &[ScopeId]) -> Result<()> {
        let mut st = write(&self.state);
        for s in order.iter().chain([&scope]) {
            st.scope(*s)?;
        }
        st.scopes[scope.0 as usize].search =
            order.iter().copied().filter(|s| *s != scope).collect();
        Ok(())
    }

    /// Ask `generator` for names the units of `scope` (and of scopes searching it) need and
    /// nothing else defines. Generators are asked in the order they were added.
    pub fn add_generator(&self, scope: ScopeId, generator: impl DefinitionGenerator + 'static) {
        write(&self.generators).push((scope, Arc::new(generator)));
    }

    // ---- linking ----

    /// Link everything added since the last link into one unit of the default scope, and
    /// finalize it in the executor. Initializers are not run: see
    /// [`Session::run_initializers`]. If the link fails, what was added stays added.
    pub fn link(&self) -> Result<UnitId> {
        self.link_with(&UnitOptions::new(self.default_scope()))
    }

    /// [`Session::link`] with options: the unit's scope, its memory, its relink record.
    pub fn link_with(&self, options: &UnitOptions) -> Result<UnitId> {
        let inputs = std::mem::take(&mut *lock(&self.pending));
        let result = self.link_in(options, &inputs);
        if result.is_err() {
            // Given back in front of whatever was added meanwhile.
            let mut pending = lock(&self.pending);
            let later = std::mem::replace(&mut *pending, inputs);
            pending.append(later);
        }
        result
    }

    /// Link `inputs` into one unit of `scope`. They are left as they were (so that a failed
    /// link can be retried after adding what was missing).
    pub fn link_inputs(&self, scope: ScopeId, inputs: &Inputs) -> Result<UnitId> {
        self.link_in(&UnitOptions::new(scope), inputs)
    }

    /// [`Session::link_inputs`] with options: the unit's memory, its relink record.
    pub fn link_inputs_with(&self, inputs: &Inputs, options: &UnitOptions) -> Result<UnitId> {
        self.link_in(options, inputs)
    }

    /// Link one graph into a unit of the default scope.
    pub fn link_graph(&self, graph: &InMemoryGraph) -> Result<UnitId> {
        self.link_graph_in(self.default_scope(), graph)
    }

    /// Link one graph into a unit of `scope`.
    pub fn link_graph_in(&self, scope: ScopeId, graph: &InMemoryGraph) -> Result<UnitId> {
        self.link_graph_with(graph, &UnitOptions::new(scope))
    }

    /// Link one graph into a unit, with options: its scope, its memory, its relink record.
    pub fn link_graph_with(&self, graph: &InMemoryGraph, options: &UnitOptions) -> Result<UnitId> {
        self.link_graphs_with(std::slice::from_ref(graph), options)
    }

    /// Link one function the JIT lends (its name, code and edges stay borrowed: nothing of the
    /// input is copied or allocated) into a unit of the default scope. The same unit, and the
    /// same errors, as [`Session::link_graph`] with a graph holding that one function.
    ///
    /// ```
    /// use kiln::arch::x86_64::EdgeKind;
    /// use kiln::graph::{EdgeRef, FunctionRef};
    ///
    /// let session = kiln::Session::in_process();
    /// let code = [0xb8, 7, 0, 0, 0, 0xc3]; // mov eax, 7; ret
    /// let unit = session.link_function(&FunctionRef::new("seven", &code, &[]))?;
    /// let seven = session.lookup("seven").expect("seven is defined");
    /// assert_eq!(session.executor().call(seven, &[])?, 7);
    /// session.remove(unit)?;
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn link_function(&self, function: &FunctionRef) -> Result<UnitId> {
        self.link_function_with(function, &UnitOptions::new(self.default_scope()))
    }

    /// [`Session::link_function`] with options: the unit's scope, its memory, its relink
    /// record.
    #[inline]
    pub fn link_function_with(
        &self,
        function: &FunctionRef,
        options: &UnitOptions,
    ) -> Result<UnitId> {
        self.link_functions_with(std::slice::from_ref(function), options)
    }

    /// Link several functions the JIT lends into **one** unit, with options: what
    /// [`Session::link_graphs_as_unit`] does for graphs (they may reference each other in any
    /// order; the per-unit work is done once; the unit is removed as a whole), with nothing of
    /// the input copied or allocated.
    ///
    /// ```
    /// use kiln::arch::x86_64::EdgeKind;
    /// use kiln::graph::{EdgeRef, FunctionRef};
    /// use kiln::UnitOptions;
    ///
    /// let session = kiln::Session::in_process();
    /// // `first` jumps to `second`, lent in the same call.
    /// let jump = [0xe9, 0, 0, 0, 0];
    /// let edges = [EdgeRef::new(1, EdgeKind::BranchPCRel32, "second", -4)];
    /// let answer = [0xb8, 42, 0, 0, 0, 0xc3]; // mov eax, 42; ret
    /// let functions = [
    ///     FunctionRef::new("first", &jump, &edges),
    ///     FunctionRef::new("second", &answer, &[]),
    /// ];
    /// let options = UnitOptions::new(session.default_scope());
    /// let unit = session.link_functions_with(&functions, &options)?;
    /// let f = session.lookup("first").expect("first is defined");
    /// assert_eq!(session.executor().call(f, &[])? as u32, 42);
    /// session.remove(unit)?;
    /// # Ok::<(), kiln::Error>(())
    /// ```
    // Inline (into `link_function`, a JIT's call): one call level less a link; what is rare
    // (no functions, names the generators may define) is out of line.
    #[inline]
    pub fn link_functions_with(
        &self,
        functions: &[FunctionRef],
        options: &UnitOptions,
    ) -> Result<UnitId> {
        if functions.is_empty() {
            return Err(no_functions());
        }
        let config = self.config();
        match self.link_once(
            &config,
            options,
            &Source::Functions(functions),
            &NO_GENERATED,
            None,
        ) {
            Err(Error::Unresolved(u)) if !u.undefined.is_empty() => {
                self.link_functions_generated(functions, options, u)
            }
            r => r,
        }
    }

    /// A link of `functions` that missed names: when the session has generators, they answer
    /// with inputs of their own, and the link is made again from inputs, with the functions as
    /// the graphs they stand for; else `unresolved` is the answer.
    #[cold]
    #[inline(never)]
    fn link_functions_generated(
        &self,
        functions: &[FunctionRef],
        options: &UnitOptions,
        unresolved: Box<Unresolved>,
    ) -> Result<UnitId> {
        if !self.has_generators() {
            return Err(Error::Unresolved(unresolved));
        }
        let mut inputs = Inputs::new();
        for f in functions {
            inputs.add_graph(f.to_graph());
        }
        self.link_in(options, &inputs)
    }

    /// `graphs` into one unit; a link that misses names the generators may define is made
    /// again from the inputs, where the generators are asked.
    fn link_graphs_with(&self, graphs: &[InMemoryGraph], options: &UnitOptions) -> Result<UnitId> {
        let config = self.config();
        match self.link_once(
            &config,
            options,
            &Source::Graphs(graphs),
            &NO_GENERATED,
            None,
        ) {
            Err(Error::Unresolved(u)) if !u.undefined.is_empty() && self.has_generators() => {
                let mut inputs = Inputs::new();
                for g in graphs {
                    inputs.add_graph(g.clone());
                }
                self.link_in(options, &inputs)
            }
            r => r,
        }
    }

    /// Link `source` into a unit whose definitions may take over the names `replacing` defines
    /// (for [`Session::redefine`] and [`Session::redefine_inputs`]).
    pub(crate) fn link_replacing(
        &self,
        source: &Source,
        options: &UnitOptions,
        replacing: u64,
    ) -> Result<UnitId> {
        let config = self.config();
        self.link_once(&config, options, source, &NO_GENERATED, Some(replacing))
    }

    /// Link many graphs, each into a unit of its own in `scope`, in order (a later graph may
    /// bind to an earlier one's symbols). Stops at the first failure: the units linked before
    /// it stay. Each graph pays for a whole link; for a batch that lives and dies together,
    /// [`Session::link_graphs_as_unit`] does the per-unit work once.
    pub fn link_graphs(&self, scope: ScopeId, graphs: &[InMemoryGraph]) -> Result<Vec<UnitId>> {
        graphs
            .iter()
            .map(|g| self.link_graph_in(scope, g))
            .collect()
    }

    /// Link many graphs into one unit of `scope`: the batch call, for a JIT that compiles
    /// functions in batches (a module, a hot region) and frees them together.
    ///
    /// The graphs may reference each other in any order, cycles included (mutual recursion
    /// that [`Session::link_graphs`], one unit per graph in order, cannot link). What a link
    /// costs per unit — reserving memory, the executor's bookkeeping, publishing, the debug
    /// sinks — is paid once for the batch: with 1,000 one-function graphs a function costs about
    /// a quarter of a one-graph link (docs/bench-jit.md). The unit is removed, moved and
    /// redefined as a whole. An error leaves nothing behind, as for any link.
    ///
    /// ```
    /// use kiln::arch::x86_64::EdgeKind;
    /// use kiln::graph::{InMemoryEdge, InMemoryGraph};
    ///
    /// let session = kiln::Session::in_process();
    /// // `first` jumps to `second`, which is defined by a later graph of the batch.
    /// let mut first = InMemoryGraph::new("first");
    /// let edge = InMemoryEdge::new(1, EdgeKind::BranchPCRel32, "second", -4);
    /// first.add_function("first", vec![0xe9, 0, 0, 0, 0], vec![edge], None);
    /// let mut second = InMemoryGraph::new("second");
    /// second.add_function("second", vec![0xb8, 42, 0, 0, 0, 0xc3], vec![], None); // mov eax, 42
    /// let unit = session.link_graphs_as_unit(session.default_scope(), &[first, second])?;
    /// let f = session.lookup("first").expect("first is defined");
    /// assert_eq!(session.executor().call(f, &[])? as u32, 42);
    /// session.remove(unit)?;
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn link_graphs_as_unit(&self, scope: ScopeId, graphs: &[InMemoryGraph]) -> Result<UnitId> {
        if graphs.is_empty() {
            return Err(Error::Usage(
                "link_graphs_as_unit: no graphs to link".into(),
            ));
        }
        self.link_graphs_with(graphs, &UnitOptions::new(scope))
    }

    fn has_generators(&self) -> bool {
        !read(&self.generators).is_empty()
    }

    fn link_in(&self, options: &UnitOptions, inputs: &Inputs) -> Result<UnitId> {
        let scope = options.scope;
        read(&self.state).scope(scope)?;
        for path in &inputs.shared_libraries {
            self.load_once(path)?;
        }
        let mut generated = GeneratedInputs::default();
        let mut asked: FxHashSet<String> = FxHashSet::default();
        loop {
            let config = self.config();
            match self.link_once(&config, options, &Source::Inputs(inputs), &generated, None) {
                Err(Error::Unresolved(u)) if !u.undefined.is_empty() => {
                    let names: Vec<&str> = u.undefined.iter().map(|r| r.name.as_str()).collect();
                    if !self.generate(scope, &names, &mut generated, &mut asked)? {
                        return Err(Error::Unresolved(u));
                    }
                }
                r => return r,
            }
        }
    }

    /// Ask the generators of `scope` and of the scopes it searches for `names`; `true` if any
    /// answered. Each generator is asked for each name once per link.
    fn generate(
        &self,
        scope: ScopeId,
        names: &[&str],
        out: &mut GeneratedInputs,
        asked: &mut FxHashSet<String>,
    ) -> Result<bool> {
        let order: Vec<ScopeId> = {
            let st = read(&self.state);
            std::iter::once(scope)
                .chain(st.scope(scope)?.search.iter().copied())
                .collect()
        };
        let generators: Vec<(ScopeId, Arc<dyn DefinitionGenerator>)> =
            read(&self.generators).clone();
        let mut any = false;
        for name in names {
            if !asked.insert(name.to_string()) {
                continue;
            }
            'found: for s in &order {
                for (_, g) in generators.iter().filter(|(gs, _)| gs == s) {
                    // No lock is held: a generator may link other units of this session.
                    if out.take(name, g.generate(name, scope)?) {
                        any = true;
                        break 'found;
                    }
                }
            }
        }
        Ok(any)
    }

    /// One attempt to link `source` (and what generators gave) into a unit of `scope`.
    fn link_once(
        &self,
        config: &Config,
        options: &UnitOptions,
        source: &Source,
        generated: &GeneratedInputs,
        replacing: Option<u64>,
    ) -> Result<UnitId> {
        let scope = options.scope;
        let memory: &dyn CodeMemory = match &options.memory {
            Some(m) => &**m,
            None => &*self.memory,
        };
        let mut binder = Binder {
            session: self,
            scope,
            deps: RefCell::new(SmallVec::new()),
        };
        let (objects, archives, graphs, roots, fixed) = source.parts(generated);
        let functions = source.functions();
        let defines;
        let defines = if generated.defines.is_empty() {
            &config.defines
        } else {
            defines = config
                .defines
                .iter()
                .chain(&generated.defines)
                .map(|(k, v)| (k.clone(), *v))
                .collect::<FxHashMap<_, _>>();
            &defines
        };
        // The unit is published while the link's graph lives: its exports' names are
        // borrowed from it and copied once, into the scope's table.
        let result = link::link_then(
            &*self.executor,
            LinkInput {
                objects,
                archives,
                graphs: &graphs,
                functions,
                libraries: &config.libraries,
                defines,
                session: &binder,
                process_symbols: config.process_symbols,
                roots,
                allow: config.allow.as_ref(),
                fixed_address: fixed,
                want_map: config.want_map,
                collect_stats: config.collect_stats,
                debug: &config.debug,
                relink: options.relink,
                memory: (config.use_slabs || options.memory.is_some()).then_some(memory),
            },
            |mut unit| {
                let mut deps = binder.deps.borrow_mut();
                let published = self.publish(options, &mut unit, &deps, source.name(), replacing);
                // Publishing released the pins, refused or not.
                deps.clear();
                published
            },
        );
        // A link that failed before publishing still holds its pins.
        let deps = binder.deps.get_mut();
        if result.is_err() && !deps.is_empty() {
            read(&self.state).unpin(deps);
        }
        result
    }

    /// Enter a finalized unit into the session's tables, unless its strong definitions clash
    /// with a live unit's (a race with another thread, or a redefinition): then it is removed
    /// again and the clash reported. The unit is read where the link has it (not copied on
    /// the way: 288 bytes); its exports, their names copied into the scope's table, are freed
    /// by the caller after the lock.
    fn publish(
        &self,
        options: &UnitOptions,
        unit: &mut LinkedUnit<'_>,
        deps: &[u64],
        name: &str,
        replacing: Option<u64>,
    ) -> Result<UnitId> {
        // What does not need the tables is made before the lock: the record, the names'
        // keys. (The unit's lists are read where they are, not moved out first.)
        let record = Unit::new(NewUnit {
            alloc: unit.alloc,
            scope: options.scope,
            memory: options.memory.clone(),
            slab_ranges: &unit.slab_ranges,
            segments: &unit.segments,
            relink: unit.relink.take(),
            link_actions: unit.actions.take(),
            stats: unit.stats.take(),
            map: unit.map.take(),
        });
        let symbols = NewSymbols::new(&unit.exports);
        let published = write(&self.state).publish(record, &symbols, deps, name, replacing);
        match published {
            Ok(id) => Ok(UnitId(id)),
            Err(refused) => {
                // Nothing of it is in the tables: its memory goes back.
                let _ = self.release(*refused.unit);
                Err(refused.error)
            }
        }
    }

    // ---- queries ----

    /// The address of `name` as units of the default scope see it (hidden symbols of the
    /// default scope included).
    pub fn lookup(&self, name: &str) -> Option<ExecutorAddr> {
        self.lookup_symbol(self.default_scope(), name)
            .map(|s| s.addr)
    }

    /// The symbol `name` as units of `scope` see it: the scope's own symbols (hidden ones
    /// included), then the exported symbols of the scopes it searches.
    pub fn lookup_symbol(&self, scope: ScopeId, name: &str) -> Option<SymbolInfo> {
        read(&self.state).visible(scope, name).map(|d| d.info())
    }

    /// The symbols `unit` defines in its scope, by name.
    pub fn unit_symbols(&self, unit: UnitId) -> Result<Vec<(String, SymbolInfo)>> {
        let st = read(&self.state);
        let u = st.unit(unit)?;
        let scope = st.scope(u.scope())?;
        Ok(scope
            .symbols
            .of_unit(u.names(), unit.0)
            .into_iter()
            .map(|(name, def)| (name.to_string(), def.info()))
            .collect())
    }

    /// The live units `unit` binds to.
    pub fn dependencies(&self, unit: UnitId) -> Result<Vec<UnitId>> {
        Ok(read(&self.state)
            .unit(unit)?
            .deps()
            .iter()
            .map(|d| UnitId(*d))
            .collect())
    }

    /// The live units that bind to `unit`.
    pub fn dependents(&self, unit: UnitId) -> Result<Vec<UnitId>> {
        let mut d: Vec<UnitId> = read(&self.state)
            .unit(unit)?
            .dependents()
            .iter()
            .map(|d| UnitId(*d))
            .collect();
        d.sort_unstable();
        Ok(d)
    }

    /// The scope `unit` belongs to.
    pub fn unit_scope(&self, unit: UnitId) -> Result<ScopeId> {
        Ok(read(&self.state).unit(unit)?.scope())
    }

    /// The live units, oldest first.
    pub fn units(&self) -> Vec<UnitId> {
        let mut v: Vec<UnitId> = read(&self.state).units.keys().map(UnitId).collect();
        v.sort_unstable();
        v
    }

    /// The edges `unit` keeps (if it was linked with [`UnitOptions::relink`]): enough to apply
    /// them again after its code, or what it references, moves.
    pub fn relink_record(&self, unit: UnitId) -> Option<Arc<crate::link::relink::RelinkRecord>> {
        read(&self.state).units.get(&unit.0)?.relink().cloned()
    }

    /// The edges of other live units that target `unit` (only units that keep relink records
    /// are counted): (unit, index into its record's edges).
    pub fn incoming_edges(&self, unit: UnitId) -> Result<Vec<(UnitId, u32)>> {
        Ok(read(&self.state)
            .unit(unit)?
            .incoming()
            .iter()
            .map(|(u, i)| (UnitId(*u), *i))
            .collect())
    }

    /// The live unit whose memory holds `addr`: the unit, the index of the segment, the offset
    /// in it.
    pub fn unit_at(&self, addr: ExecutorAddr) -> Option<(UnitId, usize, u64)> {
        let (u, seg, off) = read(&self.state).unit_at(addr.0)?;
        Some((UnitId(u), usize::from(seg), off))
    }

    /// (address, size) of each segment of `unit`.
    pub fn unit_segments(&self, unit: UnitId) -> Result<Vec<(ExecutorAddr, u64)>> {
        Ok(read(&self.state)
            .unit(unit)?
            .segments()
            .iter()
            .map(|(a, n)| (ExecutorAddr(*a), *n))
            .collect())
    }

    /// What linking `unit` did (if [`Session::set_collect_stats`] was on when it linked).
    pub fn stats(&self, unit: UnitId) -> Option<LinkStats> {
        read(&self.state).units.get(&unit.0)?.stats().cloned()
    }

    /// Where everything of `unit` ended up (if [`Session::set_want_map`] was on when it linked).
    pub fn link_map(&self, unit: UnitId) -> Option<Arc<LinkMap>> {
        read(&self.state).units.get(&unit.0)?.map().cloned()
    }

    // ---- running ----

    /// Run the initializers (`.init_array`, constructors, …) of every unit not yet initialized,
    /// oldest first.
    pub fn run_initializers(&self) -> Result<()> {
        let pending: Vec<kiln_target::AllocId> = {
            let mut st = write(&self.state);
            let mut ids: Vec<u64> = st
                .units
                .iter()
                .filter(|(_, u)| !u.initialized())
                .map(|(k, _)| k)
                .collect();
            ids.sort_unstable();
            ids.iter()
                .filter_map(|k| {
                    let u = st.units.get_mut(k)?;
                    u.set_initialized();
                    Some(u.alloc)
                })
                .collect()
        };
        // No lock is held while JIT'd code runs: it may link or look up more.
        for alloc in pending {
            self.executor.run_initializers(alloc)?;
        }
        Ok(())
    }

    /// Call `int ENTRY(int argc, char **argv, char **envp)`, a function of a live unit.
    pub fn run_main(&self, entry: &str, args: &[String]) -> Result<i32> {
        let addr = self.function(entry)?;
        Ok(self.executor.run_main(addr, args)?)
    }

    /// Call `void NAME(void)`, a function of a live unit.
    pub fn call_void(&self, name: &str) -> Result<()> {
        let addr = self.function(name)?;
        Ok(self.executor.call_void(addr)?)
    }

    fn function(&self, name: &str) -> Result<ExecutorAddr> {
        match self.lookup_symbol(self.default_scope(), name) {
            Some(s) if s.kind == SymbolKind::Function => Ok(s.addr),
            Some(_) => Err(Error::Usage(format!("{name} is not a function"))),
            None => Err(Error::Usage(format!(
                "entry point {name} is not defined by the linked code"
            ))),
        }
    }

    // ---- removing ----

    /// Remove a unit: its destructors and exit handlers run, its registrations are undone, its
    /// memory is released, and its symbols disappear (a later unit may define them again).
    /// Refused while other live units bind to it ([`Error::HasDependents`]: remove those
    /// first, or use [`Session::remove_with_dependents`]) or a link in progress does.
    pub fn remove(&self, unit: UnitId) -> Result<()> {
        let record = write(&self.state).withdraw(unit.0)?;
        self.release(record)
    }

    /// Remove several units at once (a compaction's dropped units), as [`Session::remove`]
    /// removes one: newest first, destructors and dealloc actions run, memory released. Refused
    /// before anything is removed if a unit not among them binds to one of them
    /// ([`Error::HasDependents`]) or a link in progress does. Much cheaper than one `remove`
    /// each: the session's tables are visited once, and freed code is poisoned with one
    /// write per slab.
    pub fn remove_units(&self, units: &[UnitId]) -> Result<()> {
        let ids: Vec<u64> = units.iter().map(|u| u.0).collect();
        let withdrawn = write(&self.state).withdraw_all(&ids)?;
        let mut first_error = None;
        for u in &withdrawn {
            if let Err(e) = self.executor.deallocate(u.alloc) {
                first_error.get_or_insert(Error::Target(e));
            }
        }
        // Ranges back to their memories, one call per memory.
        let mut by_memory: Vec<(Arc<dyn CodeMemory>, Vec<crate::memory::SlabRange>)> = Vec::new();
        for u in withdrawn {
            let Some(m) = u.memory(&self.memory) else {
                continue;
            };
            match by_memory.iter_mut().find(|(k, _)| Arc::ptr_eq(k, m)) {
                Some((_, ranges)) => ranges.extend(u.slab_ranges()),
                None => by_memory.push((m.clone(), u.slab_ranges().into())),
            }
        }
        for (m, ranges) in by_memory {
            m.free(&*self.executor, &ranges);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Remove `unit` and every unit that depends on it, dependents first (their destructors
    /// and dealloc actions run before those of what they use). Returns the units removed.
    pub fn remove_with_dependents(&self, unit: UnitId) -> Result<Vec<UnitId>> {
        let order = read(&self.state).with_dependents(unit.0)?;
        let mut removed = Vec::new();
        for id in order {
            self.remove(UnitId(id))?;
            removed.push(UnitId(id));
        }
        Ok(removed)
    }

    /// Hand a withdrawn unit's memory back: deallocate in the executor (destructors, dealloc
    /// actions), then free its slab ranges. No lock is held while its destructors run.
    fn release(&self, unit: Unit) -> Result<()> {
        let dealloc = self.executor.deallocate(unit.alloc);
        if let Some(memory) = unit.memory(&self.memory) {
            memory.free(&*self.executor, &unit.slab_ranges());
        }
        Ok(dealloc?)
    }

    /// Change 4 or 8 naturally aligned bytes of finalized code or read-only data while it may
    /// run (e.g. retarget a call site's rel32): stored atomically through the slab's writable
    /// alias, then the instruction cache is made coherent. Only for units in slabs.
    pub fn patch(&self, addr: ExecutorAddr, bytes: &[u8]) -> Result<()> {
        let memory = {
            let st = read(&self.state);
            st.unit_at(addr.0)
                .and_then(|(u, _, _)| st.units.get(&u)?.memory(&self.memory).cloned())
        };
        let slab = memory
            .and_then(|m| m.slab_of(addr))
            .ok_or_else(|| Error::Usage(format!("{addr} is not in a slab of this session")))?;
        Ok(self.executor.patch(slab, addr, bytes)?)
    }

    /// Remove every unit (newest first) and release the session's memory, reporting the first
    /// failure. Dropping a session does the same, silently.
    pub fn close(self) -> Result<()> {
        self.shut_down()
    }

    /// Leave every unit live in the executor: dropping the session then frees only its own
    /// bookkeeping. For a process about to exit with its JIT'd code still mapped, as a native
    /// program exits with its code mapped (exit handlers may still run it).
    pub fn detach(self) {
        self.detached.store(true, Ordering::Relaxed);
        // The executor owns the mappings: it must outlive the session (and this process's exit
        // handlers), so one reference to it is kept for good. This is the one deliberate leak
        // of the API, once per detached session.
        let _: &'static Arc<dyn Executor> = Box::leak(Box::new(Arc::clone(&self.executor)));
    }

    fn shut_down(&self) -> Result<()> {
        if self.detached.load(Ordering::Relaxed) {
            return Ok(());
        }
        let ids: Vec<UnitId> = self.units().into_iter().rev().collect();
        let mut first_error = None;
        for id in ids {
            // Newest first: a unit's dependents are gone before it is withdrawn.
            let r = write(&self.state).withdraw(id.0).map(|u| self.release(u));
            match r {
                Ok(Ok(())) => {}
                // The executor is gone: nothing more can be undone there.
                Ok(Err(Error::Target(e))) if executor_gone(&e) => {
                    first_error.get_or_insert(Error::Target(e));
                    self.detached.store(true, Ordering::Relaxed);
                    return first_error.map_or(Ok(()), Err);
                }
                Ok(Err(e)) | Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.memory.release_all(&*self.executor);
        first_error.map_or(Ok(()), Err)
    }
}

fn executor_gone(e: &kiln_target::Error) -> bool {
    matches!(
        e,
        kiln_target::Error::ExecutorExited { .. } | kiln_target::Error::Channel(_)
    )
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = read(&self.state);
        f.debug_struct("Session")
            .field("target", &self.executor.info().triple)
            .field("units", &st.units.len())
            .field("scopes", &st.scopes.len())
            .finish()
    }
}

/// What one link attempt reads: a whole `Inputs`, or one graph.
pub(crate) enum Source<'s> {
    Inputs(&'s Inputs),
    /// Graphs linked together into one unit (one, or a batch).
    Graphs(&'s [InMemoryGraph]),
    /// Functions a JIT lends, linked together into one unit ([`Session::link_function`]).
    Functions(&'s [FunctionRef<'s>]),
}

type Parts<'s> = (
    Vec<(String, &'s [u8])>,
    Vec<(String, &'s [u8])>,
    SmallVec<[&'s InMemoryGraph; 1]>,
    &'s [String],
    Option<u64>,
);

impl<'s> Source<'s> {
    fn parts(&self, generated: &'s GeneratedInputs) -> Parts<'s> {
        let borrow = |v: &'s [(String, Vec<u8>)]| -> Vec<(String, &'s [u8])> {
            v.iter().map(|(n, b)| (n.clone(), b.as_slice())).collect()
        };
        match *self {
            // A JIT's usual link: its graphs alone, listed without the chains below.
            Source::Graphs(gs) if generated.is_empty() => {
                (Vec::new(), Vec::new(), gs.iter().collect(), &[], None)
            }
            Source::Graphs(gs) => (
                borrow(&generated.objects),
                borrow(&generated.archives),
                gs.iter().chain(&generated.graphs).collect(),
                &[],
                None,
            ),
            // Generators are not asked for a borrowed function (see `link_function_with`).
            Source::Functions(_) => (Vec::new(), Vec::new(), SmallVec::new(), &[], None),
            Source::Inputs(i) => {
                let mut objects = borrow(&i.objects);
                objects.extend(borrow(&generated.objects));
                let mut archives = borrow(&i.archives);
                archives.extend(borrow(&generated.archives));
                let graphs = i.graphs.iter().chain(&generated.graphs).collect();
                (objects, archives, graphs, &i.roots, i.fixed_address)
            }
        }
    }

    /// The borrowed functions among the inputs.
    fn functions(&self) -> &'s [FunctionRef<'s>] {
        match *self {
            Source::Functions(fs) => fs,
            _ => &[],
        }
    }

    /// How the unit is named in messages.
    fn name(&self) -> &str {
        match self {
            Source::Functions(fs) => fs.first().map_or("the new unit", |f| f.name),
            Source::Graphs(gs) => gs.first().map_or("the new unit", |g| g.name.as_str()),
            Source::Inputs(i) => i
                .objects
                .first()
                .map(|(n, _)| n.as_str())
                .or(i.graphs.first().map(|g| g.name.as_str()))
                .unwrap_or("the new unit"),
        }
    }
}

/// Binds a link's undefined names to the session's live units, pinning each unit it binds to
/// until the link publishes (or fails), so that no unit is removed under a link that uses it.
struct Binder<'s> {
    session: &'s Session,
    scope: ScopeId,
    /// The units bound to (a JIT's unit binds to a few: no allocation).
    deps: RefCell<SmallVec<[u64; 4]>>,
}

impl SessionSymbols for Binder<'_> {
    fn defines(&self, name: &[u8]) -> bool {
        let key = symbols::name_key(name);
        read(&self.session.state)
            .visible_keyed(self.scope, key, name)
            .is_some()
    }

    fn bind(&self, names: &[&[u8]], out: &mut [Option<u64>]) {
        // One read lock for the link's names, one key a name for every scope searched.
        let st = read(&self.session.state);
        let mut deps = self.deps.borrow_mut();
        for (&n, out) in names.iter().zip(out) {
            let Some(d) = st.visible_keyed(self.scope, symbols::name_key(n), n) else {
                continue;
            };
            let unit = d.unit();
            if !deps.contains(&unit) {
                if let Some(u) = st.units.get(&unit) {
                    u.pins.fetch_add(1, Ordering::Relaxed);
                    deps.push(unit);
                }
            }
            *out = Some(d.addr());
        }
    }
}

#[cold]
fn no_functions() -> Error {
    Error::Usage("link_functions_with: no functions to link".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
