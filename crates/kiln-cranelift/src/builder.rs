//! `KilnBuilder`: what `cranelift_jit::JITBuilder` is to `JITModule`, with the same methods, and
//! where the code runs.

use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::{ir, settings, settings::Configurable};
use cranelift_module::{ModuleError, ModuleResult};
use kiln::{DebugOptions, Executor};
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// A function that finds a host symbol by name (`JITBuilder::symbol_lookup_fn`'s type).
pub type SymbolLookupFn = Box<dyn Fn(&str) -> Option<*const u8> + Send>;

/// Settings for a [`crate::KilnModule`]: the ISA, libcall names, host symbols, the executor.
///
/// ```
/// use kiln_cranelift::{KilnBuilder, KilnModule};
/// let mut b = KilnBuilder::new(cranelift_module::default_libcall_names())?;
/// b.symbol("host_answer", host_answer as *const u8);
/// let module = KilnModule::new(b);
/// # extern "C" fn host_answer() -> i32 { 42 }
/// # Ok::<(), cranelift_module::ModuleError>(())
/// ```
pub struct KilnBuilder {
    pub(crate) isa: OwnedTargetIsa,
    pub(crate) libcall_names: Box<dyn Fn(ir::LibCall) -> String + Send + Sync>,
    /// Addresses in the executor (the same as host pointers in process).
    pub(crate) symbols: FxHashMap<String, u64>,
    pub(crate) lookup_fns: Vec<SymbolLookupFn>,
    pub(crate) executor: Option<Arc<dyn Executor>>,
    pub(crate) debug: Option<DebugOptions>,
}

impl KilnBuilder {
    /// A builder for the host ISA (cranelift-native) with default flags. As with `JITBuilder`,
    /// `libcall_names` names the functions Cranelift calls for some instructions; use
    /// `cranelift_module::default_libcall_names()` if in doubt.
    pub fn new(
        libcall_names: Box<dyn Fn(ir::LibCall) -> String + Send + Sync>,
    ) -> ModuleResult<Self> {
        Self::with_flags(&[], libcall_names)
    }

    /// A builder for the host ISA with these Cranelift flags. Unlike `JITBuilder`, `is_pic` may
    /// be set (kiln builds the GOT and stubs PIC code needs); `tls_model` defaults to `elf_gd`,
    /// so that thread-local data works without a flag.
    pub fn with_flags(
        flags: &[(&str, &str)],
        libcall_names: Box<dyn Fn(ir::LibCall) -> String + Send + Sync>,
    ) -> ModuleResult<Self> {
        let mut flag_builder = settings::builder();
        // As cranelift-jit: libcalls are not assumed to be near (they are host functions).
        flag_builder.set("use_colocated_libcalls", "false")?;
        flag_builder.set("tls_model", "elf_gd")?;
        for (name, value) in flags {
            flag_builder.set(name, value)?;
        }
        let isa_builder = cranelift_native::builder().map_err(|msg| {
            ModuleError::Backend(anyhow::anyhow!("host machine is not supported: {msg}"))
        })?;
        let isa = isa_builder.finish(settings::Flags::new(flag_builder))?;
        Ok(Self::with_isa(isa, libcall_names))
    }

    /// A builder for this ISA. Kiln links x86-64 ELF code: a module for another target reports
    /// that when a definition is made.
    pub fn with_isa(
        isa: OwnedTargetIsa,
        libcall_names: Box<dyn Fn(ir::LibCall) -> String + Send + Sync>,
    ) -> Self {
        KilnBuilder {
            isa,
            libcall_names,
            symbols: FxHashMap::default(),
            lookup_fns: Vec::new(),
            executor: None,
            debug: None,
        }
    }

    /// Define a host symbol for names the module imports (the most recent definition of a name
    /// wins). With an [`executor`](Self::executor) in another process, `ptr` is an address in
    /// that process.
    pub fn symbol<K: Into<String>>(&mut self, name: K, ptr: *const u8) -> &mut Self {
        self.symbols.insert(name.into(), ptr as usize as u64);
        self
    }

    /// [`symbol`](Self::symbol) for each pair.
    pub fn symbols<It, K>(&mut self, symbols: It) -> &mut Self
    where
        It: IntoIterator<Item = (K, *const u8)>,
        K: Into<String>,
    {
        for (name, ptr) in symbols {
            self.symbol(name, ptr);
        }
        self
    }

    /// A function asked for imported names the symbols above lack, before the executor's
    /// process is searched; the last one added is asked first (as in `JITBuilder`).
    pub fn symbol_lookup_fn(&mut self, f: SymbolLookupFn) -> &mut Self {
        self.lookup_fns.push(f);
        self
    }

    /// Run the code in this executor (e.g. a `kiln_remote::RemoteExecutor`) instead of this
    /// process. Addresses the module returns are then addresses in the executor: call the code
    /// with [`crate::KilnModule::run_main`] or [`crate::KilnModule::call_void`].
    pub fn executor(&mut self, executor: Arc<dyn Executor>) -> &mut Self {
        self.executor = Some(executor);
        self
    }

    /// The debugger and profiler sinks (gdb, perf map, jitdump, valgrind). Without this, the
    /// session's defaults apply, changed by `KILN_DEBUG` as everywhere in kiln.
    pub fn debug(&mut self, options: DebugOptions) -> &mut Self {
        self.debug = Some(options);
        self
    }

    /// The ISA the module will compile for.
    pub fn isa(&self) -> &dyn cranelift_codegen::isa::TargetIsa {
        &*self.isa
    }
}
