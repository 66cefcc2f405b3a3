//! Templates for calls: closures (a guarded direct call, else through the entry table),
//! classes (instances allocated inline), method invocations through the inline caches, and the
//! helper that decides everything else; see `compile.rs` for the conventions.

use super::codeic::CodeSite;
use super::compile::{Gen, Loc};
use super::ops::{next, R};
use super::runtime as rt;
use super::x64::{mem, mem_index, Alu, Cond, Label, Reg, Section};
use crate::bytecode::IcKind;
use crate::heap::layout::{self, instance, Tag};
use crate::heap::memory;
use crate::value::{Value, OBJ_TAG};
use crate::vm::region::{self, ctx, ic};
use crate::vm::stack::frame;
use crate::vm::Site;

impl Gen<'_> {
    /// Calls the closure in rdx (with rax free) whose slot 0 is stack slot `k` and that takes
    /// `argc` arguments; the result goes to slot `k`. `hint` is the prototype it is expected
    /// to be: then a guarded direct call — to its code if it is compiled, else through a
    /// patchable site that calls the interpreter bridge until the callee is compiled and is
    /// then retargeted to it — else (and on a guard miss) through the entry table.
    /// Binds `enter` at the start, and returns after storing the result.
    fn call_closure(&mut self, enter: Label, k: usize, argc: usize, hint: Option<u32>) {
        self.a.bind(enter);
        self.a.mov_rr32(Reg::Rax, Reg::Rdx);
        self.a.load(Reg::Rax, mem_index(Reg::R13, Reg::Rax, 1, 8));
        let after = self.a.new_label();
        let direct = hint
            .map(|p| (p, self.direct_target(p)))
            .filter(|(_, t)| self.cx.patchable || !matches!(t, DirectTarget::Later));
        let set_args = |g: &mut Self| {
            g.a.load(Reg::Rdi, Self::frame_field(frame::BASE));
            g.a.alu_ri(Alu::Add, Reg::Rdi, k as i32);
            g.a.mov_ri(Reg::Rsi, argc as u64);
        };
        if let Some((proto, target)) = direct {
            let generic = self.a.new_label();
            self.a.alu_ri(Alu::Cmp, Reg::Rax, proto as i32);
            self.a.jcc(Cond::Ne, generic);
            set_args(self);
            match target {
                DirectTarget::Itself => self.a.call_label(self.start),
                DirectTarget::Symbol(name) => self.a.call_symbol(&name),
                DirectTarget::Later => {
                    let site = self.a.call_site(super::backend::BRIDGE);
                    self.waiting.push((site, proto));
                }
            }
            self.a.jmp(after);
            self.a.bind(generic);
        }
        set_args(self);
        self.a.call_m(mem_index(
            Reg::R12,
            Reg::Rax,
            8,
            region::ENTRIES_OFFSET as i32,
        ));
        self.a.bind(after);
        self.after_call();
        self.a.store(Self::slot(k), Reg::Rax);
    }

    /// Where a direct call to prototype `proto` goes: this function, a compiled one, or one
    /// to be compiled later (a patchable site).
    fn direct_target(&self, proto: u32) -> DirectTarget {
        if proto as usize == self.proto_index {
            return DirectTarget::Itself;
        }
        (self.cx.symbol_of)(proto as usize).map_or(DirectTarget::Later, DirectTarget::Symbol)
    }

    /// The cold half of a call whose fast guard failed: a helper decides (and reports errors);
    /// it returns the closure to enter, or 0 when the call is done (the result in slot `k`).
    fn call_slow_path(
        &mut self,
        slow: Label,
        enter: Label,
        done: Label,
        args: impl FnOnce(&mut Self),
        helper: &str,
    ) {
        let was = self.a.switch_to(Section::Cold);
        self.a.bind(slow);
        self.sync_sp(self.depth());
        args(self);
        self.arg_ctx();
        self.call_helper(helper);
        self.a.test_rr(Reg::Rax, Reg::Rax);
        self.a.jcc(Cond::E, done);
        self.a.mov_rr(Reg::Rdx, Reg::Rax);
        self.a.jmp(enter);
        self.a.switch_to(was);
    }

    fn finish_call(&mut self, k: usize) -> R {
        self.entries.truncate(k);
        self.push(Loc::Stack, None);
        next()
    }

    pub(super) fn call(&mut self, argc: usize, ip: usize) -> R {
        self.flush_all();
        let k = self.depth() - 1 - argc;
        let hint = self.entries[k].hint;
        self.set_ip(ip)?;
        let [slow, enter, done, not_closure] = self.labels_n();
        self.a.load(Reg::Rdx, Self::slot(k));
        self.check_object(Reg::Rdx, slow);
        self.a.mov_rr32(Reg::Rax, Reg::Rdx);
        self.a
            .cmp_m8(mem_index(Reg::R13, Reg::Rax, 1, 0), Tag::Closure as u8);
        self.a.jcc(Cond::Ne, not_closure);
        self.call_closure(enter, k, argc, hint);
        self.a.bind(done);

        let was = self.a.switch_to(Section::Cold);
        self.a.bind(not_closure);
        self.a
            .cmp_m8(mem_index(Reg::R13, Reg::Rax, 1, 0), Tag::Class as u8);
        self.a.jcc(Cond::Ne, slow);
        self.instantiate(k, argc, ip, [enter, done, slow])?;
        self.a.switch_to(was);
        self.call_slow_path(
            slow,
            enter,
            done,
            |g| g.a.mov_ri(Reg::Rsi, argc as u64),
            rt::RT_CALL_VALUE,
        );
        self.finish_call(k)
    }

    /// Cold code: calling the class whose offset is in rax allocates the instance inline (a
    /// bump of the space's `top`, to `slow` when it reaches the limit) in place of the class
    /// in slot `k`, then calls `init` (through `enter`, with rdx = the closure) or, without
    /// one, is done.
    fn instantiate(
        &mut self,
        k: usize,
        argc: usize,
        ip: usize,
        [enter, done, slow]: [Label; 3],
    ) -> Result<(), String> {
        let fill = self.a.new_label();
        let field = |word: usize| 8 * word as i32;
        // r11 = the class; rcx = its root shape; rax = the shape's inline capacity.
        self.a.lea(Reg::R11, mem_index(Reg::R13, Reg::Rax, 1, 0));
        self.a
            .load(Reg::Rcx, mem(Reg::R11, field(layout::class::ROOT_SHAPE)));
        self.a.mov_rr32(Reg::Rax, Reg::Rcx);
        self.a.load(
            Reg::Rax,
            mem_index(Reg::R13, Reg::Rax, 1, field(layout::shape::COUNTS)),
        );
        self.a.shr_ri(Reg::Rax, 32);
        // rsi = words; rdi = top; r8 = the new top.
        self.a.lea(Reg::Rsi, mem(Reg::Rax, instance::FIELDS as i32));
        self.a
            .load(Reg::Rdi, mem(Reg::R13, field(memory::TOP_WORD)));
        self.a.lea(Reg::R8, mem_index(Reg::Rdi, Reg::Rsi, 1, 0));
        self.a
            .alu_rm(Alu::Cmp, Reg::R8, mem(Reg::R13, field(memory::LIMIT_WORD)));
        self.a.jcc(Cond::A, slow);
        self.a
            .store(mem(Reg::R13, field(memory::TOP_WORD)), Reg::R8);
        // Header, shape, then nil in the overflow word and every inline field.
        self.a.mov_rr(Reg::R9, Reg::Rsi);
        self.a.shl_ri(Reg::R9, 8);
        self.a.alu_ri(Alu::Or, Reg::R9, Tag::Instance as i32);
        self.a.lea(Reg::R10, mem_index(Reg::R13, Reg::Rdi, 8, 0));
        self.a.store(mem(Reg::R10, 0), Reg::R9);
        self.a
            .store(mem(Reg::R10, field(instance::SHAPE)), Reg::Rcx);
        self.a.alu_ri(Alu::Add, Reg::R10, field(instance::OVERFLOW));
        self.a.alu_ri(Alu::Add, Reg::Rax, 1);
        self.a.bind(fill);
        self.a.store(mem(Reg::R10, 0), Reg::R15);
        self.a.alu_ri(Alu::Add, Reg::R10, 8);
        self.a.alu_ri(Alu::Sub, Reg::Rax, 1);
        self.a.jcc(Cond::Ne, fill);
        self.a.shl_ri(Reg::Rsi, 3);
        self.a
            .alu_mr(Alu::Add, Self::ctx(ctx::JIT_ALLOCATED), Reg::Rsi);
        // The instance replaces the class in slot k.
        self.a.shl_ri(Reg::Rdi, 3);
        self.a.mov_ri(Reg::Rax, OBJ_TAG);
        self.a.alu_rr(Alu::Or, Reg::Rdi, Reg::Rax);
        self.a.store(Self::slot(k), Reg::Rdi);
        self.a
            .load(Reg::Rdx, mem(Reg::R11, field(layout::class::INITIALIZER)));
        self.a.alu_rr(Alu::Cmp, Reg::Rdx, Reg::R15);
        self.a.jcc(Cond::Ne, enter);
        if argc == 0 {
            self.a.jmp(done);
        } else {
            let arity = self.error_exit(rt::ERROR_ARITY, 0, argc as u64, ip)?;
            self.a.jmp(arity);
        }
        Ok(())
    }

    fn method_hint(&self, ic_index: usize) -> Option<u32> {
        let region = &self.cx.vm.region;
        (region.ic_kind(ic_index) == IcKind::Method)
            .then(|| self.closure_proto(Value(region.ic_target(ic_index))))
            .flatten()
    }

    /// The method of cache `ic_index` for the key in rcx into rdx (entry 0 inline, the others
    /// scanned in cold code), counted as a hit; a jump to `slow` on a miss.
    fn cached_method(&mut self, ic_index: usize, site: Site, slow: Label) {
        let [scan, found, hit] = self.labels_n();
        self.test_entry_zero(ic_index, IcKind::Method, scan, slow);
        self.a.load(Reg::Rdx, Self::ic(ic_index, ic::TARGET));
        self.a.bind(hit);
        self.count_hit(site);
        let was = self.a.switch_to(Section::Cold);
        self.scan_entries(ic_index, scan, found, slow);
        self.a.bind(found);
        self.cmp_entry_kind(IcKind::Method);
        self.a.jcc(Cond::Ne, slow);
        self.a.load(Reg::Rdx, Self::entry_word(ic::TARGET));
        self.a.jmp(hit);
        self.a.switch_to(was);
    }

    pub(super) fn invoke(&mut self, ic_index: usize, argc: usize, ip: usize) -> R {
        self.flush_all();
        let k = self.depth() - 1 - argc;
        self.set_ip(ip)?;
        let [slow, enter, done] = self.labels_n();
        let [poly, data, hit, scan, found] = self.labels_n();
        self.a.load(Reg::Rdx, Self::slot(k));
        self.load_shape(Reg::Rdx, slow);
        // The code-patching cache gives the method's closure in rdx; behind it, in cold code,
        // the region's cache (entry 0, then the others), then the helper.
        self.code_ic(ic_index, CodeSite::Invoke, [poly, data, hit]);
        self.a.bind(hit);
        self.count_hit(Site::Invoke);
        let was = self.a.switch_to(Section::Cold);
        self.a.bind(data);
        self.test_entry_zero(ic_index, IcKind::Method, scan, slow);
        self.a.load(Reg::Rdx, Self::ic(ic_index, ic::TARGET));
        self.a.jmp(hit);
        self.scan_entries(ic_index, scan, found, slow);
        self.a.bind(found);
        self.cmp_entry_kind(IcKind::Method);
        self.a.jcc(Cond::Ne, slow);
        self.a.load(Reg::Rdx, Self::entry_word(ic::TARGET));
        self.a.jmp(hit);
        self.a.switch_to(was);
        let hint = self.method_hint(ic_index);
        self.call_closure(enter, k, argc, hint);
        self.a.bind(done);
        self.call_slow_path(
            slow,
            enter,
            done,
            |g| {
                g.a.mov_ri(Reg::Rsi, ic_index as u64);
                g.a.mov_ri(Reg::Rdx, argc as u64);
            },
            rt::RT_INVOKE,
        );
        self.finish_call(k)
    }

    pub(super) fn super_invoke(&mut self, ic_index: usize, argc: usize, ip: usize) -> R {
        self.flush_all();
        let top = self.top();
        let k = top - 1 - argc;
        self.set_ip(ip)?;
        let [slow, enter, done] = self.labels_n();
        self.a.load(Reg::Rcx, Self::slot(top));
        self.cached_method(ic_index, Site::Super, slow);
        let hint = self.method_hint(ic_index);
        self.call_closure(enter, k, argc, hint);
        self.a.bind(done);
        self.call_slow_path(
            slow,
            enter,
            done,
            |g| {
                g.a.mov_ri(Reg::Rsi, ic_index as u64);
                g.a.mov_ri(Reg::Rdx, argc as u64);
            },
            rt::RT_SUPER_INVOKE,
        );
        self.finish_call(k)
    }
}

enum DirectTarget {
    Itself,
    Symbol(String),
    /// Not compiled yet: a patchable call site, calling the interpreter bridge meanwhile.
    Later,
}
