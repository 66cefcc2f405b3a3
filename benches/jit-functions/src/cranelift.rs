//! cranelift-jit's `JITModule` fed the same bytes and relocations: `declare_function`,
//! `define_function_bytes` with two `X86CallPCRel4` relocations, then `finalize_definitions`,
//! once per function (or once per batch, for the batch row).

use crate::code::{self, FunctionInput, CALL_ADDEND, HOST_CALL_DISP, PREV_CALL_DISP};
use crate::harness::Jit;
use cranelift_codegen::binemit::Reloc;
use cranelift_codegen::ir::{types, AbiParam, Signature};
use cranelift_jit::{ArenaMemoryProvider, JITBuilder, JITModule};
use cranelift_module::{FuncId, FuncOrDataId, Linkage, Module, ModuleReloc};

pub struct CraneliftJit {
    module: JITModule,
    sig: Signature,
    host: FuncId,
    ids: Vec<FuncId>,
}

/// Which of cranelift-jit's memory providers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// `SystemMemoryProvider`, the default.
    System,
    /// `ArenaMemoryProvider`: one address range reserved up front.
    Arena,
}

impl CraneliftJit {
    /// `host_by_dlsym`: let cranelift-jit find `abs` with its default lookup (dlsym) instead of
    /// giving it the address.
    pub fn new(memory: Memory, count: usize, host_by_dlsym: bool) -> Result<Self, String> {
        let mut b = JITBuilder::new(cranelift_module::default_libcall_names())
            .map_err(|e| e.to_string())?;
        if !host_by_dlsym {
            b.symbol(code::HOST, code::host_address() as *const u8);
        }
        if memory == Memory::Arena {
            // Every finalize seals the segment it used, so each function starts a new page:
            // a page per function is exactly enough.
            let size = (count + 256) * 4096;
            let arena = ArenaMemoryProvider::new_with_size(size).map_err(|e| e.to_string())?;
            b.memory_provider(Box::new(arena));
        }
        let mut module = JITModule::new(b);
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(types::I32));
        sig.returns.push(AbiParam::new(types::I32));
        let host = module
            .declare_function(code::HOST, Linkage::Import, &sig)
            .map_err(|e| e.to_string())?;
        Ok(CraneliftJit {
            module,
            sig,
            host,
            ids: Vec::new(),
        })
    }
}

impl CraneliftJit {
    /// Declare and define `f` (not finalized yet).
    fn define(&mut self, f: &FunctionInput) -> Result<(), String> {
        let m = &mut self.module;
        let id = m
            .declare_function(&f.name, Linkage::Export, &self.sig)
            .map_err(|e| e.to_string())?;
        let prev = match m.get_name(&f.prev) {
            Some(FuncOrDataId::Func(p)) => p,
            _ => return Err(format!("undefined function {}", f.prev)),
        };
        let call = |offset: u32, target: FuncId| ModuleReloc {
            offset,
            kind: Reloc::X86CallPCRel4,
            name: target.into(),
            addend: CALL_ADDEND,
        };
        let relocs = [call(HOST_CALL_DISP, self.host), call(PREV_CALL_DISP, prev)];
        m.define_function_bytes(id, 16, &f.code, &relocs)
            .map_err(|e| e.to_string())?;
        self.ids.push(id);
        Ok(())
    }
}

impl Jit for CraneliftJit {
    fn link_one(&mut self, f: &mut FunctionInput) -> Result<(), String> {
        self.define(f)?;
        self.module
            .finalize_definitions()
            .map_err(|e| e.to_string())
    }

    fn link_batch_as_unit(&mut self, fs: &mut [FunctionInput]) -> Result<(), String> {
        for f in fs.iter() {
            self.define(f)?;
        }
        self.module
            .finalize_definitions()
            .map_err(|e| e.to_string())
    }

    fn address(&self, k: usize) -> Option<usize> {
        let id = *self.ids.get(k)?;
        Some(self.module.get_finalized_function(id) as usize)
    }
}
