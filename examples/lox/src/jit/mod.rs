//! The template JIT: tiering, and the bridges between the interpreter and machine code.
//!
//! - `--jit=on` (the default): functions start interpreted. A function is compiled when it has
//!   been called `HOT_CALLS` times, or when its loops have jumped back `HOT_LOOPS` times; a
//!   frame running in the interpreter then continues in machine code at the start of the loop
//!   it was in (on-stack replacement: the machine code keeps its values where the interpreter
//!   does, so any loop start is an entry).
//! - `--jit=always`: every function is compiled before its first call (when the source that
//!   declares it has been compiled to bytecode).
//! - `--jit=off`: no JIT at all.
//!
//! Bridges: the interpreter enters machine code through `call_compiled` (the entry trampoline,
//! with the VM parked — see `runtime.rs`); machine code calls a function that is not compiled
//! through its entry-table slot, which holds the interpreter bridge, or through a patchable
//! call site calling the bridge until the callee is compiled (then retargeted to it); the
//! bridge's helper runs the function in a nested interpreter loop (compiling it first if that
//! call made it hot). Both
//! directions nest freely; the Lox frame limit (64) bounds the depth. A runtime error raised
//! anywhere is reported from the frame records, which both tiers keep current, so the trace
//! is the interpreter's.
//!
//! `backend.rs` is the seam to kiln and kiln-jit (the code zone); `codeic.rs` the
//! code-patching inline caches; `heaprefs.rs` the heap references in code; `compile.rs`,
//! `ops.rs`, `props.rs` and `calls.rs` the compiler; `x64.rs` the encoder; `runtime.rs` the
//! helpers.

mod backend;
mod calls;
pub mod codeic;
mod compile;
pub mod heaprefs;
mod ops;
mod props;
pub mod runtime;
pub mod x64;
mod zone;

use std::rc::Rc;

use crate::heap::layout::closure;
use crate::value::Value;
use crate::vm::interp::RunResult;
use crate::vm::region::ctx;
use crate::vm::stack::{FRAMES_MAX, STACK_SLOTS};
use crate::vm::{RuntimeError, Vm};
use backend::Backend;
pub use backend::{DEFAULT_ZONE, MIN_ZONE};

/// Calls after which a function is compiled (`--jit=on`).
pub const HOT_CALLS: u32 = 20;
/// Loop back-edges after which the function running the loop is compiled.
pub const HOT_LOOPS: u32 = 100;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JitMode {
    Off,
    #[default]
    On,
    Always,
}

#[derive(Default, Debug, Clone)]
pub struct JitStats {
    pub functions_compiled: u64,
    pub code_bytes: u64,
    pub compile_failures: u64,
    /// The first failure's reason (a function the JIT cannot compile stays interpreted).
    pub first_failure: Option<String>,
    pub osr_entries: u64,
    /// Calls from machine code into the interpreter (through the bridge).
    pub interpreted_calls: u64,
    /// Cache hits and misses in machine code, per kind of site (`vm::Site`). Hits of inline
    /// fields and methods are counted by the code itself, in the context block.
    pub ic_hits: [u64; 4],
    pub ic_misses: [u64; 4],
    pub compile_nanos: u64,
    /// Compactions of the method region, functions they dropped, units they moved, their time,
    /// and compactions that failed (with the first reason).
    pub compactions: u64,
    pub functions_dropped: u64,
    pub units_moved: u64,
    pub compaction_nanos: u64,
    pub compaction_errors: u64,
    pub first_compaction_error: Option<String>,
    /// The code zone: its size, and its method region's code part.
    pub zone_bytes: u64,
    pub method_region_bytes: u64,
    /// Patchable call sites made (calls to functions not compiled yet), and retargeted (their
    /// callee was compiled).
    pub sites_made: u64,
    pub sites_patched: u64,
    /// Code-patching caches that could not be patched (the data path serves their sites).
    pub ic_patch_errors: u64,
    pub first_ic_patch_error: Option<String>,
}

/// What the JIT knows about one prototype.
#[derive(Default)]
struct ProtoState {
    calls: u32,
    loops: u32,
    /// The failure to compile it is remembered: it stays interpreted.
    failed: bool,
    /// Times it did not fit in the zone: each doubles the calls and loops it takes to try again
    /// (and `--jit=always` stops compiling it on sight), so that a zone too small for it does
    /// not make every call pay for a compilation.
    retries: u32,
    /// When it was last compiled or entered from Rust (the JIT's clock): compaction drops the
    /// least recently used.
    last_use: u64,
    compiled: Option<Compiled>,
}

