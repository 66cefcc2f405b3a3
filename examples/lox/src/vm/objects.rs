//! VM operations that allocate or search: classes, instances and shapes, closures and
//! upvalues, strings, and the slow paths of the inline caches.
//!
//! They run with `self.sp` current and leave it current. Every allocation is preceded by one
//! `reserve` for all it needs; after the reserve, references are loaded again from roots (the
//! value stack, the constants), never kept from before it.

use super::{Site, Vm};
use crate::bytecode::{IcKind, InlineCache};
use crate::heap::layout::{
    array, bound_method, class, closure, instance, native, shape, table, upvalue, Tag,
};
use crate::heap::objects::{self as obj, FieldLocation};
use crate::heap::strings;
use crate::value::{ObjRef, Value};

/// What a call turned out to need.
pub(crate) enum Call {
    /// Push a frame for this closure (slot 0 and the arguments are in place).
    Enter(Value),
    /// Done: the result replaced the callee and arguments.
    Done,
}

/// A runtime error message.
pub(crate) type Fault = Vec<u8>;

pub const NATIVE_CLOCK: u64 = 0;
/// Instances keep at most this many fields inline; more go to the overflow array.
const MAX_INLINE_FIELDS: usize = 64;
const INITIAL_METHOD_TABLE: usize = 8;

fn out_of_memory() -> Fault {
    b"Out of memory.".to_vec()
}

fn undefined_property(mem: &crate::heap::memory::Memory, name: Value) -> Fault {
    let mut text = b"Undefined property '".to_vec();
    strings::append_bytes(mem, name.as_obj(), &mut text);
    text.extend_from_slice(b"'.");
    text
}

impl Vm {
    #[inline]
    fn peek(&self, distance: usize) -> Value {
        self.region.stack(self.sp - 1 - distance)
    }

    fn set_peek(&mut self, distance: usize, value: Value) {
        self.region.set_stack(self.sp - 1 - distance, value);
    }

    fn push(&mut self, value: Value) {
        self.region.set_stack(self.sp, value);
        self.sp += 1;
    }

    fn reserve_or_fault(&mut self, words: usize) -> Result<(), Fault> {
        self.reserve(words).map_err(|_| out_of_memory())
    }

    // ---- calls ----

    /// Calls a value that is not a closure (the loop handles those): bound methods, classes,
    /// natives; anything else is an error.
    pub(crate) fn call_slow(&mut self, argc: usize) -> Result<Call, Fault> {
        let callee = self.peek(argc);
        if !callee.is_obj() {
            return Err(b"Can only call functions and classes.".to_vec());
        }
        let mem = &self.heap.mem;
        let tag = mem.tag(callee.as_obj());
        if tag == Tag::Closure as u64 {
            Ok(Call::Enter(callee))
        } else if tag == Tag::BoundMethod as u64 {
            let receiver = mem.load_value(callee.as_obj(), bound_method::RECEIVER);
            let method = mem.load_value(callee.as_obj(), bound_method::METHOD);
            self.set_peek(argc, receiver);
            Ok(Call::Enter(method))
        } else if tag == Tag::Class as u64 {
            self.instantiate(argc)
        } else if tag == Tag::Native as u64 {
            let result = self.call_native(mem.load(callee.as_obj(), native::ID));
            self.sp -= argc + 1;
            self.push(result);
            Ok(Call::Done)
        } else {
            Err(b"Can only call functions and classes.".to_vec())
        }
    }

    fn call_native(&mut self, id: u64) -> Value {
        debug_assert_eq!(id, NATIVE_CLOCK);
        // C's clock(): processor time of the process, in seconds, microsecond resolution.
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        let micros = t.tv_sec as f64 * 1e6 + (t.tv_nsec / 1000) as f64;
        Value::number(micros / 1e6)
    }

