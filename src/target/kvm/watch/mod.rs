//! What the debugger watches for, and how watched pages are trapped.
//!
//! - `watches` (the component): `planted_breakpoints` (`int3` written into
//!   guest memory), `page_watchpoints` (watchpoints served from trapped
//!   pages), `table_watches` (`vmem watch`), `debug_registers` (DR0-DR7);
//! - `trapping` (the component): the traps in force; `memslots`:
//!   `PageTraps` and `KvmMemslots` (watched pages trapped through
//!   memslots); `run_gate`: memslot changes only with no vCPU inside
//!   `KVM_RUN`.

pub(crate) mod debug_registers;
pub(crate) mod memslots;
pub(crate) mod page_watchpoints;
pub(crate) mod planted_breakpoints;
pub(crate) mod run_gate;
pub(crate) mod table_watches;
pub(crate) mod trapping;
pub(crate) mod watches;