struct Compiled {
    unit: kiln::UnitId,
    entry: u64,
    symbol: String,
    /// Entries at loop starts: bytecode index and address.
    osr: Vec<(usize, u64)>,
}

pub struct Jit {
    mode: JitMode,
    backend: Rc<Backend>,
    protos: Vec<ProtoState>,
    symbols: std::collections::HashSet<String>,
    /// Global slot → prototype of the function the program declares there.
    declared: std::collections::HashMap<usize, u32>,
    /// Prototype → the patchable call sites (unit, index) that call the interpreter bridge
    /// until it is compiled.
    waiting: std::collections::HashMap<u32, Vec<(kiln::UnitId, usize)>>,
    /// Prototype → the call sites retargeted to its code (which compaction points back at the
    /// bridge before dropping it).
    patched: std::collections::HashMap<u32, Vec<(kiln::UnitId, usize)>>,
    /// The prototype each compiled unit is the code of.
    unit_proto: std::collections::HashMap<kiln::UnitId, usize>,
    /// Each prototype's symbol, kept when compaction drops its code.
    proto_symbols: std::collections::HashMap<usize, String>,
    clock: u64,
    /// The code-patching caches of compiled property sites (shared with the GC's roots).
    pub code_ics: Rc<std::cell::RefCell<codeic::CodeIcs>>,
    /// The heap references compiled code embeds (shared with the GC's roots).
    pub code_refs: Rc<std::cell::RefCell<heaprefs::CodeRefs>>,
    pub stats: JitStats,
}

impl Jit {
    /// The JIT for `mode` (none for `Off`): a kiln session and a code zone of `zone_size`
    /// bytes (`None`: `DEFAULT_ZONE`) with the runtime linked in its fixed region.
    pub fn new(mode: JitMode, zone_size: Option<u64>) -> Result<Option<Box<Jit>>, String> {
        if mode == JitMode::Off {
            return Ok(None);
        }
        let zone_size = zone_size.unwrap_or(DEFAULT_ZONE);
        let backend = Backend::new(&runtime::helpers(), zone_size)?;
        let stats = JitStats {
            zone_bytes: backend.jit().zone().range().1,
            method_region_bytes: backend.method_region_bytes(),
            ..JitStats::default()
        };
        let backend = Rc::new(backend);
        let code_ics = codeic::CodeIcs::new(Rc::clone(&backend))?;
        Ok(Some(Box::new(Jit {
            mode,
            code_ics: Rc::new(std::cell::RefCell::new(code_ics)),
            code_refs: Rc::new(std::cell::RefCell::new(heaprefs::CodeRefs::new(Rc::clone(
                &backend,
            )))),
            backend,
            protos: Vec::new(),
            symbols: std::collections::HashSet::new(),
            declared: std::collections::HashMap::new(),
            waiting: std::collections::HashMap::new(),
            patched: std::collections::HashMap::new(),
            unit_proto: std::collections::HashMap::new(),
            proto_symbols: std::collections::HashMap::new(),
            clock: 0,
            stats,
        })))
    }

    /// `proto` was compiled at `entry`: the call sites waiting for it call it from now on.
    fn retarget_waiting(&mut self, proto: usize, entry: u64) -> Result<(), String> {
        let Some(sites) = self.waiting.remove(&(proto as u32)) else {
            return Ok(());
        };
        for (unit, index) in sites {
            if self.backend.retarget(unit, index, entry)? {
                self.stats.sites_patched += 1;
                self.patched
                    .entry(proto as u32)
                    .or_default()
                    .push((unit, index));
            }
        }
        Ok(())
    }

    /// A symbol for the function `name` (`lox:fib`), made unique with the prototype index when
    /// the name is taken (`lox:init#12`).
    fn symbol_for(&mut self, name: &str, proto: usize) -> String {
        if let Some(symbol) = self.proto_symbols.get(&proto) {
            // Compiled again after compaction dropped it: the same name.
            return symbol.clone();
        }
        let plain = format!("lox:{name}");
        let symbol = if self.symbols.contains(&plain) {
            format!("{plain}#{proto}")
        } else {
            plain
        };
        self.symbols.insert(symbol.clone());
        self.proto_symbols.insert(proto, symbol.clone());
        symbol
    }

