//! x86 control-register and EFER bits: the ones that choose the paging
//! mode and the rights it enforces, and the few a VMM sets to enter long
//! mode. One copy for the target, the demo VMM and the tests.

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1;
/// CR0.MP: monitor coprocessor.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.ET: extension type (reads as 1).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE: native x87 error reporting.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.WP: supervisor writes honour read-only pages.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages in 32-bit paging.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: physical address extension (PAE and long-mode paging).
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.OSFXSR: FXSAVE/FXRSTOR and SSE.
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT: unmasked SSE exceptions.
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.SMEP: no supervisor execution of user pages.
pub const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP: no supervisor access to user pages (unless RFLAGS.AC).
pub const CR4_SMAP: u64 = 1 << 21;
/// CR4.PKE: protection keys for user pages.
pub const CR4_PKE: u64 = 1 << 22;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: the XD bit in page-table entries.
pub const EFER_NXE: u64 = 1 << 11;
