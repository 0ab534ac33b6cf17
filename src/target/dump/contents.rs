//! [`Contents`]: what a format reader found in a dump file.

use crate::target::dump::cpu::{Aarch64Cpu, DumpArch, DumpCpu};
use crate::target::dump::vmcoreinfo::VmcoreInfo;
use crate::target::machine::memory::GuestRam;

/// A dump's RAM, vCPUs, VMCOREINFO and format, as read.
pub(crate) struct Contents {
    pub(crate) ram: GuestRam,
    pub(crate) arch: DumpArch,
    /// x86 vCPUs (none in an arm64 dump).
    pub(crate) cpus: Vec<DumpCpu>,
    /// arm64 vCPUs (none in an x86 dump).
    pub(crate) arm_cpus: Vec<Aarch64Cpu>,
    pub(crate) vmcoreinfo: Option<VmcoreInfo>,
    /// What the file is, in a few words (`ELF`, `kdump-zlib (flattened),
    /// dump level 0, …`).
    pub(crate) format: String,
}