    /// Compiles prototype `proto` and installs it in the entry table; false if it cannot be
    /// compiled (it stays interpreted). When the method region is full, the zone is compacted
    /// (see `zone.rs`) and the function compiled again (its direct callees may be gone).
    fn compile(&mut self, vm: &Vm, proto: usize) -> bool {
        let started = std::time::Instant::now();
        let mut linked = self.try_compile(vm, proto);
        if matches!(&linked, Err(e) if e.contains("no room")) && self.compact_zone(vm, proto) {
            linked = self.try_compile(vm, proto);
        }
        self.stats.compile_nanos += started.elapsed().as_nanos() as u64;
        match linked {
            Ok((symbol, linked, compiled)) => {
                let entry = linked.entry;
                self.stats.functions_compiled += 1;
                self.stats.code_bytes += compiled.code.bytes.len() as u64;
                vm.region.set_entry(proto, entry);
                self.unit_proto.insert(linked.unit, proto);
                self.clock += 1;
                self.protos[proto].last_use = self.clock;
                self.protos[proto].compiled = Some(Compiled {
                    unit: linked.unit,
                    entry,
                    symbol,
                    osr: compiled
                        .osr
                        .iter()
                        .map(|&(ip, offset)| (ip, entry + offset as u64))
                        .collect(),
                });
                true
            }
            Err(reason) => {
                self.stats.compile_failures += 1;
                let name = self.name_of(vm, proto);
                self.stats
                    .first_failure
                    .get_or_insert_with(|| format!("{name}: {reason}"));
                if reason.contains("no room") {
                    // The zone may have room later: hot again, it is tried again.
                    self.protos[proto].calls = 0;
                    self.protos[proto].retries += 1;
                    self.protos[proto].loops = 0;
                } else {
                    self.protos[proto].failed = true;
                }
                false
            }
        }
    }

    fn name_of(&self, vm: &Vm, proto: usize) -> String {
        match &vm.program.protos[proto].name {
            Some(name) => String::from_utf8_lossy(name).into_owned(),
            None => "script".to_string(),
        }
    }

    /// Compiles and links `proto`, and hooks its sites, caches and heap references up.
    fn try_compile(
        &mut self,
        vm: &Vm,
        proto: usize,
    ) -> Result<(String, backend::LinkedFunction, compile::Compiled), String> {
        let symbol_of = |p: usize| {
            self.protos
                .get(p)
                .and_then(|s| s.compiled.as_ref())
                .map(|c| c.symbol.clone())
        };
        let declared = |g: usize| self.declared.get(&g).copied();
        let cx = compile::Context {
            vm,
            symbol_of: &symbol_of,
            declared: &declared,
            patchable: self.backend.patchable(),
        };
        let compiled = compile::compile(&cx, proto)?;
        let name = self.name_of(vm, proto);
        let symbol = self.symbol_for(&name, proto);
        let linked = self.backend.link_function(&symbol, &compiled.code)?;
        for &(index, callee) in &compiled.waiting {
            self.waiting
                .entry(callee)
                .or_default()
                .push((linked.unit, index));
        }
        self.stats.sites_made += compiled.waiting.len() as u64;
        self.retarget_waiting(proto, linked.entry)?;
        self.code_refs
            .borrow_mut()
            .add(linked.unit, compiled.code.heap_refs.len());
        self.code_ics.borrow_mut().add_function(
            linked.unit,
            &compiled.property_ics,
            &vm.region,
            &|shape| obsolete_shape(vm, shape),
        )?;
        Ok((symbol, linked, compiled))
    }
}

/// After the compiler added prototypes: their entry-table slots lead to the interpreter;
/// with `--jit=always` they are all compiled now.
pub fn prepare(vm: &mut Vm) {
    let Some(mut jit) = vm.jit.take() else {
        return;
    };
    let count = vm.program.protos.len();
    let first_new = jit.protos.len();
    for proto in first_new..count {
        vm.region.set_entry(proto, jit.backend.bridge());
    }
    jit.protos.resize_with(count, ProtoState::default);
    for proto in &vm.program.protos[first_new..count] {
        jit.declared
            .extend(compile::declared_functions(&vm.program, proto));
    }
    if jit.mode == JitMode::Always {
        // A function's prototype comes before those of the functions it contains, and the
        // script's before all: compiled last first, callees are compiled before their callers
        // and are called directly.
        for proto in (first_new..count).rev() {
            jit.compile(vm, proto);
        }
    }
    vm.jit = Some(jit);
}