    /// Calling a class: a new instance replaces the class, then `init` runs if there is one.
    fn instantiate(&mut self, argc: usize) -> Result<Call, Fault> {
        let root = self
            .heap
            .mem
            .load_value(self.peek(argc).as_obj(), class::ROOT_SHAPE)
            .as_obj();
        let (capacity, _) = obj::shape_counts(&self.heap.mem, root);
        self.reserve_or_fault(instance::FIELDS + capacity)?;
        let class = self.peek(argc).as_obj();
        let root = self.heap.mem.load_value(class, class::ROOT_SHAPE);
        let new = self.heap.alloc(Tag::Instance, instance::FIELDS + capacity);
        self.heap.mem.store_value(new, instance::SHAPE, root);
        self.set_peek(argc, Value::obj(new));
        let initializer = self.heap.mem.load_value(class, class::INITIALIZER);
        if !initializer.is_nil() {
            Ok(Call::Enter(initializer))
        } else if argc != 0 {
            Err(format!("Expected 0 arguments but got {argc}.").into_bytes())
        } else {
            Ok(Call::Done)
        }
    }

    /// `receiver.name(args)` when entry 0 of the cache did not hold it: another entry, or a
    /// lookup (learned by the cache).
    pub(crate) fn invoke_slow(&mut self, ic: usize, argc: usize) -> Result<Call, Fault> {
        let receiver = self.peek(argc);
        if !self.heap.mem.has_tag(receiver, Tag::Instance) {
            return Err(b"Only instances have methods.".to_vec());
        }
        let shape = self.heap.mem.load_value(receiver.as_obj(), instance::SHAPE);
        if let Some(cache) = self.region.ic_lookup(ic, shape.0) {
            if cache.kind == IcKind::Method {
                self.stats.ic_hits[Site::Invoke as usize] += 1;
                return Ok(Call::Enter(Value(cache.target)));
            }
        }
        self.stats.ic_misses[Site::Invoke as usize] += 1;
        let name = self.constant(self.ic_names[ic] as usize);
        let mem = &self.heap.mem;
        if let Some(index) = obj::find_field(mem, shape.as_obj(), name) {
            let (capacity, _) = obj::shape_counts(mem, shape.as_obj());
            let field =
                obj::load_field(mem, receiver.as_obj(), obj::field_location(index, capacity));
            self.set_peek(argc, field);
            return self.call_value(argc);
        }
        let class = mem.load_value(shape.as_obj(), shape::CLASS).as_obj();
        let method = self.find_method(class, name)?;
        self.region.ic_learn(ic, &method_cache(shape, method));
        Ok(Call::Enter(method))
    }

    /// The method `super.name` names, for the superclass (popped by the caller): from the
    /// cache, or looked up (and learned).
    fn super_method(&mut self, ic: usize, superclass: Value) -> Result<Value, Fault> {
        if let Some(cache) = self.region.ic_lookup(ic, superclass.0) {
            if cache.kind == IcKind::Method {
                self.stats.ic_hits[Site::Super as usize] += 1;
                return Ok(Value(cache.target));
            }
        }
        self.stats.ic_misses[Site::Super as usize] += 1;
        let name = self.constant(self.ic_names[ic] as usize);
        let method = self.find_method(superclass.as_obj(), name)?;
        self.region.ic_learn(ic, &method_cache(superclass, method));
        Ok(method)
    }

    /// `super.name(args)`: the superclass was popped by the loop; entry 0 missed.
    pub(crate) fn super_invoke_slow(
        &mut self,
        ic: usize,
        superclass: Value,
    ) -> Result<Call, Fault> {
        self.super_method(ic, superclass).map(Call::Enter)
    }

    fn call_value(&mut self, argc: usize) -> Result<Call, Fault> {
        if self.heap.mem.has_tag(self.peek(argc), Tag::Closure) {
            Ok(Call::Enter(self.peek(argc)))
        } else {
            self.call_slow(argc)
        }
    }

