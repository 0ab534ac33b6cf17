//! vCPU registers beyond `KVM_GET_REGS`/`KVM_GET_SREGS`: x87/SSE and MSRs,
//! one ioctl each.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use crate::target::machine::x86_constants::MSR_KERNEL_GS_BASE;

/// The registers beyond the general and special ones: x87/SSE and
/// IA32_KERNEL_GS_BASE.
pub(crate) fn read_extra(fd: &VcpuFd) -> Result<(kvm_fpu, u64), kvm_ioctls::Error> {
    Ok((fd.get_fpu()?, read_msr(fd, MSR_KERNEL_GS_BASE)?))
}

/// The value of MSR `index` (KVM_GET_MSRS).
pub(crate) fn read_msr(fd: &VcpuFd, index: u32) -> Result<u64, kvm_ioctls::Error> {
    let mut msrs = msr_list(index, 0)?;
    match fd.get_msrs(&mut msrs)? {
        1 => Ok(msrs.as_slice()[0].data),
        _ => Err(kvm_ioctls::Error::new(libc::EINVAL)),
    }
}

/// MSR `index` = `data` as an MSR list for KVM_GET/SET_MSRS.
pub(crate) fn msr_list(index: u32, data: u64) -> Result<Msrs, kvm_ioctls::Error> {
    Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .map_err(|_| kvm_ioctls::Error::new(libc::ENOMEM))
}
