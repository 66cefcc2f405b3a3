//! A slot in the static TLS area, for the local-exec and initial-exec models (and TLS
//! descriptors relaxed to local-exec).
//!
//! Those models address a variable at a fixed offset from the thread pointer (`%fs`), the same
//! in every thread, so the variable must live in the static TLS area that glibc lays out below
//! each thread's TCB. A JIT cannot extend that area by itself — but glibc can: a shared object
//! flagged `DF_STATIC_TLS` is given space in the surplus glibc reserves for such objects, and
//! glibc copies its TLS image into every thread that exists at `dlopen` time and into every
//! thread created later. So the runtime writes a minimal shared object — no code, no symbols,
//! just a `PT_TLS` segment holding the unit's `.tdata` image and `.tbss` size — to a memfd,
//! dlopens it, and reports the block's offset from the thread pointer.
//!
//! Limits: the surplus is small (glibc 2.36 reserves about 1.5 KiB for all such objects unless
//! `GLIBC_TUNABLES=glibc.rtld.optional_static_tls=BYTES` raises it at process start); when it
//! runs out, dlopen fails with "cannot allocate memory in static TLS block" and the link fails
//! with that error. Static TLS is never returned: removing the unit leaks its slot.

use crate::{Error, Result};
use std::io::Write;
use std::os::fd::AsRawFd;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_TLS: u32 = 7;
const PT_GNU_STACK: u32 = 0x6474_e551;
const DT_NULL: u64 = 0;
const DT_HASH: u64 = 4;
const DT_STRTAB: u64 = 5;
const DT_SYMTAB: u64 = 6;
const DT_STRSZ: u64 = 10;
const DT_SYMENT: u64 = 11;
const DT_RELA: u64 = 7;
const DT_RELASZ: u64 = 8;
const DT_RELAENT: u64 = 9;
const DT_FLAGS: u64 = 30;
const R_X86_64_TPOFF64: u64 = 18;
const DF_STATIC_TLS: u64 = 0x10;

fn push_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn push_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn push_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// The bytes of a shared object whose only content is a TLS segment.
pub(crate) fn tls_object(image: &[u8], block_size: u64, align: u64) -> Vec<u8> {
    let align = align.max(1);
    let phnum = 4u64;
    let dyn_off = 64 + 56 * phnum;
    let ndyn = 10u64;
    let hash_off = dyn_off + 16 * ndyn;
    let sym_off = hash_off + 16;
    let rela_off = sym_off + 24;
    let slot_off = rela_off + 24;
    let str_off = slot_off + 8;
    let tls_off = (str_off + 1).div_ceil(align) * align;
    let file_size = tls_off + image.len() as u64;
    let mut v = Vec::with_capacity(file_size as usize);
    // ELF header.
    v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    push_u16(&mut v, 3); // ET_DYN
    push_u16(&mut v, 62); // EM_X86_64
    push_u32(&mut v, 1);
    push_u64(&mut v, 0); // e_entry
    push_u64(&mut v, 64); // e_phoff
    push_u64(&mut v, 0); // e_shoff
    push_u32(&mut v, 0);
    push_u16(&mut v, 64);
    push_u16(&mut v, 56);
    push_u16(&mut v, phnum as u16);
    push_u16(&mut v, 64);
    push_u16(&mut v, 0);
    push_u16(&mut v, 0);
    let phdr =
        |v: &mut Vec<u8>, ty: u32, flags: u32, off: u64, filesz: u64, memsz: u64, al: u64| {
            push_u32(v, ty);
            push_u32(v, flags);
            push_u64(v, off);
            push_u64(v, off); // vaddr = offset
            push_u64(v, off);
            push_u64(v, filesz);
            push_u64(v, memsz);
            push_u64(v, al);
        };
    // One read-write (never executable) load segment for everything; glibc may adjust the
    // dynamic section in place.
    phdr(&mut v, PT_LOAD, 4 | 2, 0, file_size, file_size, 0x1000);
    phdr(&mut v, PT_DYNAMIC, 4 | 2, dyn_off, 16 * ndyn, 16 * ndyn, 8);
    phdr(
        &mut v,
        PT_TLS,
        4,
        tls_off,
        image.len() as u64,
        block_size,
        align,
    );
    // Without PT_GNU_STACK glibc would make every thread's stack executable.
    phdr(&mut v, PT_GNU_STACK, 4 | 2, 0, 0, 0, 16);
    for (tag, val) in [
        (DT_HASH, hash_off),
        (DT_STRTAB, str_off),
        (DT_SYMTAB, sym_off),
        (DT_STRSZ, 1),
        (DT_SYMENT, 24),
        (DT_RELA, rela_off),
        (DT_RELASZ, 24),
        (DT_RELAENT, 24),
        (DT_FLAGS, DF_STATIC_TLS),
        (DT_NULL, 0),
    ] {
        push_u64(&mut v, tag);
        push_u64(&mut v, val);
    }
    // SysV hash table: one bucket, one chain entry (the null symbol).
    for x in [1u32, 1, 0, 0] {
        push_u32(&mut v, x);
    }
    v.extend_from_slice(&[0u8; 24]); // the null symbol
                                     // One TPOFF64 relocation against the object's own TLS block: glibc moves a dlopened module
                                     // into static TLS only when such a relocation needs it (DF_STATIC_TLS alone does not).
    push_u64(&mut v, slot_off);
    push_u64(&mut v, R_X86_64_TPOFF64);
    push_u64(&mut v, 0);
    push_u64(&mut v, 0); // the slot it writes
    v.push(0); // string table
    v.resize(tls_off as usize, 0);
    v.extend_from_slice(image);
    v
}