    fn find_method(&self, class: ObjRef, name: Value) -> Result<Value, Fault> {
        let methods = self.heap.mem.load_value(class, class::METHODS).as_obj();
        obj::table_get(&self.heap.mem, methods, name)
            .ok_or_else(|| undefined_property(&self.heap.mem, name))
    }

    // ---- properties ----

    /// `instance.name` when entry 0 of the cache did not hold it: another entry, or a field,
    /// or a method bound to the instance (learned by the cache).
    pub(crate) fn get_property_slow(&mut self, ic: usize) -> Result<(), Fault> {
        let receiver = self.peek(0);
        if !self.heap.mem.has_tag(receiver, Tag::Instance) {
            return Err(b"Only instances have properties.".to_vec());
        }
        let mem = &self.heap.mem;
        let shape = mem.load_value(receiver.as_obj(), instance::SHAPE);
        if let Some(cache) = self.region.ic_lookup(ic, shape.0) {
            let slot = cache.slot as usize;
            let value = match cache.kind {
                IcKind::InlineField => Some(mem.load_value(receiver.as_obj(), slot)),
                IcKind::OverflowField => Some(obj::load_field(
                    mem,
                    receiver.as_obj(),
                    FieldLocation::Overflow(slot),
                )),
                _ => None,
            };
            if let Some(value) = value {
                self.stats.ic_hits[Site::GetProperty as usize] += 1;
                self.set_peek(0, value);
                return Ok(());
            }
            if cache.kind == IcKind::Method {
                self.stats.ic_hits[Site::GetProperty as usize] += 1;
                return self.bind_method(Value(cache.target));
            }
        }
        self.stats.ic_misses[Site::GetProperty as usize] += 1;
        let name = self.constant(self.ic_names[ic] as usize);
        if let Some(index) = obj::find_field(mem, shape.as_obj(), name) {
            let (capacity, _) = obj::shape_counts(mem, shape.as_obj());
            let location = obj::field_location(index, capacity);
            self.set_peek(0, obj::load_field(mem, receiver.as_obj(), location));
            self.region.ic_learn(ic, &field_cache(shape, location));
            return Ok(());
        }
        let class = mem.load_value(shape.as_obj(), shape::CLASS).as_obj();
        let method = self.find_method(class, name)?;
        self.region.ic_learn(ic, &method_cache(shape, method));
        self.bind_method(method)
    }

    /// Replaces the receiver on top of the stack by a bound method of it.
    pub(crate) fn bind_method(&mut self, method: Value) -> Result<(), Fault> {
        // The method rides on the stack across the reservation (max_stack has room for it).
        self.push(method);
        self.reserve_or_fault(bound_method::WORDS)?;
        self.sp -= 1;
        let method = self.region.stack(self.sp);
        let bound = self.heap.alloc(Tag::BoundMethod, bound_method::WORDS);
        self.heap
            .mem
            .store_value(bound, bound_method::RECEIVER, self.peek(0));
        self.heap
            .mem
            .store_value(bound, bound_method::METHOD, method);
        self.set_peek(0, Value::obj(bound));
        Ok(())
    }

    /// `super.name`: the superclass was popped by the loop, `this` is on top.
    pub(crate) fn get_super(&mut self, ic: usize, superclass: Value) -> Result<(), Fault> {
        let method = self.super_method(ic, superclass)?;
        self.bind_method(method)
    }

