//! The virtual machine: the regions it runs on (heap, value stack, frames, globals), the GC's
//! view of its roots, interpretation of a source, printing and runtime errors.
//!
//! `interp.rs` is the bytecode loop; `objects.rs` the operations that allocate or look things
//! up (classes, instances, closures, slow paths of inline caches); `format.rs` prints numbers.

mod format;
pub mod interp;
pub(crate) mod objects;
pub mod region;
pub mod stack;

use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;

use crate::bytecode::{Program, Proto};
use crate::heap::layout::{self, Tag};
use crate::heap::{strings, ExternalRoots, Heap, HeapExhausted, HeapStats, RootSet};
use crate::value::{ObjRef, Value};
use region::VmRegion;

pub use format::format_number;

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Collect at every allocation.
    pub gc_stress: bool,
    /// Count instructions (a second copy of the loop) for `--stats`.
    pub count_instructions: bool,
    pub jit: crate::jit::JitMode,
    /// Bytes of the JIT's code zone (`--code-zone`; `None`: `jit::DEFAULT_ZONE`).
    pub code_zone: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InterpretResult {
    Ok,
    CompileError,
    RuntimeError,
}

/// Kinds of inline-cache sites, for the statistics.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Site {
    GetProperty = 0,
    SetProperty = 1,
    Invoke = 2,
    Super = 3,
}

const SITE_NAMES: [&str; 4] = ["get property", "set property", "invoke", "super"];

#[derive(Default, Debug, Clone)]
pub struct VmStats {
    pub instructions: u64,
    pub calls: u64,
    pub ic_hits: [u64; 4],
    pub ic_misses: [u64; 4],
    pub shapes: u64,
}

/// The text of a runtime error: message and stack trace, as clox prints them.
#[derive(Debug)]
pub struct RuntimeError(pub Vec<u8>);

pub struct Vm {
    pub heap: Heap,
    /// Frames, value stack, globals (by slot; `Value::UNDEFINED` until defined), constants of
    /// all compiled functions, inline caches, and the context block JIT'd code shares.
    pub region: VmRegion,
    /// Next free value-stack slot (valid whenever the loop calls out).
    pub sp: usize,
    /// Global names by slot. Slots are given out by name at compile time, so a global access
    /// is an index, never a lookup.
    pub(crate) global_names: Vec<Box<[u8]>>,
    global_slots: HashMap<Box<[u8]>, u32>,
    /// Constants in the region.
    constant_count: usize,
    /// The constant naming the property of each inline cache.
    pub ic_names: Vec<u32>,
    /// Shared with the loops running it (nested when machine code calls back into the
    /// interpreter); only the compiler changes it, between runs.
    pub program: Rc<Program>,
    /// The template JIT; `None` with `--jit=off`.
    pub jit: Option<Box<crate::jit::Jit>>,
    /// The runtime error a runtime helper raised, on its way out through machine code.
    pub pending_error: Option<RuntimeError>,
    /// The interned "init", to recognize initializers.
    pub init_string: Value,
    pub stats: VmStats,
    external_roots: Vec<Box<dyn ExternalRoots>>,
    pub(crate) count_instructions: bool,
    /// Buffered stdout.
    out: Vec<u8>,
    sink: Box<dyn Write>,
    /// Scratch for building strings.
    scratch: Vec<u8>,
}

/// The VM's memory could not be mapped.
#[derive(Debug)]
pub struct VmError(pub String);

impl std::fmt::Display for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot map the VM's memory: {}", self.0)
    }
}

/// Sizes of the program's tables before a compile, to take a failed compile back.
pub struct Checkpoint {
    code: usize,
    protos: usize,
    constants: usize,
    ics: usize,
}

