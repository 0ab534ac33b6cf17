//! The KVM side of the debugger: what touches vCPUs and the VM.
//!
//! - `hooks`: `VcpuHooks`, run by the VMM around its own `KVM_RUN`;
//! - `vcpu`: one vCPU's control block (commands, parking, stop reasons);
//! - `kick`: interrupting `KVM_RUN`; `run_gate`: memslot changes only with
//!   no vCPU inside `KVM_RUN`;
//! - `irq_step`: steps that keep out of interrupt handlers;
//! - `traps`: `PageTraps` and `KvmMemslots` (watched pages trapped through
//!   memslots); `page_watchpoints`: the watchpoints they serve;
//! - `planted_breakpoints`: software breakpoints (`int3` written into guest
//!   memory); `debug_registers`: DR0-DR7;
//! - `fds`: the debugger's own handles on the VMM's VM and vCPU fds.

pub(crate) mod debug_registers;
pub(crate) mod fds;
pub(crate) mod hooks;
pub(crate) mod irq_step;
pub(crate) mod kick;
pub(crate) mod page_watchpoints;
pub(crate) mod planted_breakpoints;
pub(crate) mod run_gate;
pub(crate) mod traps;
pub(crate) mod vcpu;
