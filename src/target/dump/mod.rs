//! What the debugger reads from host files: memory dumps (`elf_dump`:
//! QEMU's ELF, raw RAM images), kernel symbol listings made into an ELF
//! for gdb (`symbols`), and the host-file rules (`host_file`: what a client
//! may name, the exec-file served over `vFile`).

pub(crate) mod elf_dump;
pub(crate) mod host_file;
pub(crate) mod symbols;
