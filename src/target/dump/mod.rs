//! What the debugger reads from host files.
//!
//! - memory dumps: `dump_file` (`Dump`: opens any format we read), over the
//!   format readers `elf_dump` (QEMU's ELF, raw RAM images) and `kdump`
//!   (kdump-compressed, through `file_view`: plain, or makedumpfile's
//!   flattened form put back together), what they share below them
//!   (`notes`: ELF notes and QEMU's CPU state; `vmcoreinfo`; `contents`;
//!   `cpu`: `DumpCpu`; `error`: `DumpError`);
//! - `symbols`: kernel symbol listings made into an ELF for gdb;
//! - `host_file`: the host-file rules (what a client may name, the
//!   exec-file served over `vFile`).

pub(crate) mod arm_kernel;
pub(crate) mod contents;
pub(crate) mod cpu;
pub(crate) mod dump_file;
pub(crate) mod elf_dump;
pub(crate) mod error;
pub(crate) mod file_view;
pub(crate) mod host_file;
pub(crate) mod kallsyms;
pub(crate) mod kdump;
pub(crate) mod notes;
pub(crate) mod symbols;
pub(crate) mod vmcoreinfo;