/// The thread pointer of the calling thread (`%fs:0` holds the TCB's own address on x86-64).
pub(crate) fn thread_pointer() -> u64 {
    let tp: u64;
    // SAFETY: reading the first word of the TCB through %fs is how the x86-64 TLS ABI defines
    // the thread pointer; glibc sets it up for every thread before any code runs on it.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    tp
}

/// Reserve a static TLS block holding `image` followed by zeros up to `block_size`, in every
/// thread; returns its offset from the thread pointer (negative on x86-64).
pub(crate) fn allocate(image: &[u8], block_size: u64, align: u64) -> Result<i64> {
    if image.len() as u64 > block_size
        || !align.is_power_of_two()
        || align > 4096
        || block_size > (1 << 24)
    {
        return Err(Error::Tls(format!(
            "bad static TLS request: image {} bytes, block {block_size} bytes, align {align}",
            image.len()
        )));
    }
    let bytes = tls_object(image, block_size, align);
    let fd = rustix::fs::memfd_create(c"kiln-static-tls", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| Error::Tls(format!("memfd_create: {e}")))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&bytes)
        .map_err(|e| Error::Tls(format!("writing the TLS object: {e}")))?;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let handle = super::dl::open(&path).map_err(|e| match e {
        Error::LoadLibrary { why, .. } => Error::Tls(format!(
            "cannot reserve {block_size} bytes of static TLS for local-exec/initial-exec code: {why} \
             (raise glibc's reserve with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=BYTES)"
        )),
        e => e,
    })?;
    drop(file); // the mapping keeps the object alive
    let mut module: libc::size_t = 0;
    // SAFETY: RTLD_DI_TLS_MODID stores the object's TLS module id into a size_t; the handle is
    // valid.
    let r = unsafe {
        libc::dlinfo(
            handle.raw(),
            libc::RTLD_DI_TLS_MODID,
            (&mut module as *mut libc::size_t).cast(),
        )
    };
    if r != 0 || module == 0 {
        return Err(Error::Tls("the static TLS object has no TLS module".into()));
    }
    // The calling thread's block, through the system's __tls_get_addr (which also brings this
    // thread's DTV up to date).
    // SAFETY: `module` is the id ld.so gave the object it just loaded (dlinfo, checked non-zero).
    let block = unsafe { super::tls::system_block(module as u64) }
        .ok_or_else(|| Error::Tls("no __tls_get_addr in this process".into()))?;
    Ok(block as i64 - thread_pointer() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_sees_the_image_at_the_same_offset() {
        let before = std::thread::spawn(|| {
            let (tx, rx) = std::sync::mpsc::channel::<i64>();
            (tx, rx)
        });
        let (tx, rx) = before.join().unwrap();
        // A thread that exists before the allocation.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<i64>();
        let old = std::thread::spawn(move || {
            let off = go_rx.recv().unwrap();
            let p = (thread_pointer() as i64 + off) as *const u64;
            // SAFETY: glibc initialised this thread's copy of the static block at dlopen time.
            let v = unsafe { p.read() };
            tx.send(v as i64).unwrap();
        });
        let image = 0x1122_3344_5566_7788u64.to_le_bytes();
        let off = allocate(&image, 64, 16).unwrap();
        assert!(off < 0, "static TLS lies below the thread pointer: {off}");
        go_tx.send(off).unwrap();
        assert_eq!(
            rx.recv().unwrap() as u64,
            0x1122_3344_5566_7788,
            "thread that existed before"
        );
        old.join().unwrap();
        let here = (thread_pointer() as i64 + off) as *mut u64;
        // SAFETY: this thread's block, 64 bytes, initialised by glibc.
        unsafe {
            assert_eq!(here.read(), 0x1122_3344_5566_7788);
            assert_eq!(here.add(7).read(), 0, ".tbss part is zero");
            here.write(5);
        }
        let new = std::thread::spawn(move || {
            let p = (thread_pointer() as i64 + off) as *const u64;
            // SAFETY: as above, for a thread created after the allocation.
            unsafe { p.read() }
        });
        assert_eq!(
            new.join().unwrap(),
            0x1122_3344_5566_7788,
            "new threads get the image, not our write"
        );
    }
}