/// Compiles `proto` now (the VM lends the JIT to itself for the time).
fn compile_now(vm: &mut Vm, proto: usize) -> Option<u64> {
    let mut jit = vm.jit.take()?;
    let entry = jit
        .compile(vm, proto)
        .then(|| jit.protos[proto].compiled.as_ref().map(|c| c.entry))
        .flatten();
    vm.jit = Some(jit);
    entry
}

/// The interpreter is about to call `proto`: its machine code, if it is compiled or this call
/// makes it hot.
#[inline(never)]
pub fn entry_on_call(vm: &mut Vm, proto: usize) -> Option<u64> {
    let jit = vm.jit.as_mut()?;
    jit.clock += 1;
    let now = jit.clock;
    let state = jit.protos.get_mut(proto)?;
    if let Some(compiled) = &state.compiled {
        state.last_use = now;
        return Some(compiled.entry);
    }
    if state.failed {
        return None;
    }
    state.calls += 1;
    let retries = state.retries.min(16);
    if state.calls >= HOT_CALLS << retries || (jit.mode == JitMode::Always && retries == 0) {
        compile_now(vm, proto)
    } else {
        None
    }
}

/// The interpreter jumped back to the loop starting at `ip` in `proto`: the entry into
/// machine code there, if the function is compiled or this makes it hot.
#[inline(never)]
pub fn osr_on_loop(vm: &mut Vm, proto: usize, ip: usize) -> Option<u64> {
    let jit = vm.jit.as_mut()?;
    let state = jit.protos.get_mut(proto)?;
    if state.compiled.is_none() {
        if state.failed {
            return None;
        }
        state.loops += 1;
        let retries = state.retries.min(16);
        let always = jit.mode == JitMode::Always && retries == 0;
        if state.loops < HOT_LOOPS << retries && !always {
            return None;
        }
        compile_now(vm, proto)?;
    }
    let jit = vm.jit.as_mut()?;
    let compiled = jit.protos.get(proto)?.compiled.as_ref()?;
    let entry = compiled.osr.iter().find(|(at, _)| *at == ip).map(|e| e.1)?;
    jit.stats.osr_entries += 1;
    Some(entry)
}

/// Runs machine code at `entry` — a function's entry (its frame not pushed yet, slot 0 at
/// `base`, `argc` arguments after it), or a loop's entry (the top frame continues there) — and
/// returns what the function returns. The VM is parked meanwhile.
pub fn call_compiled(
    vm: Box<Vm>,
    entry: u64,
    base: usize,
    argc: usize,
    closure: Value,
) -> RunResult {
    let Some(jit) = vm.jit.as_ref() else {
        return (vm, Err(RuntimeError(b"kiln-lox: no JIT\n".to_vec())));
    };
    let backend = Rc::clone(&jit.backend);
    let ctx_address = vm.region.base_address();
    runtime::park(vm);
    let result = backend.enter(ctx_address, entry, base as u64, argc as u64, closure.0);
    let mut vm = runtime::unpark();
    if vm.region.ctx_word(ctx::ERROR) != 0 {
        vm.region.set_ctx_word(ctx::ERROR, 0);
        let error = vm
            .pending_error
            .take()
            .unwrap_or_else(|| RuntimeError(b"kiln-lox: lost runtime error\n".to_vec()));
        return (vm, Err(error));
    }
    (vm, Ok(Value(result)))
}

/// Runs the script whose closure and frame `Vm::call_script` set up: in machine code if it is
/// compiled, else in the interpreter.
pub fn run_script(vm: Box<Vm>, script: usize) -> RunResult {
    let compiled = vm
        .jit
        .as_ref()
        .and_then(|jit| jit.protos.get(script))
        .and_then(|s| s.compiled.as_ref())
        .map(|c| c.entry);
    match compiled {
        Some(entry) => {
            // The function's entry pushes the frame record itself.
            vm.region.set_frame_count(0);
            let closure = vm.region.stack(0);
            call_compiled(vm, entry, 0, 0, closure)
        }
        None => vm.run(0),
    }
}

