//! The target's one error type.

use std::fmt;

/// What went wrong in the debugger (the `Target::Error` gdbstub sees, and
/// the error of the embedding API).
#[derive(Debug)]
#[non_exhaustive]
pub enum StubError {
    /// There is no vCPU with this index.
    NoSuchVcpu(usize),
    /// The vCPU's hooks are already held by another thread.
    VcpuClaimed(usize),
    /// The vCPU is not parked in its hooks (its loop ended or never
    /// started), so its registers cannot be reached.
    NotParked(usize),
    /// A vCPU ioctl failed.
    Vcpu {
        /// The vCPU.
        vcpu: usize,
        /// The ioctl, e.g. `"KVM_GET_REGS"`.
        op: &'static str,
        /// What KVM said.
        source: kvm_ioctls::Error,
    },
    /// The VMM could not lay out memslots for trapped pages.
    PageTraps(std::io::Error),
    /// A gdb session holds the VM.
    Attached,
    /// The debugger could not make its own handle on vCPU `vcpu` from the
    /// VMM's fd (not a vCPU fd of this process, or out of descriptors).
    VcpuHandle {
        /// The vCPU.
        vcpu: usize,
        /// Why.
        source: std::io::Error,
    },
    /// A memory dump has no vCPUs to run.
    Frozen,
}

impl StubError {
    /// A failed ioctl `op` on vCPU `vcpu`, for `map_err`.
    pub(crate) fn vcpu(vcpu: usize, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |source| StubError::Vcpu { vcpu, op, source }
    }
}

impl fmt::Display for StubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StubError::NoSuchVcpu(i) => write!(f, "there is no vcpu {i}"),
            StubError::VcpuClaimed(i) => write!(f, "vcpu {i}'s hooks are already in use"),
            StubError::NotParked(i) => write!(f, "vcpu {i} is not parked in its hooks"),
            StubError::Vcpu { vcpu, op, source } => write!(f, "vcpu {vcpu}: {op}: {source}"),
            StubError::PageTraps(e) => write!(f, "cannot trap guest pages: {e}"),
            StubError::Attached => write!(f, "a gdb session holds the VM"),
            StubError::VcpuHandle { vcpu, source } => {
                write!(f, "vcpu {vcpu}: no handle on the VMM's fd: {source}")
            }
            StubError::Frozen => write!(f, "a memory dump's vCPUs do not run"),
        }
    }
}

impl std::error::Error for StubError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StubError::Vcpu { source, .. } => Some(source),
            StubError::PageTraps(e) | StubError::VcpuHandle { source: e, .. } => Some(e),
            _ => None,
        }
    }
}