impl Vm {
    pub fn new(options: Options, sink: Box<dyn Write>) -> Result<Vm, VmError> {
        let heap = Heap::new(options.gc_stress).map_err(|e| VmError(e.0))?;
        let region = VmRegion::new().map_err(VmError)?;
        let jit = crate::jit::Jit::new(options.jit, options.code_zone).map_err(VmError)?;
        let mut vm = Vm {
            heap,
            region,
            sp: 0,
            global_names: Vec::new(),
            global_slots: HashMap::new(),
            constant_count: 0,
            ic_names: Vec::new(),
            program: Rc::new(Program::default()),
            jit,
            pending_error: None,
            init_string: Value::NIL,
            stats: VmStats::default(),
            external_roots: Vec::new(),
            count_instructions: options.count_instructions,
            out: Vec::new(),
            sink,
            scratch: Vec::new(),
        };
        vm.publish_heap_base();
        let jit_roots = vm.jit.as_ref().map(|jit| {
            (
                crate::jit::codeic::CodeIcRoots(Rc::clone(&jit.code_ics)),
                crate::jit::heaprefs::CodeRefRoots(Rc::clone(&jit.code_refs)),
            )
        });
        if let Some((ics, refs)) = jit_roots {
            vm.add_external_roots(Box::new(ics));
            vm.add_external_roots(Box::new(refs));
        }
        // A fresh heap always has room for these.
        vm.init_string = vm.intern(b"init").unwrap_or(Value::NIL);
        vm.define_native(b"clock", objects::NATIVE_CLOCK);
        Ok(vm)
    }

    /// Tells JIT'd code where the current semispace is.
    fn publish_heap_base(&self) {
        self.region
            .set_ctx_word(region::ctx::HEAP_BASE, self.heap.mem.base_address());
    }

    /// Compiles and runs `source`. Errors are reported on stderr, as clox reports them.
    /// The VM is handed over for the run (see `interp.rs`) and comes back with the result.
    pub fn interpret(mut self: Box<Self>, source: &[u8]) -> (Box<Self>, InterpretResult) {
        let Some(script) = crate::compiler::compile(&mut self, source) else {
            return (self, InterpretResult::CompileError);
        };
        crate::jit::prepare(&mut self);
        let (mut vm, result) = match self.call_script(script) {
            Ok(()) => crate::jit::run_script(self, script),
            Err(error) => (self, Err(error)),
        };
        if let Err(RuntimeError(text)) = result {
            vm.flush();
            let _ = std::io::stderr().write_all(&text);
            vm.reset_stack();
            return (vm, InterpretResult::RuntimeError);
        }
        (vm, InterpretResult::Ok)
    }

    /// The program, for the compiler (nothing runs while it compiles, so it is not shared).
    pub fn program_mut(&mut self) -> &mut Program {
        Rc::make_mut(&mut self.program)
    }

    /// Puts the script's closure in slot 0 and its frame record at index 0.
    fn call_script(&mut self, proto: usize) -> Result<(), RuntimeError> {
        self.reset_stack();
        if self.reserve(layout::closure::UPVALUES).is_err() {
            return Err(RuntimeError(b"Out of memory.\n".to_vec()));
        }
        let closure = self.heap.alloc(Tag::Closure, layout::closure::UPVALUES);
        self.heap
            .mem
            .store(closure, layout::closure::PROTO, proto as u64);
        self.region.set_stack(0, Value::obj(closure));
        self.sp = 1;
        let Proto {
            code_start: start,
            max_stack,
            ..
        } = self.program.protos[proto];
        if max_stack > stack::STACK_SLOTS {
            // Only a script with tens of thousands of pending temporaries gets here.
            let line = self.program.lines.get(start).copied().unwrap_or(1);
            return Err(RuntimeError(
                format!("Stack overflow.\n[line {line}] in script\n").into_bytes(),
            ));
        }
        self.region.set_frame(0, Value::obj(closure), start, 0);
        self.region.set_frame_count(1);
        Ok(())
    }

    pub(crate) fn reset_stack(&mut self) {
        self.sp = 0;
        self.region.set_frame_count(0);
        self.region.set_open_upvalues(Value::NIL);
    }

    /// Registers references held outside the VM (see `ExternalRoots`).
    pub fn add_external_roots(&mut self, roots: Box<dyn ExternalRoots>) {
        self.external_roots.push(roots);
    }

