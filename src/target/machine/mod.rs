//! The guest machine as the debugger reads it: registers in gdb's
//! numbering (`regs`, `target_xml`), paging modes and translation
//! (`paging`), lldb's memory regions (`regions`), guest RAM (`memory`),
//! and the x86 constants these share (`x86_constants`).

pub(crate) mod aarch64_regs;
pub(crate) mod arm_paging;
pub(crate) mod memory;
pub(crate) mod paging;
pub(crate) mod regions;
pub(crate) mod regs;
pub(crate) mod target_xml;
pub(crate) mod x86_constants;
