//! The KVM side of the debugger: what touches vCPUs and the VM, and the
//! state the vCPU threads share with the gdb thread.
//!
//! - `hooks`: `VcpuHooks`, run by the VMM around its own `KVM_RUN`;
//! - `shared`: `Inner`, made of the components below;
//! - `vcpus` (the component), `vcpu` (one vCPU's control block:
//!   parking, the calls gdb sends it) and `command` (what it is told,
//!   why it stopped);
//! - `lending`: the gdb session lent to a vCPU thread, known through a
//!   trait (the gdb side implements it); `gdb_link`: wakers, stop of
//!   serving, who holds the VM;
//! - `kick`: interrupting `KVM_RUN`; `run_gate`: memslot changes only with
//!   no vCPU inside `KVM_RUN`;
//! - `irq_step`: steps that keep out of interrupt handlers; `qemu_flags`:
//!   what QEMU's packets set;
//! - `watches` (the component): `planted_breakpoints` (`int3` written into
//!   guest memory), `page_watchpoints`, `table_watches` (`vmem watch`),
//!   `debug_registers` (DR0-DR7);
//! - `trapping` (the component): the traps in force; `memslots`: `PageTraps`
//!   and `KvmMemslots` (watched pages trapped through memslots);
//! - `fds`: the debugger's own handles on the VMM's VM and vCPU fds.

pub(crate) mod command;
pub(crate) mod debug_registers;
pub(crate) mod exit_decision;
pub(crate) mod fds;
pub(crate) mod gdb_link;
pub(crate) mod hooks;
pub(crate) mod irq_step;
pub(crate) mod kick;
pub(crate) mod lending;
pub(crate) mod memslots;
pub(crate) mod msrs;
pub(crate) mod page_watchpoints;
pub(crate) mod planted_breakpoints;
pub(crate) mod qemu_flags;
pub(crate) mod run_gate;
pub(crate) mod shared;
pub(crate) mod table_watches;
pub(crate) mod trapping;

pub(crate) mod vcpu;
pub(crate) mod vcpus;
pub(crate) mod watches;