    /// The slot of global `name`, given out on first sight; `None` when the region's table of
    /// globals is full.
    pub fn global_slot(&mut self, name: &[u8]) -> Option<u32> {
        if let Some(&slot) = self.global_slots.get(name) {
            return Some(slot);
        }
        let slot = self.global_names.len();
        if slot >= region::MAX_GLOBALS {
            return None;
        }
        self.region.set_global(slot, Value::UNDEFINED);
        self.global_names.push(name.into());
        self.global_slots.insert(name.into(), slot as u32);
        Some(slot as u32)
    }

    pub fn global_count(&self) -> usize {
        self.global_names.len()
    }

    /// Adds a constant (a GC root); `None` when the region's table is full.
    pub fn add_constant(&mut self, value: Value) -> Option<u32> {
        let index = self.constant_count;
        if index >= region::MAX_CONSTANTS {
            return None;
        }
        self.region.set_constant(index, value);
        self.constant_count += 1;
        Some(index as u32)
    }

    #[inline]
    pub fn constant(&self, index: usize) -> Value {
        self.region.constant(index)
    }

    /// A new, empty inline cache for the property named by constant `name`; `None` when the
    /// region's table is full.
    pub fn add_inline_cache(&mut self, name: u32) -> Option<u32> {
        let index = self.ic_names.len();
        if index >= region::MAX_ICS {
            return None;
        }
        self.region.clear_ic(index);
        self.ic_names.push(name);
        Some(index as u32)
    }

