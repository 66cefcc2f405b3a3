//! Templates for property gets and sets, and the inline caches machine code reads (entry 0
//! tested inline, the others scanned in cold code); see `compile.rs` for the conventions.

use super::codeic;
use super::compile::{Gen, Loc, PropertyIc};
use super::ops::{next, R};
use super::runtime as rt;
use super::x64::{mem, mem_index, Alu, Cond, Label, Mem, Reg, Section};
use crate::bytecode::IcKind;
use crate::heap::layout::{array, instance};
use crate::vm::region::{ctx, ic};
use crate::vm::Site;

impl Gen<'_> {
    /// rax = address of the instance in `receiver`, rcx = its shape (word 1); a jump to `miss`
    /// unless `receiver` is an object.
    pub(super) fn load_shape(&mut self, receiver: Reg, miss: Label) {
        self.check_object(receiver, miss);
        self.a.mov_rr32(Reg::Rax, receiver);
        self.a.alu_rr(Alu::Add, Reg::Rax, Reg::R13);
        self.a
            .load(Reg::Rcx, mem(Reg::Rax, 8 * instance::SHAPE as i32));
    }

    /// Word `word` of the cache entry r11 points at.
    pub(super) fn entry_word(word: usize) -> Mem {
        mem(Reg::R11, 8 * word as i32)
    }

    /// Cold code at `start`: looks for the key in rcx among entries 1… of cache `ic_index`
    /// (entry 0 was tested inline); on a match r11 points at the entry and control goes to
    /// `found`, else to `miss`. rdx is clobbered.
    pub(super) fn scan_entries(
        &mut self,
        ic_index: usize,
        start: Label,
        found: Label,
        miss: Label,
    ) {
        let again = self.a.new_label();
        self.a.bind(start);
        self.a
            .lea(Reg::R11, Self::ic(ic_index, ic::ENTRY_WORDS + ic::KEY));
        self.a.bind(again);
        self.a.alu_rm(Alu::Cmp, Reg::Rcx, mem(Reg::R11, 0));
        self.a.jcc(Cond::E, found);
        self.a
            .alu_ri(Alu::Add, Reg::R11, 8 * ic::ENTRY_WORDS as i32);
        self.a.lea(Reg::Rdx, Self::ic(ic_index, ic::WORDS));
        self.a.alu_rr(Alu::Cmp, Reg::R11, Reg::Rdx);
        self.a.jcc(Cond::B, again);
        self.a.jmp(miss);
    }

    /// Cold code at `start`: r11 = entry 0 of cache `ic_index`, then `found` (entry 0 is for
    /// the shape, with a kind the inline path does not handle).
    fn entry_zero(&mut self, ic_index: usize, start: Label, found: Label) {
        self.a.bind(start);
        self.a.lea(Reg::R11, Self::ic(ic_index, ic::KEY));
        self.a.jmp(found);
    }

    /// Compares the kind of the entry r11 points at with `kind`.
    pub(super) fn cmp_entry_kind(&mut self, kind: IcKind) {
        self.a
            .alu_mi(Alu::Cmp, Self::entry_word(ic::KIND), kind.to_raw() as i32);
    }

    /// rax = address of the overflow array of the instance at rax.
    fn overflow_array(&mut self) {
        self.a
            .load(Reg::Rax, mem(Reg::Rax, 8 * instance::OVERFLOW as i32));
        self.a.mov_rr32(Reg::Rax, Reg::Rax);
        self.a.alu_rr(Alu::Add, Reg::Rax, Reg::R13);
    }

    pub(super) fn count_hit(&mut self, site: Site) {
        self.a.inc_m(Self::ctx(ctx::JIT_IC_HITS + 8 * site as i32));
    }

    /// Entry 0 tested inline for `kind`: jumps to `scan` when the key differs, to `other` when
    /// the key matches with another kind.
    pub(super) fn test_entry_zero(
        &mut self,
        ic_index: usize,
        kind: IcKind,
        scan: Label,
        other: Label,
    ) {
        self.a
            .alu_rm(Alu::Cmp, Reg::Rcx, Self::ic(ic_index, ic::KEY));
        self.a.jcc(Cond::Ne, scan);
        self.a
            .alu_mi(Alu::Cmp, Self::ic(ic_index, ic::KIND), kind.to_raw() as i32);
        self.a.jcc(Cond::Ne, other);
    }

    /// The code-patching caches of a property or invocation site (see `codeic.rs`): with rax
    /// = the receiver's address, rcx = its shape and, for a set, rdx = the value, the
    /// monomorphic guard and handler call inline, then to `hit` (for a get, the value in rdx;
    /// for an invocation, the method's closure); in cold code at `poly` the PIC's call, to
    /// `hit` on a case and `data` without one.
    pub(super) fn code_ic(
        &mut self,
        ic_index: usize,
        site: codeic::CodeSite,
        [poly, data, hit]: [Label; 3],
    ) {
        if !self.cx.patchable {
            self.a.jmp(data);
            return;
        }
        let key = self.a.movabs_site(Reg::R11, codeic::EMPTY_KEY);
        self.a.alu_rr(Alu::Cmp, Reg::Rcx, Reg::R11);
        self.a.jcc(Cond::Ne, poly);
        let target = self.a.call_site(codeic::MISS);
        let was = self.a.switch_to(Section::Cold);
        self.a.bind(poly);
        let pic = self.a.call_site(codeic::MISS);
        self.a.jcc(Cond::Ne, data);
        self.a.jmp(hit);
        self.a.switch_to(was);
        self.property_ics.push(PropertyIc {
            ic_index,
            site,
            key,
            target,
            pic,
        });
    }

    pub(super) fn get_property(&mut self, ic_index: usize, ip: usize) -> R {
        let top = self.top();
        let r = self.in_reg(top);
        let [slow, scan, other, found, overflow, hit, done] = self.labels_n();
        let [poly, data, code_hit] = self.labels_n();
        self.load_shape(r, slow);
        self.code_ic(ic_index, codeic::CodeSite::Get, [poly, data, code_hit]);
        self.a.bind(code_hit);
        self.a.mov_rr(r, Reg::Rdx);
        self.a.bind(hit);
        self.count_hit(Site::GetProperty);
        self.a.bind(done);

        let was = self.a.switch_to(Section::Cold);
        self.a.bind(data);
        self.test_entry_zero(ic_index, IcKind::InlineField, scan, other);
        self.a.load(Reg::Rdx, Self::ic(ic_index, ic::SLOT));
        self.a.load(r, mem_index(Reg::Rax, Reg::Rdx, 8, 0));
        self.a.jmp(hit);
        self.entry_zero(ic_index, other, found);
        self.scan_entries(ic_index, scan, found, slow);
        self.a.bind(found);
        self.a.load(Reg::Rdx, Self::entry_word(ic::SLOT));
        self.cmp_entry_kind(IcKind::InlineField);
        self.a.jcc(Cond::Ne, overflow);
        self.a.load(r, mem_index(Reg::Rax, Reg::Rdx, 8, 0));
        self.a.jmp(hit);
        self.a.bind(overflow);
        self.cmp_entry_kind(IcKind::OverflowField);
        self.a.jcc(Cond::Ne, slow);
        self.overflow_array();
        self.a.load(
            r,
            mem_index(Reg::Rax, Reg::Rdx, 8, 8 * array::ELEMENTS as i32),
        );
        self.a.jmp(hit);
        // A method (bound by the helper, which allocates), or a miss.
        self.a.bind(slow);
        self.spill_below(1);
        self.a.store(Self::slot(top), r);
        self.sync_sp(top + 1);
        self.set_ip(ip)?;
        self.a.mov_ri(Reg::Rsi, ic_index as u64);
        self.arg_ctx();
        self.call_helper(rt::RT_GET_PROPERTY);
        self.reload_below(1);
        self.a.load(r, Self::slot(top));
        self.a.jmp(done);
        self.a.switch_to(was);
        self.entries[top].hint = None;
        next()
    }

    pub(super) fn labels_n<const N: usize>(&mut self) -> [Label; N] {
        std::array::from_fn(|_| self.a.new_label())
    }

    pub(super) fn set_property(&mut self, ic_index: usize, ip: usize) -> R {
        let top = self.top();
        let receiver = self.in_reg(top - 1);
        let value = self.in_reg(top);
        let [slow, scan, other, found, not_inline, not_overflow, hit, done] = self.labels_n();
        let [poly, data] = self.labels_n();
        self.load_shape(receiver, slow);
        self.a.mov_rr(Reg::Rdx, value);
        self.code_ic(ic_index, codeic::CodeSite::Set, [poly, data, hit]);
        self.a.bind(hit);
        self.count_hit(Site::SetProperty);
        self.a.bind(done);

        let was = self.a.switch_to(Section::Cold);
        self.a.bind(data);
        self.test_entry_zero(ic_index, IcKind::InlineField, scan, other);
        self.a.load(Reg::Rdx, Self::ic(ic_index, ic::SLOT));
        self.a.store(mem_index(Reg::Rax, Reg::Rdx, 8, 0), value);
        self.a.jmp(hit);
        self.entry_zero(ic_index, other, found);
        self.scan_entries(ic_index, scan, found, slow);
        self.a.bind(found);
        self.a.load(Reg::Rdx, Self::entry_word(ic::SLOT));
        self.cmp_entry_kind(IcKind::InlineField);
        self.a.jcc(Cond::Ne, not_inline);
        self.a.store(mem_index(Reg::Rax, Reg::Rdx, 8, 0), value);
        self.a.jmp(hit);
        self.a.bind(not_inline);
        self.cmp_entry_kind(IcKind::OverflowField);
        self.a.jcc(Cond::Ne, not_overflow);
        self.overflow_array();
        self.a.store(
            mem_index(Reg::Rax, Reg::Rdx, 8, 8 * array::ELEMENTS as i32),
            value,
        );
        self.a.jmp(hit);
        // A field added to the instance: the store, then the new shape.
        self.a.bind(not_overflow);
        self.cmp_entry_kind(IcKind::AddInlineField);
        self.a.jcc(Cond::Ne, slow);
        self.a.store(mem_index(Reg::Rax, Reg::Rdx, 8, 0), value);
        self.a.load(Reg::Rdx, Self::entry_word(ic::TARGET));
        self.a
            .store(mem(Reg::Rax, 8 * instance::SHAPE as i32), Reg::Rdx);
        self.a.jmp(hit);
        self.a.bind(slow);
        self.spill_below(2);
        self.a.store(Self::slot(top - 1), receiver);
        self.a.store(Self::slot(top), value);
        self.sync_sp(top + 1);
        self.set_ip(ip)?;
        self.a.mov_ri(Reg::Rsi, ic_index as u64);
        self.arg_ctx();
        self.call_helper(rt::RT_SET_PROPERTY);
        self.reload_below(2);
        self.a.load(value, Self::slot(top - 1));
        self.a.jmp(done);
        self.a.switch_to(was);

        // [receiver, value] → [value]
        self.entries.pop();
        self.pop();
        self.push(Loc::Reg(value), None);
        next()
    }
}