    /// `instance.name = value` when entry 0 of the cache did not hold it: another entry, or
    /// a lookup (learned). Leaves the value alone on the stack.
    pub(crate) fn set_property_slow(&mut self, ic: usize) -> Result<(), Fault> {
        let receiver = self.peek(1);
        if !self.heap.mem.has_tag(receiver, Tag::Instance) {
            return Err(b"Only instances have fields.".to_vec());
        }
        let shape = self.heap.mem.load_value(receiver.as_obj(), instance::SHAPE);
        let value = self.peek(0);
        let cached = self.region.ic_lookup(ic, shape.0);
        let mem = &mut self.heap.mem;
        let hit = match cached {
            Some(c) if c.kind == IcKind::InlineField => {
                mem.store_value(receiver.as_obj(), c.slot as usize, value);
                true
            }
            Some(c) if c.kind == IcKind::OverflowField => {
                let location = FieldLocation::Overflow(c.slot as usize);
                obj::store_field(mem, receiver.as_obj(), location, value);
                true
            }
            Some(c) if c.kind == IcKind::AddInlineField => {
                mem.store_value(receiver.as_obj(), c.slot as usize, value);
                mem.store(receiver.as_obj(), instance::SHAPE, c.target);
                true
            }
            _ => false,
        };
        if hit {
            self.stats.ic_hits[Site::SetProperty as usize] += 1;
        } else {
            self.stats.ic_misses[Site::SetProperty as usize] += 1;
            let name = self.constant(self.ic_names[ic] as usize);
            let mem = &self.heap.mem;
            if let Some(index) = obj::find_field(mem, shape.as_obj(), name) {
                let (capacity, _) = obj::shape_counts(mem, shape.as_obj());
                let location = obj::field_location(index, capacity);
                obj::store_field(&mut self.heap.mem, receiver.as_obj(), location, value);
                self.region.ic_learn(ic, &field_cache(shape, location));
            } else {
                self.add_field(ic)?;
            }
        }
        let value = self.peek(0);
        self.sp -= 1;
        self.set_peek(0, value);
        Ok(())
    }

    /// Adds the field named by cache `ic` to the instance below the value on the stack: moves
    /// it to the child shape (creating it), growing the overflow array if the field is not
    /// inline, and teaching the class to give later instances room for it inline.
    fn add_field(&mut self, ic: usize) -> Result<(), Fault> {
        let name_index = self.ic_names[ic];
        let (needs_shape, capacity, count, overflow_room) = {
            let mem = &self.heap.mem;
            let receiver = self.peek(1).as_obj();
            let shape = mem.load_value(receiver, instance::SHAPE).as_obj();
            let name = self.constant(name_index as usize);
            let (capacity, count) = obj::shape_counts(mem, shape);
            let needs_shape = obj::find_transition(mem, shape, name).is_none();
            (
                needs_shape,
                capacity,
                count,
                obj::overflow_capacity(mem, receiver),
            )
        };
        let overflow_index = count.checked_sub(capacity);
        let grow_overflow = overflow_index.is_some_and(|i| i >= overflow_room);
        let new_overflow_len = (overflow_room * 2).max(4);
        let relearn = overflow_index.is_some() && capacity < MAX_INLINE_FIELDS;
        let words = usize::from(needs_shape) * shape::WORDS
            + usize::from(grow_overflow) * (array::ELEMENTS + new_overflow_len)
            + usize::from(relearn) * shape::WORDS;
        self.reserve_or_fault(words)?;

        // Everything below is loaded after the reservation.
        let receiver = self.peek(1).as_obj();
        let value = self.peek(0);
        let name = self.constant(name_index as usize);
        let shape = self.heap.mem.load_value(receiver, instance::SHAPE).as_obj();
        let child = match obj::find_transition(&self.heap.mem, shape, name) {
            Some(child) => child,
            None => self.new_child_shape(shape, name, capacity, count + 1),
        };
        let location = obj::field_location(count, capacity);
        if grow_overflow {
            self.grow_overflow(receiver, new_overflow_len);
        }
        obj::store_field(&mut self.heap.mem, receiver, location, value);
        self.heap
            .mem
            .store_value(receiver, instance::SHAPE, Value::obj(child));
        if let FieldLocation::Inline(word) = location {
            self.region.ic_learn(
                ic,
                &InlineCache {
                    key: Value::obj(shape).0,
                    kind: IcKind::AddInlineField,
                    slot: word as u32,
                    target: Value::obj(child).0,
                },
            );
        }
        if relearn {
            let class = self.heap.mem.load_value(shape, shape::CLASS).as_obj();
            self.widen_class(class, count + 1);
        }
        Ok(())
    }