    pub fn program_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            code: self.program.code.len(),
            protos: self.program.protos.len(),
            constants: self.constant_count,
            ics: self.ic_names.len(),
        }
    }

    pub fn program_rollback(&mut self, to: Checkpoint) {
        let program = self.program_mut();
        program.code.truncate(to.code);
        program.lines.truncate(to.code);
        program.protos.truncate(to.protos);
        self.constant_count = to.constants;
        self.ic_names.truncate(to.ics);
    }

    // ---- allocation and GC ----

    /// Makes sure `words` can be allocated without collecting (see `heap`): may collect now,
    /// which moves objects and rewrites every root.
    #[inline]
    pub fn reserve(&mut self, words: usize) -> Result<(), HeapExhausted> {
        if self.heap.needs_collection(words) {
            self.collect(words)
        } else {
            Ok(())
        }
    }

    fn collect(&mut self, words: usize) -> Result<(), HeapExhausted> {
        let mut roots = VmRoots {
            region: &self.region,
            sp: self.sp,
            init_string: &mut self.init_string,
            globals: self.global_names.len(),
            constants: self.constant_count,
            ics: self.ic_names.len(),
            external: &mut self.external_roots,
        };
        let result = self.heap.collect(&mut roots, words);
        self.publish_heap_base();
        result
    }

    /// The interned string with these bytes, allocating it if new.
    pub fn intern(&mut self, bytes: &[u8]) -> Result<Value, HeapExhausted> {
        if bytes.len() > strings::MAX_STRING_LEN {
            return Err(HeapExhausted);
        }
        if let Some(s) = self.heap.find_string(bytes) {
            return Ok(Value::obj(s));
        }
        self.reserve(strings::string_words(bytes.len()))?;
        Ok(Value::obj(self.heap.alloc_string(bytes)))
    }

    fn define_native(&mut self, name: &[u8], id: u64) {
        let Some(slot) = self.global_slot(name) else {
            return;
        };
        if self.reserve(layout::native::WORDS).is_ok() {
            let native = self.heap.alloc(Tag::Native, layout::native::WORDS);
            self.heap.mem.store(native, layout::native::ID, id);
            self.region.set_global(slot as usize, Value::obj(native));
        }
    }

    // ---- output ----

    /// `print value`; `protos` are the program's (taken out of the VM while it runs).
    pub(crate) fn write_value(&mut self, value: Value, protos: &[Proto]) {
        let mut out = std::mem::take(&mut self.out);
        self.append_value(value, protos, &mut out);
        out.push(b'\n');
        self.out = out;
        if self.out.len() >= 1 << 16 {
            self.flush();
        }
    }

    /// Appends `value` as `print` shows it.
    pub fn append_value(&self, value: Value, protos: &[Proto], out: &mut Vec<u8>) {
        if value.is_number() {
            format_number(value.as_number(), out);
        } else if value.is_obj() {
            self.append_object(value.as_obj(), protos, out);
        } else if value == Value::TRUE {
            out.extend_from_slice(b"true");
        } else if value == Value::FALSE {
            out.extend_from_slice(b"false");
        } else {
            out.extend_from_slice(b"nil");
        }
    }

    fn append_object(&self, obj: ObjRef, protos: &[Proto], out: &mut Vec<u8>) {
        use layout::{bound_method, class, instance, shape};
        let mem = &self.heap.mem;
        let tag = mem.tag(obj);
        if tag == Tag::String as u64 {
            strings::append_bytes(mem, obj, out);
        } else if tag == Tag::Closure as u64 {
            self.append_function(obj, protos, out);
        } else if tag == Tag::BoundMethod as u64 {
            self.append_function(
                mem.load_value(obj, bound_method::METHOD).as_obj(),
                protos,
                out,
            );
        } else if tag == Tag::Class as u64 {
            strings::append_bytes(mem, mem.load_value(obj, class::NAME).as_obj(), out);
        } else if tag == Tag::Instance as u64 {
            let shape = mem.load_value(obj, instance::SHAPE).as_obj();
            let class = mem.load_value(shape, shape::CLASS).as_obj();
            strings::append_bytes(mem, mem.load_value(class, class::NAME).as_obj(), out);
            out.extend_from_slice(b" instance");
        } else if tag == Tag::Native as u64 {
            out.extend_from_slice(b"<native fn>");
        } else {
            out.extend_from_slice(b"<internal object>");
        }
    }

    fn append_function(&self, closure: ObjRef, protos: &[Proto], out: &mut Vec<u8>) {
        let proto = self.heap.mem.load(closure, layout::closure::PROTO) as usize;
        match &protos[proto].name {
            None => out.extend_from_slice(b"<script>"),
            Some(name) => {
                out.extend_from_slice(b"<fn ");
                out.extend_from_slice(name);
                out.push(b'>');
            }
        }
    }

    pub fn flush(&mut self) {
        let _ = self.sink.write_all(&self.out);
        let _ = self.sink.flush();
        self.out.clear();
    }

    /// Builds the runtime error text: the message, then one line per frame, innermost first.
    /// The frames' saved ips must be current.
    pub(crate) fn runtime_error(&self, program: &Program, message: &[u8]) -> RuntimeError {
        let mut text = message.to_vec();
        text.push(b'\n');
        for index in (0..self.region.frame_count()).rev() {
            let closure = self.region.frame_closure(index).as_obj();
            let proto =
                &program.protos[self.heap.mem.load(closure, layout::closure::PROTO) as usize];
            let ip = self.region.frame_ip(index);
            let line = program
                .lines
                .get(ip.saturating_sub(1))
                .copied()
                .unwrap_or(0);
            text.extend_from_slice(format!("[line {line}] in ").as_bytes());
            match &proto.name {
                None => text.extend_from_slice(b"script\n"),
                Some(name) => {
                    text.extend_from_slice(name);
                    text.extend_from_slice(b"()\n");
                }
            }
        }
        RuntimeError(text)
    }

    /// `--stats` report.
    pub fn write_stats(&self, to: &mut dyn Write) -> std::io::Result<()> {
        let s = &self.stats;
        let HeapStats {
            collections,
            bytes_allocated,
            bytes_moved,
            refs_updated,
            peak_semispace_bytes,
        } = self.heap.stats;
        writeln!(to, "kiln-lox stats (interpreter):")?;
        if self.count_instructions {
            writeln!(to, "  instructions executed   {}", s.instructions)?;
        }
        writeln!(to, "  calls                   {}", s.calls)?;
        for (i, name) in SITE_NAMES.iter().enumerate() {
            writeln!(
                to,
                "  ic {name:<20} {} hits, {} misses",
                s.ic_hits[i], s.ic_misses[i]
            )?;
        }
        if let Some(jit) = &self.jit {
            let j = &jit.stats;
            writeln!(to, "kiln-lox stats (JIT):")?;
            writeln!(to, "  functions compiled      {}", j.functions_compiled)?;
            writeln!(to, "  bytes of code           {}", j.code_bytes)?;
            writeln!(to, "  compile time (us)       {}", j.compile_nanos / 1000)?;
            writeln!(to, "  not compiled            {}", j.compile_failures)?;
            if let Some(reason) = &j.first_failure {
                writeln!(to, "    first: {reason}")?;
            }
            writeln!(
                to,
                "  code zone bytes         {} (method region code {})",
                j.zone_bytes, j.method_region_bytes
            )?;
            writeln!(to, "  call sites made         {}", j.sites_made)?;
            writeln!(to, "  call sites patched      {}", j.sites_patched)?;
            let ics = jit.code_ics.borrow().stats;
            writeln!(to, "  code ic mono sets       {}", ics.monomorphic_sets)?;
            writeln!(to, "  code ic pics built      {}", ics.pics_built)?;
            writeln!(to, "  code ic megamorphic     {}", ics.megamorphic)?;
            writeln!(to, "  code ic gc rewrites     {}", ics.gc_rewrites)?;
            writeln!(to, "  code ic patch errors    {}", j.ic_patch_errors)?;
            let refs = jit.code_refs.borrow().stats;
            writeln!(to, "  heap refs in code       {}", refs.embedded)?;
            writeln!(to, "  heap refs updated       {}", refs.updated)?;
            if let Some(e) = &j.first_ic_patch_error {
                writeln!(to, "    first: {e}")?;
            }
            writeln!(to, "  compactions             {}", j.compactions)?;
            writeln!(to, "  functions dropped       {}", j.functions_dropped)?;
            writeln!(to, "  units moved             {}", j.units_moved)?;
            writeln!(
                to,
                "  compaction time (us)    {}",
                j.compaction_nanos / 1000
            )?;
            writeln!(to, "  compaction errors       {}", j.compaction_errors)?;
            if let Some(e) = &j.first_compaction_error {
                writeln!(to, "    first: {e}")?;
            }
            writeln!(to, "  loop entries (OSR)      {}", j.osr_entries)?;
            writeln!(to, "  calls into interpreter  {}", j.interpreted_calls)?;
            let hits = self.jit_ic_hits();
            for (i, name) in SITE_NAMES.iter().enumerate() {
                writeln!(
                    to,
                    "  jit ic {name:<16} {} hits, {} misses",
                    hits[i], j.ic_misses[i]
                )?;
            }
        }
        writeln!(to, "kiln-lox stats (heap):")?;
        writeln!(to, "  shapes created          {}", s.shapes)?;
        writeln!(to, "  inline caches           {}", self.ic_names.len())?;
        writeln!(to, "  gc collections          {collections}")?;
        let bytes_allocated = bytes_allocated + self.region.ctx_word(region::ctx::JIT_ALLOCATED);
        writeln!(to, "  bytes allocated         {bytes_allocated}")?;
        writeln!(to, "  bytes moved by gc       {bytes_moved}")?;
        writeln!(to, "  references updated      {refs_updated}")?;
        writeln!(to, "  peak semispace bytes    {peak_semispace_bytes}")?;
        writeln!(to, "  interned strings        {}", self.heap.strings.len())
    }
}

