use std::fmt;

/// An address in the process that runs the code. Never a host pointer: out of process the two
/// differ, so the controller only does arithmetic on these.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ExecutorAddr(pub u64);

impl ExecutorAddr {
    pub const NULL: ExecutorAddr = ExecutorAddr(0);

    pub fn value(self) -> u64 {
        self.0
    }

    pub fn checked_add(self, off: u64) -> Option<ExecutorAddr> {
        self.0.checked_add(off).map(ExecutorAddr)
    }

    pub fn is_null(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for ExecutorAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for ExecutorAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Final protection of a segment. There is deliberately no read-write-execute value: W^X.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum MemProt {
    /// `r--`: read-only data, GOT, eh_frame, TLS images.
    Read,
    /// `r-x`: code and stubs.
    ReadExec,
    /// `rw-`: writable data and .bss.
    ReadWrite,
}

impl MemProt {
    pub fn as_str(self) -> &'static str {
        match self {
            MemProt::Read => "r--",
            MemProt::ReadExec => "r-x",
            MemProt::ReadWrite => "rw-",
        }
    }
}
