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
//! - `kick`: interrupting `KVM_RUN`; `msrs`: x87/SSE and MSR ioctls;
//! - `irq_step`: steps that keep out of interrupt handlers; `qemu_flags`:
//!   what QEMU's packets set;
//! - `exit_decision`: whose a `KVM_RUN`'s end is (a pure function);
//! - `watch/`: what the debugger watches for and how pages are trapped;
//! - `fds`: the debugger's own handles on the VMM's VM and vCPU fds.

pub(crate) mod command;
pub(crate) mod exit_decision;
pub(crate) mod fds;
pub(crate) mod gdb_link;
pub(crate) mod hooks;
pub(crate) mod irq_step;
pub(crate) mod kick;
pub(crate) mod lending;
pub(crate) mod msrs;
pub(crate) mod qemu_flags;
pub(crate) mod shared;
pub(crate) mod vcpu;
pub(crate) mod vcpus;
pub(crate) mod watch;