/// The VM's roots, borrowed apart from the heap so that the collector can rewrite them.
struct VmRoots<'a> {
    region: &'a VmRegion,
    sp: usize,
    init_string: &'a mut Value,
    globals: usize,
    constants: usize,
    ics: usize,
    external: &'a mut Vec<Box<dyn ExternalRoots>>,
}

impl RootSet for VmRoots<'_> {
    fn visit_strong(&mut self, visit: &mut dyn FnMut(&mut u64)) {
        let region = self.region;
        let mut visit_word = |word: u64| -> u64 {
            let mut word = word;
            visit(&mut word);
            word
        };
        for slot in 0..self.sp.min(stack::STACK_SLOTS) {
            region.set_stack(slot, Value(visit_word(region.stack(slot).0)));
        }
        for frame in 0..region.frame_count().min(stack::FRAMES_MAX) {
            region.set_frame_closure(frame, Value(visit_word(region.frame_closure(frame).0)));
        }
        region.set_open_upvalues(Value(visit_word(region.open_upvalues().0)));
        for slot in 0..self.globals {
            region.set_global(slot, Value(visit_word(region.global(slot).0)));
        }
        for index in 0..self.constants {
            region.set_constant(index, Value(visit_word(region.constant(index).0)));
        }
        visit(&mut self.init_string.0);
        let mut held = Vec::new();
        for roots in self.external.iter_mut() {
            held.clear();
            roots.read_roots(&mut held);
            for slot in held.iter_mut() {
                visit(slot);
            }
            roots.write_roots(&held);
        }
    }

    fn visit_weak(&mut self, survivor: &mut dyn Fn(u64) -> Option<u64>) {
        for index in 0..self.ics {
            self.region.sweep_ic(index, survivor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Stands in for JIT'd code holding heap references in its instructions.
    struct HeldByCode(Rc<RefCell<Vec<u64>>>);

    impl ExternalRoots for HeldByCode {
        fn read_roots(&self, out: &mut Vec<u64>) {
            out.extend_from_slice(&self.0.borrow());
        }
        fn write_roots(&mut self, updated: &[u64]) {
            *self.0.borrow_mut() = updated.to_vec();
        }
    }

    fn string_of(vm: &Vm, v: Value) -> Vec<u8> {
        let mut bytes = Vec::new();
        strings::append_bytes(&vm.heap.mem, v.as_obj(), &mut bytes);
        bytes
    }

    #[test]
    fn external_roots_keep_objects_alive_and_are_updated_after_each_move() {
        let mut vm = Vm::new(
            Options {
                gc_stress: true,
                ..Options::default()
            },
            Box::new(std::io::sink()),
        )
        .expect("map the VM");
        let held = vm.intern(b"held by machine code").expect("intern");
        let code = Rc::new(RefCell::new(vec![held.0, Value::number(1.5).0]));
        vm.add_external_roots(Box::new(HeldByCode(code.clone())));
        let mut offsets = vec![held];
        for i in 0..20 {
            // Under --gc-stress every allocation collects. Constants are copied before external
            // roots, so each new live constant shifts the held string to a new offset.
            let live = vm.intern(format!("live {i}").as_bytes()).expect("intern");
            vm.add_constant(live).expect("room for a constant");
            offsets.push(Value(code.borrow()[0]));
        }
        assert!(vm.heap.stats.collections >= 20);
        let now = Value(code.borrow()[0]);
        assert_eq!(string_of(&vm, now), b"held by machine code");
        assert_eq!(
            Value(code.borrow()[1]),
            Value::number(1.5),
            "non-references are left alone"
        );
        assert!(
            offsets.windows(2).any(|w| w[0] != w[1]),
            "the string never moved"
        );
        assert_eq!(
            vm.intern(b"held by machine code").expect("intern"),
            now,
            "still interned"
        );
    }

    #[test]
    fn unreferenced_strings_leave_the_intern_table() {
        let mut vm = Vm::new(
            Options {
                gc_stress: true,
                ..Options::default()
            },
            Box::new(std::io::sink()),
        )
        .expect("map the VM");
        let before = vm.heap.strings.len();
        for i in 0..10 {
            vm.intern(format!("temporary {i}").as_bytes())
                .expect("intern");
        }
        // The last one survives until the next collection; the others are gone.
        assert!(
            vm.heap.strings.len() <= before + 1,
            "{} strings interned",
            vm.heap.strings.len()
        );
    }
}
