//! Handles: what a C program holds for a kiln object.
//!
//! A handle is not an address. It is an id from one global counter (never reused), tagged with
//! the object's type in its top byte, and the object lives in that type's registry under the
//! id. Looking a handle up checks all of it: NULL, another type's handle, a handle that was
//! deleted, and a value kiln never returned each give an error naming the argument — nothing
//! is ever read through a pointer the caller made. (The top-byte tag also makes a handle a
//! non-canonical x86-64 address, so C code that dereferences one faults at once.)
//!
//! An object stays alive while a call uses it: a lookup clones its `Arc`, so deleting a session
//! on one thread while another thread links in it only ends the session after that link.

use crate::error::CError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

/// The id part of a handle: 56 bits.
const ID_BITS: u32 = 56;
const ID_MASK: usize = (1 << ID_BITS) - 1;

/// The next id of any handle; 0 is never used (a handle is never NULL).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The object types C holds handles to, as the top byte of their handles.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Tag {
    Session = 0xA1,
    Graph = 0xA2,
    Error = 0xA3,
    Generated = 0xA4,
    Jit = 0xA5,
    MoveMap = 0xA6,
}

impl Tag {
    fn from_byte(b: u8) -> Option<Tag> {
        [
            Tag::Session,
            Tag::Graph,
            Tag::Error,
            Tag::Generated,
            Tag::Jit,
            Tag::MoveMap,
        ]
        .into_iter()
        .find(|t| *t as u8 == b)
    }

    /// The C type name, for messages.
    fn c_name(self) -> &'static str {
        match self {
            Tag::Session => "kiln_session_t",
            Tag::Graph => "kiln_graph_t",
            Tag::Error => "kiln_error_t",
            Tag::Generated => "kiln_generated_t",
            Tag::Jit => "kiln_jit_t",
            Tag::MoveMap => "kiln_move_map_t",
        }
    }
}

/// The objects of one type that C holds handles to.
pub(crate) struct Registry<T> {
    tag: Tag,
    objects: LazyLock<RwLock<HashMap<u64, Arc<T>>>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new(tag: Tag) -> Self {
        Registry {
            tag,
            objects: LazyLock::new(Default::default),
        }
    }

    /// Keep `object` and return its handle (as an address-sized value for C).
    pub(crate) fn insert(&self, object: T) -> usize {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        assert!(id <= ID_MASK as u64, "kiln handle ids exhausted");
        self.objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::new(object));
        (self.tag as usize) << ID_BITS | id as usize
    }

    /// The object behind `handle`; `arg` names the argument in the error.
    pub(crate) fn get(&self, handle: usize, arg: &str) -> Result<Arc<T>, CError> {
        let id = self.id_of(handle, arg)?;
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        match objects.get(&id) {
            Some(o) => Ok(Arc::clone(o)),
            None => Err(self.missing(id, arg)),
        }
    }

    /// Forget `handle`, giving back the object (the caller drops it, possibly running its
    /// destructor, outside the registry's lock).
    pub(crate) fn remove(&self, handle: usize, arg: &str) -> Result<Arc<T>, CError> {
        let id = self.id_of(handle, arg)?;
        let removed = self
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        removed.ok_or_else(|| self.missing(id, arg))
    }

    fn id_of(&self, handle: usize, arg: &str) -> Result<u64, CError> {
        let want = self.tag.c_name();
        if handle == 0 {
            return Err(CError::invalid_handle(format!("{arg} is NULL")));
        }
        match Tag::from_byte((handle >> ID_BITS) as u8) {
            Some(t) if t == self.tag => Ok((handle & ID_MASK) as u64),
            Some(t) => Err(CError::invalid_handle(format!(
                "{arg} is a {}, not a {want}",
                t.c_name()
            ))),
            None => Err(CError::invalid_handle(format!(
                "{arg} ({handle:#x}) is not a {want} kiln returned"
            ))),
        }
    }

    fn missing(&self, id: u64, arg: &str) -> CError {
        let want = self.tag.c_name();
        if id < NEXT_ID.load(Ordering::Relaxed) {
            CError::invalid_handle(format!("{arg} is a {want} that was deleted already"))
        } else {
            CError::invalid_handle(format!("{arg} is not a {want} kiln returned"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NUMBERS: Registry<u32> = Registry::new(Tag::Graph);
    static OTHERS: Registry<u32> = Registry::new(Tag::Session);

    #[test]
    fn stale_foreign_and_null_handles_are_errors() {
        let h = NUMBERS.insert(7);
        assert_eq!(*NUMBERS.get(h, "g").unwrap(), 7);
        let other = OTHERS.get(h, "s").unwrap_err();
        assert!(other
            .message()
            .contains("s is a kiln_graph_t, not a kiln_session_t"));
        assert!(NUMBERS
            .get(0, "g")
            .unwrap_err()
            .message()
            .contains("g is NULL"));
        assert!(NUMBERS
            .get(0x1234, "g")
            .unwrap_err()
            .message()
            .contains("is not a kiln_graph_t kiln returned"));
        NUMBERS.remove(h, "g").unwrap();
        let stale = NUMBERS.get(h, "g").unwrap_err();
        assert!(
            stale.message().contains("deleted already"),
            "{}",
            stale.message()
        );
        // An id of the right type that was never issued.
        let future = (Tag::Graph as usize) << ID_BITS | (ID_MASK - 1);
        assert!(NUMBERS
            .get(future, "g")
            .unwrap_err()
            .message()
            .contains("not a kiln_graph_t kiln returned"));
    }
}