/// The interpreter bridge: machine code calls `closure` (slot 0 at `base`, `argc` arguments)
/// and it is not compiled. Checked as the interpreter checks a call, then run in a loop of its
/// own (or compiled first, if this call makes it hot).
pub fn call_interpreted(mut vm: Box<Vm>, base: usize, argc: usize, callee: Value) -> RunResult {
    if let Some(jit) = vm.jit.as_mut() {
        jit.stats.interpreted_calls += 1;
    }
    let program = Rc::clone(&vm.program);
    let proto_index = vm.heap.mem.load(callee.as_obj(), closure::PROTO) as usize;
    let proto = &program.protos[proto_index];
    let fc = vm.region.frame_count();
    if argc != proto.arity {
        let message = format!("Expected {} arguments but got {}.", proto.arity, argc);
        let error = vm.runtime_error(&program, message.as_bytes());
        return (vm, Err(error));
    }
    if fc == FRAMES_MAX || base + proto.max_stack > STACK_SLOTS {
        let error = vm.runtime_error(&program, b"Stack overflow.");
        return (vm, Err(error));
    }
    if let Some(entry) = entry_on_call(&mut vm, proto_index) {
        return call_compiled(vm, entry, base, argc, callee);
    }
    vm.region.set_frame(fc, callee, proto.code_start, base);
    vm.region.set_frame_count(fc + 1);
    vm.sp = base + argc + 1;
    vm.stats.calls += 1;
    vm.run(fc)
}

/// Whether no new instance can get `shape` any more: its root is no longer its class's root
/// shape (the class learned to keep more fields inline).
fn obsolete_shape(vm: &Vm, shape: u64) -> bool {
    use crate::heap::layout::{class, shape as layout_shape};
    let mem = &vm.heap.mem;
    let mut root = Value(shape);
    // Chains are as long as an instance's field count: bounded by the heap.
    while root.is_obj() {
        let parent = mem.load_value(root.as_obj(), layout_shape::PARENT);
        if !parent.is_obj() {
            break;
        }
        root = parent;
    }
    if !root.is_obj() {
        return false;
    }
    let class = mem.load_value(root.as_obj(), layout_shape::CLASS);
    class.is_obj() && mem.load_value(class.as_obj(), class::ROOT_SHAPE) != root
}

/// The shape of the instance `depth` slots below the top of the stack, if it is one, with
/// the number of collections so far (a shape read before a collection is stale after it).
pub fn receiver_shape(vm: &Vm, depth: usize) -> Option<(u64, u64)> {
    let receiver = vm.region.stack(vm.sp.checked_sub(1 + depth)?);
    let collections = vm.heap.stats.collections;
    vm.heap
        .mem
        .has_tag(receiver, crate::heap::layout::Tag::Instance)
        .then(|| {
            vm.heap
                .mem
                .load_value(receiver.as_obj(), crate::heap::layout::instance::SHAPE)
                .0
        })
        .map(|shape| (shape, collections))
}

/// The runtime helper of property site `ic_index` has just handled a receiver of `shape`
/// (and its region cache learned it, unless the collection it may have run moved it): the
/// site's code-patching caches learn what the region's cache says about that shape.
pub fn learn_property(vm: &mut Vm, ic_index: usize, shape: Option<(u64, u64)>) {
    let Some(jit) = vm.jit.as_ref() else {
        return;
    };
    let Some((shape, collections)) = shape else {
        return;
    };
    if collections != vm.heap.stats.collections {
        // The shape moved: the next miss learns it.
        return;
    }
    let Some(entry) = vm.region.ic_find(ic_index, shape) else {
        return;
    };
    let learned = jit
        .code_ics
        .borrow_mut()
        .learn(ic_index, &entry, &|shape| obsolete_shape(vm, shape));
    if let Err(e) = learned {
        // A cache that cannot be patched stays empty: the data path serves the site.
        if let Some(jit) = vm.jit.as_mut() {
            jit.stats.ic_patch_errors += 1;
            jit.stats.first_ic_patch_error.get_or_insert(e);
        }
    }
}

impl Vm {
    /// Hands `error` to the machine code that called a helper: it unwinds to whoever entered
    /// it, which takes the error back (`call_compiled`).
    pub(crate) fn raise_in_machine_code(&mut self, error: RuntimeError) {
        self.pending_error = Some(error);
        self.region.set_ctx_word(ctx::ERROR, 1);
    }

    /// Inline-cache hits machine code counted, per kind of site.
    pub fn jit_ic_hits(&self) -> [u64; 4] {
        let mut hits = self.jit.as_ref().map_or([0; 4], |j| j.stats.ic_hits);
        for (site, hit) in hits.iter_mut().enumerate() {
            *hit += self.region.ctx_word(ctx::JIT_IC_HITS + 8 * site as i32);
        }
        hits
    }
}