    fn new_child_shape(
        &mut self,
        parent: ObjRef,
        key: Value,
        capacity: usize,
        count: usize,
    ) -> ObjRef {
        self.stats.shapes += 1;
        let mem = &mut self.heap.mem;
        let class = mem.load_value(parent, shape::CLASS);
        let first = mem.load_value(parent, shape::FIRST_CHILD);
        let child = self.heap.alloc(Tag::Shape, shape::WORDS);
        let mem = &mut self.heap.mem;
        mem.store_value(child, shape::CLASS, class);
        mem.store_value(child, shape::PARENT, Value::obj(parent));
        mem.store_value(child, shape::KEY, key);
        mem.store(child, shape::COUNTS, shape::counts(capacity, count));
        mem.store_value(child, shape::NEXT_SIBLING, first);
        mem.store_value(parent, shape::FIRST_CHILD, Value::obj(child));
        child
    }

    fn grow_overflow(&mut self, receiver: ObjRef, len: usize) {
        let old = self.heap.mem.load_value(receiver, instance::OVERFLOW);
        let new = self.heap.alloc(Tag::Array, array::ELEMENTS + len);
        if !old.is_nil() {
            let old_len = self.heap.mem.size_words(old.as_obj()) - array::ELEMENTS;
            for i in 0..old_len {
                let v = self.heap.mem.load(old.as_obj(), array::ELEMENTS + i);
                self.heap.mem.store(new, array::ELEMENTS + i, v);
            }
        }
        self.heap
            .mem
            .store_value(receiver, instance::OVERFLOW, Value::obj(new));
    }

    /// Gives the class a new root shape with room for `fields` inline fields (from reserved
    /// space), if its current root has less.
    fn widen_class(&mut self, class: ObjRef, fields: usize) {
        let root = self.heap.mem.load_value(class, class::ROOT_SHAPE).as_obj();
        let (capacity, _) = obj::shape_counts(&self.heap.mem, root);
        if capacity >= fields {
            return;
        }
        let new_root = self.new_root_shape(class, fields.min(MAX_INLINE_FIELDS));
        self.heap
            .mem
            .store_value(class, class::ROOT_SHAPE, Value::obj(new_root));
    }

    fn new_root_shape(&mut self, class: ObjRef, capacity: usize) -> ObjRef {
        self.stats.shapes += 1;
        let root = self.heap.alloc(Tag::Shape, shape::WORDS);
        self.heap
            .mem
            .store_value(root, shape::CLASS, Value::obj(class));
        self.heap
            .mem
            .store(root, shape::COUNTS, shape::counts(capacity, 0));
        root
    }

    // ---- classes ----

    /// Pushes a new class named by constant `name`, with an empty method table and a root shape.
    pub(crate) fn new_class(&mut self, name: usize) -> Result<(), Fault> {
        self.reserve_or_fault(class::WORDS + table::words(INITIAL_METHOD_TABLE) + shape::WORDS)?;
        let new = self.heap.alloc(Tag::Class, class::WORDS);
        let methods = self
            .heap
            .alloc(Tag::Table, table::words(INITIAL_METHOD_TABLE));
        self.heap.mem.store(methods, table::COUNT, 0);
        self.heap
            .mem
            .store_value(new, class::NAME, self.constant(name));
        self.heap
            .mem
            .store_value(new, class::METHODS, Value::obj(methods));
        let root = self.new_root_shape(new, 0);
        self.heap
            .mem
            .store_value(new, class::ROOT_SHAPE, Value::obj(root));
        self.push(Value::obj(new));
        Ok(())
    }

