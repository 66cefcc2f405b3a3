//! A Cranelift [`Module`](cranelift_module::Module) backend on kiln: Cranelift JITs get kiln by
//! changing one constructor.
//!
//! [`KilnBuilder`] and [`KilnModule`] have the methods of `cranelift_jit::JITBuilder` and
//! `JITModule`, so porting is a rename:
//!
//! ```
//! use cranelift_codegen::ir::{types, AbiParam, InstBuilder};
//! use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
//! use cranelift_module::{Linkage, Module};
//! use kiln_cranelift::{KilnBuilder, KilnModule};
//!
//! let mut module = KilnModule::new(KilnBuilder::new(cranelift_module::default_libcall_names())?);
//! # module.session().set_debug(kiln::DebugOptions::none());
//! let config = module.target_config();
//! let mut ctx = module.make_context();
//! ctx.func.signature.params.push(AbiParam::new(types::I64));
//! ctx.func.signature.returns.push(AbiParam::new(types::I64));
//! let id = module.declare_function("double", Linkage::Export, &ctx.func.signature)?;
//! let mut fctx = FunctionBuilderContext::new();
//! let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
//! let block = b.create_block();
//! b.append_block_params_for_function_params(block);
//! b.switch_to_block(block);
//! let x = b.block_params(block)[0];
//! let y = b.ins().iadd(x, x);
//! b.ins().return_(&[y]);
//! b.seal_all_blocks();
//! b.finalize(config);
//! module.define_function(id, &mut ctx)?;
//! module.finalize_definitions()?;
//! let addr = module.function_address(id)?;
//! // Calling JIT'd code is unsafe: the caller vouches for the signature.
//! let double: extern "C" fn(i64) -> i64 = unsafe { kiln::InProcessExecutor::function(addr) };
//! assert_eq!(double(21), 42);
//! module.free_function(id)?; // one function's memory back
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What kiln adds over cranelift-jit:
//! - code packed into kiln's slabs (thousands of small functions share pages), kept W^X, far
//!   targets reached through stubs instead of a panic;
//! - [`KilnModule::free_function`] / [`KilnModule::free_data`]: one definition's memory back;
//! - unwind information registered (panics and C++ exceptions cross Cranelift frames), gdb
//!   names every function, perf map and jitdump on request (`KILN_DEBUG`, or
//!   [`KilnBuilder::debug`] / [`kiln::Session::set_debug`]);
//! - PIC code (GOT and PLT relocations), thread-local data (with `tls_model=elf_gd`);
//! - [`KilnBuilder::executor`]: compile here, run in a `kiln-executor` process
//!   ([`KilnModule::call`] calls a function there);
//!
//! How it maps onto kiln: each definition becomes a unit of the module's [`kiln::Session`] at
//! `finalize_definitions`, linked after the definitions it refers to; definitions of one batch
//! that refer to each other (or code and the thread-local data it uses) share a unit. Kiln
//! records which unit binds to which, and refuses to free one that others still use.
//!
//! Also: [`KilnModule::redefine_function`] gives a finalized function a new body that every
//! caller in the module follows (old bodies freed by [`KilnModule::reclaim`], see
//! `redefine.rs`), and [`KilnModule::declare_lazy_function`] declares a function compiled on
//! its first call (see `lazy.rs`). docs/cranelift.md has the whole picture.
#![forbid(unsafe_code)]
// `ModuleResult` is Cranelift's, and the signatures that return it are `JITModule`'s.
#![allow(clippy::result_large_err)]

mod builder;
mod error;
mod group;
mod lazy;
mod module;
mod redefine;
mod relocs;
mod resolve;
mod unit;
mod unwind;

pub use builder::{KilnBuilder, SymbolLookupFn};
pub use error::{Error, Result};
pub use lazy::{LazyBuild, LazyCompile, LazyErrorFn, LazyModule, LazyStatus};
pub use module::KilnModule;
pub use redefine::{Epoch, RetiredBody};
