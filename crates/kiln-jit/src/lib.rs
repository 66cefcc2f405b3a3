//! kiln-jit: what a language runtime asks of a code-memory system, on kiln.
//!
//! A [`Jit`] owns a code zone in one [`kiln::Session`]'s executor: a range of address space
//! reserved where the VM wants it ([`ZonePlacement`]), split into a fixed region (trampolines,
//! bridges, stubs: never moved) and a method region (compiled methods: compacted when it fills).
//! Compiled code arrives as [`JitGraph`]s — kiln in-memory graphs that also say where their
//! patchable places are: call sites and slots ([`Site`]) and references to the VM's heap
//! objects ([`HeapRef`]). Everything that touches memory goes through kiln's `Executor` trait, so
//! it works the same with code running in another process. Functions may be lazy
//! ([`Jit::declare_lazy`]): callable at once, compiled on their first call, after which their
//! callers call the compiled code directly (docs/lazy.md).
//!
//! Code that runs is changed in write windows ([`Jit::write`]: the writable alias, aligned atomic
//! stores, then every core serialized); sites are retargeted ([`Jit::retarget`]) and remember
//! their targets; sends are cached inline ([`MonoIc`]) or in polymorphic stubs ([`Pic`]);
//! functions are redefined ([`Jit::redefine`]); what is replaced is retired and freed when the VM
//! says no thread can be in it ([`Jit::grace_start`], [`Jit::reclaim`]). See docs/jit.md.
//!
//! ```
//! use kiln::graph::InMemoryGraph;
//! use kiln_jit::{Jit, JitGraph, RegionKind, SiteKind, ZoneConfig};
//! use std::sync::Arc;
//!
//! let session = Arc::new(kiln::Session::in_process());
//! session.set_debug(kiln::DebugOptions::none());
//! let jit = Jit::new(session.clone(), &ZoneConfig::new(1 << 20))?;
//! // u64 answer(void) { return 0x2a; }, with the constant a patchable 64-bit site:
//! // movabs $0x2a, %rax (48 b8 imm64, the imm64 8-aligned after 6 bytes of nops); ret
//! let mut code = vec![0x90; 6];
//! code.extend([0x48, 0xb8]);
//! code.extend(0x2au64.to_le_bytes());
//! code.push(0xc3);
//! let mut g = InMemoryGraph::new("answer");
//! g.add_function("answer", code, vec![], None);
//! let mut g = JitGraph::new(g);
//! g.site("answer", 8, SiteKind::Abs64);
//! let linked = jit.link(RegionKind::Method, &g)?;
//! let f = session.lookup("answer").unwrap();
//! assert_eq!(session.executor().call(f, &[])?, 0x2a);
//! jit.set_value(&linked.sites[0], 0x2b)?;
//! assert_eq!(session.executor().call(f, &[])?, 0x2b);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod compact;
mod error;
mod graph;
mod heaprefs;
mod ic;
mod jit;
mod lazy;
mod pic;
mod redefine;
mod window;
mod zone;

pub use compact::{CompactionReport, CompactionTimes, MoveMap, PinReason, RangeMove, Verdict};
pub use error::{Error, Result};
pub use graph::{HeapRefDecl, JitGraph, SiteDecl, SiteKind};
pub use ic::{IcState, IcUpdate, MonoIc};
pub use jit::{HeapRef, Jit, Linked, RegionKind, Site};
pub use lazy::{LazyContext, LazyFailure, LazyFailureHandler, LazyFunction, LazyStatus};
pub use pic::{KeyRegister, KeyWidth, Pic, PicConfig, PicState, PicTarget, MAX_PIC_CASES};
pub use redefine::{Epoch, Reclaimed, Redefine, Redefined, Retired, RetiredKind};
pub use window::WriteWindow;
pub use zone::{Region, Zone, ZoneConfig, ZonePlacement};