    /// [class, closure] → [class], with the closure as method `name` (a constant).
    pub(crate) fn define_method(&mut self, name: usize) -> Result<(), Fault> {
        let methods = self
            .heap
            .mem
            .load_value(self.peek(1).as_obj(), class::METHODS)
            .as_obj();
        if !obj::table_has_room(&self.heap.mem, methods) {
            let capacity = table::capacity(self.heap.mem.size_words(methods)) * 2;
            self.reserve_or_fault(table::words(capacity))?;
            let class = self.peek(1).as_obj();
            let old = self.heap.mem.load_value(class, class::METHODS).as_obj();
            let new = self.heap.alloc(Tag::Table, table::words(capacity));
            self.heap.mem.store(new, table::COUNT, 0);
            obj::table_copy(&mut self.heap.mem, old, new);
            self.heap
                .mem
                .store_value(class, class::METHODS, Value::obj(new));
        }
        let class = self.peek(1).as_obj();
        let method = self.peek(0);
        let name = self.constant(name);
        let methods = self.heap.mem.load_value(class, class::METHODS).as_obj();
        obj::table_set(&mut self.heap.mem, methods, name, method);
        if name == self.init_string {
            self.heap.mem.store_value(class, class::INITIALIZER, method);
        }
        self.sp -= 1;
        Ok(())
    }

    /// [superclass, subclass] → [superclass]: the subclass starts with a copy of the
    /// superclass's methods (and its initializer).
    pub(crate) fn inherit(&mut self) -> Result<(), Fault> {
        let superclass = self.peek(1);
        if !self.heap.mem.has_tag(superclass, Tag::Class) {
            return Err(b"Superclass must be a class.".to_vec());
        }
        let methods = self
            .heap
            .mem
            .load_value(superclass.as_obj(), class::METHODS)
            .as_obj();
        let size = self.heap.mem.size_words(methods);
        self.reserve_or_fault(size)?;
        let superclass = self.peek(1).as_obj();
        let subclass = self.peek(0).as_obj();
        let from = self
            .heap
            .mem
            .load_value(superclass, class::METHODS)
            .as_obj();
        let copy = self.heap.alloc(Tag::Table, size);
        self.heap.mem.store(copy, table::COUNT, 0);
        obj::table_copy(&mut self.heap.mem, from, copy);
        self.heap
            .mem
            .store_value(subclass, class::METHODS, Value::obj(copy));
        let initializer = self.heap.mem.load_value(superclass, class::INITIALIZER);
        self.heap
            .mem
            .store_value(subclass, class::INITIALIZER, initializer);
        self.sp -= 1;
        Ok(())
    }

    // ---- closures ----

    /// Pushes a closure of prototype `proto` capturing `upvalues` (pairs of is_local, index)
    /// from the frame whose slot 0 is at `base`.
    pub(crate) fn new_closure(
        &mut self,
        proto: usize,
        upvalues: &[u8],
        base: usize,
    ) -> Result<(), Fault> {
        let count = upvalues.len() / 2;
        self.reserve_or_fault(closure::UPVALUES + count * (1 + upvalue::WORDS))?;
        let new = self.heap.alloc(Tag::Closure, closure::UPVALUES + count);
        self.heap.mem.store(new, closure::PROTO, proto as u64);
        let enclosing = self
            .region
            .frame_closure(self.region.frame_count() - 1)
            .as_obj();
        for (i, pair) in upvalues.chunks_exact(2).enumerate() {
            let index = usize::from(pair[1]);
            let captured = if pair[0] != 0 {
                self.capture_upvalue(base + index)
            } else {
                self.heap
                    .mem
                    .load_value(enclosing, closure::UPVALUES + index)
            };
            self.heap
                .mem
                .store_value(new, closure::UPVALUES + i, captured);
        }
        self.push(Value::obj(new));
        Ok(())
    }

