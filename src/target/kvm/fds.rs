//! The debugger's own handles on a VMM's VM and vCPUs, made from the
//! VMM's file descriptors: a duplicate of each fd and, for a vCPU, a
//! mapping of its `kvm_run` page of its own (the kernel's page, the one the
//! VMM's mapping shows). The debugger needs nothing of the VMM's KVM
//! crates, so a VMM on any kvm-ioctls release embeds it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use kvm_bindings::{
    kvm_run, KVM_EXIT_DEBUG, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// A close-on-exec duplicate of `fd`, owned by the caller.
fn duplicate(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC reads no memory; a bad fd is an error.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(dup)
}

/// The debugger's handle on the VM whose fd is `vm` (a KVM VM fd of this
/// process, from any KVM crate).
pub(crate) fn vm_of(vm: &impl AsRawFd) -> io::Result<VmFd> {
    let kvm = Kvm::new()?;
    let fd = duplicate(vm.as_raw_fd())?;
    // SAFETY: `fd` is a new descriptor owned by nobody else; the VmFd takes
    // it over. Were it not a VM fd, its ioctls would fail, nothing more.
    unsafe { kvm.create_vmfd_from_rawfd(fd) }.map_err(io::Error::from)
}

/// The debugger's handle on the vCPU whose fd is `vcpu`, with its own
/// mapping of the vCPU's `kvm_run`.
pub(crate) fn vcpu_of(vm: &VmFd, vcpu: &impl AsRawFd) -> io::Result<VcpuFd> {
    let fd = duplicate(vcpu.as_raw_fd())?;
    // SAFETY: as in `vm_of`; mapping `kvm_run` from a fd that is not a
    // vCPU's fails (the fd is closed then).
    unsafe { vm.create_vcpu_from_rawfd(fd) }.map_err(io::Error::from)
}

/// The exit a `KVM_RUN` that returned success left in `run`, as far as
/// the debugger tells exits apart (every other reason is `Unknown`: the
/// VMM's, read from its own mapping).
pub(crate) fn exit_of(run: &mut kvm_run) -> VcpuExit<'_> {
    match run.exit_reason {
        KVM_EXIT_HLT => VcpuExit::Hlt,
        KVM_EXIT_SHUTDOWN => VcpuExit::Shutdown,
        KVM_EXIT_INTERNAL_ERROR => VcpuExit::InternalError,
        KVM_EXIT_DEBUG => {
            // SAFETY: with this exit reason the kernel filled `debug`.
            VcpuExit::Debug(unsafe { run.__bindgen_anon_1.debug.arch })
        }
        KVM_EXIT_FAIL_ENTRY => {
            // SAFETY: with this exit reason the kernel filled `fail_entry`.
            let fail = unsafe { run.__bindgen_anon_1.fail_entry };
            VcpuExit::FailEntry(fail.hardware_entry_failure_reason, fail.cpu)
        }
        KVM_EXIT_MMIO => {
            // SAFETY: with this exit reason the kernel filled `mmio`.
            let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
            let len = (mmio.len as usize).min(mmio.data.len());
            let gpa = mmio.phys_addr;
            if mmio.is_write != 0 {
                VcpuExit::MmioWrite(gpa, &mmio.data[..len])
            } else {
                VcpuExit::MmioRead(gpa, &mut mmio.data[..len])
            }
        }
        _ => VcpuExit::Unknown,
    }
}
