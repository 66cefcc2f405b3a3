//! `redefine_function`: a new body for a finalized function, and the grace protocol that frees
//! old bodies.
//!
//! Every unit of the module is linked with a relink record (its edges kept), so kiln knows
//! every call, `lea`, GOT entry and data pointer of the module that reaches a definition. A
//! redefinition links the new body as a new unit with [`kiln::Session::redefine_inputs`]: it
//! takes over the function's name, and kiln applies the edges of every unit that reached the
//! old body again, so that they reach the new one (one aligned store per field, safe while
//! other threads run the code). This is the machinery kiln-jit's `Jit::redefine` rests on;
//! kiln-jit itself is not used because its zone links in-memory graphs and this crate links ELF
//! objects (see `unit.rs`), and because a Cranelift module has no sites or inline caches of its
//! own for it to retarget.
//!
//! The old body is *retired*, not freed: threads may still be running it, or return into it.
//! It is freed by the grace protocol of epoch-based reclamation:
//!
//! ```text
//! let e = module.grace_start();  // what was retired so far is older than e
//! // ... the program makes sure every thread that could have been in an old body has since
//! //     left it (returned to the host, passed a safepoint) ...
//! module.reclaim(e)?;            // frees the bodies retired before e
//! ```
//!
//! `reclaim_retired()` is `reclaim(grace_start())`, for a program that knows *now* that no
//! thread runs old code.
//!
//! What does not follow a redefinition: addresses the host took earlier with
//! `get_finalized_function` (they are the old body's; take the address again), and
//! definitions that share the old body's unit (a reference cycle of one finalize batch): such
//! a function cannot be redefined alone ([`Error::SharesUnit`]).

use crate::error::{Error, Result};
use crate::module::{Def, KilnModule};
use crate::unit::Pending;
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::Context;
use cranelift_module::{FuncId, FuncOrDataId, ModuleResult};
use kiln::{ExecutorAddr, UnitId};

/// A point in the module's history: bodies retired during an epoch are freed by a
/// [`KilnModule::reclaim`] given a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

/// A function body replaced by [`KilnModule::redefine_function`] and not yet freed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetiredBody {
    /// The function it was the body of.
    pub function: FuncId,
    /// The kiln unit holding it.
    pub unit: UnitId,
    /// Where it is (address, size): no thread may run in it, or return into it, when it is
    /// reclaimed.
    pub code: (ExecutorAddr, u64),
    /// The epoch it was retired in: a `reclaim(e)` with `e > since` frees it.
    pub since: Epoch,
}

impl KilnModule {
    /// Give the finalized function `func_id` a new body: `ctx` is compiled (unless it holds
    /// compiled code already) and linked at once. From then on every function and data object
    /// of the module that refers to it — from earlier and later finalize batches — reaches the
    /// new body, and [`KilnModule::get_finalized_function`] returns the new body's address.
    /// The old body stays in memory (threads may still run it) until [`KilnModule::reclaim`]
    /// frees it; addresses taken before are the old body's.
    ///
    /// The declaration (name, signature, linkage) stays; the new body may refer to anything the
    /// module has finalized, and to itself. Refused for a function that is not finalized, one
    /// that shares its unit with other definitions ([`Error::SharesUnit`]), and on the errors
    /// of `define_function`; then the old body stays in use.
    pub fn redefine_function(&mut self, func_id: FuncId, ctx: &mut Context) -> ModuleResult<()> {
        self.check_declared_function(func_id)?;
        let id = FuncOrDataId::Func(func_id);
        if self.lazy.contains(func_id) {
            return Err(Error::Unsupported(format!(
                "{} is a lazy function: it cannot be redefined",
                self.name_of(id)
            ))
            .into());
        }
        let old = self.linked(id)?;
        let members = self.units.get(&old.unit).cloned().unwrap_or_default();
        if members.len() > 1 {
            return Err(Error::SharesUnit {
                name: self.name_of(id),
                with: members
                    .iter()
                    .filter(|m| **m != id)
                    .map(|m| self.name_of(*m))
                    .collect(),
            }
            .into());
        }
        if let Some(why) = &self.unsupported {
            return Err(Error::Unsupported(why.clone()).into());
        }
        if ctx.compiled_code().is_none() {
            ctx.compile(&*self.isa, &mut ControlPlane::default())?;
        }
        let (body, relocs) = self.compiled_body(func_id, ctx)?;
        let name = self.name_of(id);
        self.check_targets(&name, &relocs)?;
        let decl = self.declarations.get_function_decl(func_id);
        let pending = Pending {
            id,
            name,
            linkage: decl.linkage,
            body,
            relocs,
        };
        let (inputs, unit_name) = self.unit_inputs(&[&pending])?;
        let new = self
            .session
            .redefine_inputs(old.unit, &inputs, &self.unit_options())
            .map_err(|source| Error::Link {
                unit: unit_name,
                source,
            })?;
        let linked = self.linked_in(new, self.session.default_scope(), &pending);
        self.defs.insert(id, Def::Linked(linked));
        self.units.remove(&old.unit);
        self.units.insert(new, vec![id]);
        self.retired.push(RetiredBody {
            function: func_id,
            unit: old.unit,
            code: (old.addr, old.size),
            since: Epoch(self.epoch),
        });
        Ok(())
    }

    /// Begin a new epoch and return it: every body retired so far is older. See
    /// [`KilnModule::reclaim`].
    pub fn grace_start(&mut self) -> Epoch {
        self.epoch += 1;
        Epoch(self.epoch)
    }

    /// Old bodies not yet freed.
    pub fn retired(&self) -> &[RetiredBody] {
        &self.retired
    }

    /// The program declares that since `safe` (from [`KilnModule::grace_start`]) every thread
    /// has been at a point where it runs no body retired before `safe` and will not return into
    /// one: those bodies are freed (their memory back to kiln's slabs, their unwind, gdb and
    /// perf registrations gone). Returns the units freed. A body kiln refuses to free (still
    /// bound by another unit) stays retired and the error is returned after the others are
    /// freed.
    pub fn reclaim(&mut self, safe: Epoch) -> Result<Vec<UnitId>> {
        if safe.0 > self.epoch {
            return Err(Error::Unsupported(format!(
                "epoch {} has not begun (the current one is {}): reclaim takes what grace_start \
                 returned",
                safe.0, self.epoch
            )));
        }
        let (mut due, keep): (Vec<RetiredBody>, Vec<RetiredBody>) =
            std::mem::take(&mut self.retired)
                .into_iter()
                .partition(|r| r.since < safe);
        self.retired = keep;
        // Newest first: an old body may call an older one.
        due.sort_unstable_by_key(|r| std::cmp::Reverse(r.unit));
        let (mut freed, mut first_error) = (Vec::new(), None);
        for r in due {
            match self.session.remove(r.unit) {
                Ok(()) => freed.push(r.unit),
                Err(source) => {
                    first_error.get_or_insert(Error::Link {
                        unit: format!(
                            "the retired body {} of {}",
                            r.unit,
                            self.name_of(FuncOrDataId::Func(r.function))
                        ),
                        source,
                    });
                    self.retired.push(r);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(freed),
        }
    }

    /// Free every retired body: the program declares that no thread runs one now
    /// (`reclaim(grace_start())`).
    pub fn reclaim_retired(&mut self) -> Result<Vec<UnitId>> {
        let e = self.grace_start();
        self.reclaim(e)
    }
}