    /// The open upvalue for stack slot `slot`, created (from reserved space) if there is none.
    fn capture_upvalue(&mut self, slot: usize) -> Value {
        let mem = &self.heap.mem;
        let mut previous = Value::NIL;
        let mut current = self.region.open_upvalues();
        while !current.is_nil() && mem.load(current.as_obj(), upvalue::SLOT) as usize > slot {
            previous = current;
            current = mem.load_value(current.as_obj(), upvalue::NEXT);
        }
        if !current.is_nil() && mem.load(current.as_obj(), upvalue::SLOT) as usize == slot {
            return current;
        }
        let created = self.heap.alloc(Tag::Upvalue, upvalue::WORDS);
        let mem = &mut self.heap.mem;
        mem.store(created, upvalue::SLOT, slot as u64);
        mem.store_value(created, upvalue::NEXT, current);
        if previous.is_nil() {
            self.region.set_open_upvalues(Value::obj(created));
        } else {
            mem.store_value(previous.as_obj(), upvalue::NEXT, Value::obj(created));
        }
        Value::obj(created)
    }

    /// Closes every open upvalue for slots `last` and above: the value moves into the upvalue.
    pub(crate) fn close_upvalues(&mut self, last: usize) {
        while !self.region.open_upvalues().is_nil() {
            let up = self.region.open_upvalues().as_obj();
            let slot = self.heap.mem.load(up, upvalue::SLOT) as usize;
            if slot < last {
                break;
            }
            let value = self.region.stack(slot);
            let mem = &mut self.heap.mem;
            mem.store_value(up, upvalue::CLOSED, value);
            mem.store_value(up, upvalue::SLOT, Value::NIL);
            self.region
                .set_open_upvalues(mem.load_value(up, upvalue::NEXT));
            mem.store_value(up, upvalue::NEXT, Value::NIL);
        }
    }

    // ---- strings ----

    /// `+` when the operands are not both numbers: two strings concatenate; anything else is
    /// an error. (Machine code's slow path; the interpreter tests inline.)
    pub(crate) fn add_slow(&mut self) -> Result<(), Fault> {
        let (a, b) = (self.peek(1), self.peek(0));
        if a.is_number() && b.is_number() {
            self.sp -= 1;
            self.set_peek(0, Value::number(a.as_number() + b.as_number()));
            Ok(())
        } else if is_string(&self.heap.mem, a) && is_string(&self.heap.mem, b) {
            self.concatenate()
        } else {
            Err(b"Operands must be two numbers or two strings.".to_vec())
        }
    }

    /// [a, b] → [a + b] for two strings.
    pub(crate) fn concatenate(&mut self) -> Result<(), Fault> {
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        strings::append_bytes(&self.heap.mem, self.peek(1).as_obj(), &mut bytes);
        strings::append_bytes(&self.heap.mem, self.peek(0).as_obj(), &mut bytes);
        let result = self.intern(&bytes);
        self.scratch = bytes;
        let result = result.map_err(|_| out_of_memory())?;
        self.sp -= 1;
        self.set_peek(0, result);
        Ok(())
    }
}

fn method_cache(key: Value, method: Value) -> InlineCache {
    InlineCache {
        key: key.0,
        kind: IcKind::Method,
        slot: 0,
        target: method.0,
    }
}

fn field_cache(shape: Value, location: FieldLocation) -> InlineCache {
    let (kind, slot) = match location {
        FieldLocation::Inline(word) => (IcKind::InlineField, word),
        FieldLocation::Overflow(i) => (IcKind::OverflowField, i),
    };
    InlineCache {
        key: shape.0,
        kind,
        slot: slot as u32,
        target: Value::NIL.0,
    }
}

/// Whether a value is a string (for `+`).
#[inline]
pub(crate) fn is_string(mem: &crate::heap::memory::Memory, value: Value) -> bool {
    mem.has_tag(value, Tag::String)
}
