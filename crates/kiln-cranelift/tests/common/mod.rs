//! What the tests share: one trait over `JITModule` and `KilnModule`, and small builders of
//! Cranelift functions over `i64`s.
#![allow(dead_code)]

use cranelift_codegen::ir::{types::I64, AbiParam, Signature, Value};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::JITModule;
use cranelift_module::{DataId, FuncId, Linkage, Module};
use kiln_cranelift::KilnModule;

/// What the program needs besides `Module`: the two backends' inherent methods.
pub trait Backend: Module {
    fn finalize(&mut self);
    fn function(&self, id: FuncId) -> *const u8;
    fn data(&self, id: DataId) -> (*const u8, usize);
}

impl Backend for JITModule {
    fn finalize(&mut self) {
        self.finalize_definitions().unwrap();
    }
    fn function(&self, id: FuncId) -> *const u8 {
        self.get_finalized_function(id)
    }
    fn data(&self, id: DataId) -> (*const u8, usize) {
        self.get_finalized_data(id)
    }
}

impl Backend for KilnModule {
    fn finalize(&mut self) {
        self.finalize_definitions().unwrap();
    }
    fn function(&self, id: FuncId) -> *const u8 {
        self.get_finalized_function(id)
    }
    fn data(&self, id: DataId) -> (*const u8, usize) {
        self.get_finalized_data(id)
    }
}

/// `fn(i64 x n) -> i64`.
pub fn sig<M: Module>(m: &M, params: usize) -> Signature {
    let mut s = m.make_signature();
    s.params.extend((0..params).map(|_| AbiParam::new(I64)));
    s.returns.push(AbiParam::new(I64));
    s
}

/// Declare (if needed) and define `name` with `params` i64 parameters; `body` gets the module,
/// the builder (positioned in the entry block) and the parameters, and returns the result.
pub fn define<M: Module>(
    m: &mut M,
    name: &str,
    linkage: Linkage,
    params: usize,
    body: impl FnOnce(&mut M, &mut FunctionBuilder, &[Value]) -> Value,
) -> FuncId {
    let s = sig(m, params);
    let id = m.declare_function(name, linkage, &s).unwrap();
    let mut ctx = body_context(m, params, body);
    m.define_function(id, &mut ctx)
        .unwrap_or_else(|e| panic!("defining {name}: {e:?}"));
    id
}

/// A context holding the function `define` would define (not compiled).
pub fn body_context<M: Module>(
    m: &mut M,
    params: usize,
    body: impl FnOnce(&mut M, &mut FunctionBuilder, &[Value]) -> Value,
) -> cranelift_codegen::Context {
    let config = m.target_config();
    let mut ctx = m.make_context();
    ctx.func.signature = sig(m, params);
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let args = b.block_params(entry).to_vec();
    let r = body(m, &mut b, &args);
    b.ins().return_(&[r]);
    b.seal_all_blocks();
    b.finalize(config);
    ctx
}

/// `VmRSS` of this process, in KiB.
pub fn vm_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

use cranelift_codegen::ir::InstBuilder;

/// A call of `callee` (a module function) with `args`, its single result.
pub fn call<M: Module>(
    m: &mut M,
    b: &mut FunctionBuilder,
    callee: FuncId,
    args: &[Value],
) -> Value {
    let f = m.declare_func_in_func(callee, b.func);
    let c = b.ins().call(f, args);
    b.inst_results(c)[0]
}
