//! [`Dump`]: a stopped VM from a file, whatever its format — QEMU's ELF
//! (`elf_dump`), a kdump-compressed file plain or flattened (`kdump`), or a
//! raw RAM image — as guest RAM, the vCPUs' state and the VMCOREINFO the
//! guest left.

use std::fs::File;
use std::path::Path;
use std::sync::OnceLock;

use log::debug;
use memmap2::{Mmap, MmapOptions};

use crate::arch::PageTableFormat;
use crate::target::dump::arm_kernel::ArmKernel;
use crate::target::dump::contents::Contents;
use crate::target::dump::cpu::{Aarch64Cpu, DumpArch, DumpCpu};
use crate::target::dump::elf_dump;
use crate::target::dump::error::{unsupported_format, DumpError};
use crate::target::dump::file_view::{FileView, FLATTENED_SIGNATURE};
use crate::target::dump::kallsyms::{self, Offsets};
use crate::target::dump::kdump::{self, KDUMP_SIGNATURE};
use crate::target::dump::notes;
use crate::target::dump::vmcoreinfo::VmcoreInfo;
use crate::target::machine::memory::{GuestRam, GuestTables, HostSpans};
use crate::target::machine::paging::{CpuLimits, Paging};
use crate::vmem::{self, HumanBytes};

/// A memory dump: guest RAM and the vCPUs' state.
#[derive(Debug)]
pub struct Dump {
    ram: GuestRam,
    arch: DumpArch,
    cpus: Vec<DumpCpu>,
    arm_cpus: Vec<Aarch64Cpu>,
    vmcoreinfo: Option<VmcoreInfo>,
    format: String,
    /// An arm64 dump's kernel translation, found once.
    arm_kernel: OnceLock<Result<ArmKernel, String>>,
}

impl Dump {
    /// Map and check the dump at `path` — QEMU's ELF, or a kdump-compressed
    /// file, plain or flattened — (milliseconds, whatever its size: nothing
    /// is read but the headers, notes and bitmaps).
    pub fn open(path: &Path) -> Result<Dump, DumpError> {
        let file = File::open(path).map_err(|e| DumpError::Io(path.to_path_buf(), e))?;
        Dump::open_file(&file, path)
    }

    /// As [`Dump::open`], for a file already open (`path` names it in
    /// errors).
    pub(crate) fn open_file(file: &File, path: &Path) -> Result<Dump, DumpError> {
        let map = map_file(file, path)?;
        let contents = if map.starts_with(KDUMP_SIGNATURE) {
            read_kdump(FileView::plain(map))?
        } else if map.starts_with(FLATTENED_SIGNATURE) {
            read_kdump(FileView::flattened(map)?)?
        } else if let Some(what) = unsupported_format(&map) {
            return Err(DumpError::Unsupported(what));
        } else {
            elf_dump::read(map)?
        };
        debug!(
            "{}: {}, {} CPU(s), {} of RAM{}",
            path.display(),
            contents.format,
            contents.cpus.len() + contents.arm_cpus.len(),
            HumanBytes(contents.ram.total_size()),
            if contents.vmcoreinfo.is_some() {
                ", VMCOREINFO"
            } else {
                ""
            }
        );
        Ok(Dump {
            ram: contents.ram,
            arch: contents.arch,
            cpus: contents.cpus,
            arm_cpus: contents.arm_cpus,
            vmcoreinfo: contents.vmcoreinfo,
            format: contents.format,
            arm_kernel: OnceLock::new(),
        })
    }

    /// A raw RAM image (another VMM's snapshot): the whole file is guest
    /// RAM from `ram_base`, and `cpu` says where the one vCPU was.
    pub fn raw(path: &Path, ram_base: u64, cpu: DumpCpu) -> Result<Dump, DumpError> {
        let file = File::open(path).map_err(|e| DumpError::Io(path.to_path_buf(), e))?;
        Ok(Dump {
            ram: elf_dump::raw(map_file(&file, path)?, ram_base)?,
            arch: DumpArch::X86_64,
            cpus: vec![cpu],
            arm_cpus: Vec::new(),
            vmcoreinfo: None,
            format: "raw RAM image".into(),
            arm_kernel: OnceLock::new(),
        })
    }

    /// Guest RAM (read-only: gdb's writes are refused).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The x86 vCPUs, in the dump's order (none in an arm64 dump).
    pub fn cpus(&self) -> &[DumpCpu] {
        &self.cpus
    }

    /// The guest's architecture.
    pub fn arch(&self) -> DumpArch {
        self.arch
    }

    /// The arm64 vCPUs, in the dump's order (none in an x86 dump).
    pub fn aarch64_cpus(&self) -> &[Aarch64Cpu] {
        &self.arm_cpus
    }

    /// How an arm64 dump's kernel translates its addresses (TTBR1's
    /// table from VMCOREINFO, else found in RAM); why not where neither
    /// finds it, or for an x86 dump. Found once (a scan reads every page).
    pub fn aarch64_kernel(&self) -> Result<&ArmKernel, String> {
        if self.arch != DumpArch::Aarch64 {
            return Err("not an arm64 dump".into());
        }
        self.arm_kernel
            .get_or_init(|| ArmKernel::find(&self.ram, self.vmcoreinfo(), &self.arm_cpus))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The VMCOREINFO the guest left, if any.
    pub fn vmcoreinfo(&self) -> Option<&VmcoreInfo> {
        self.vmcoreinfo.as_ref()
    }

    /// The kernel's symbols as `/proc/kallsyms` lines, decoded from its
    /// own kallsyms tables through the VMCOREINFO (Linux 6.x), read
    /// through the kernel's page tables; why not where it cannot be.
    pub fn kallsyms(&self) -> Result<String, String> {
        let info = self.vmcoreinfo().ok_or("the dump has no VMCOREINFO")?;
        let x86;
        let (format, root, offsets): (&dyn PageTableFormat, u64, Offsets) = match self.arch {
            // The one arm64 kernel translation the debugger uses too.
            DumpArch::Aarch64 => {
                let kernel = self.aarch64_kernel()?;
                (&kernel.format, kernel.root, Offsets::Relative)
            }
            _ => {
                let (root, _) = info
                    .kernel_root()
                    .ok_or("VMCOREINFO names no kernel page table")?;
                let cpu = self.cpus.first().ok_or("the dump has no CPU")?;
                let Paging::Paged { format, .. } = Paging::of(&cpu.sregs, &CpuLimits::default())
                else {
                    return Err("the first CPU has paging off".into());
                };
                x86 = format;
                (x86.as_dyn(), root, Offsets::AbsolutePercpu)
            }
        };
        let tables = GuestTables::new(&self.ram, root, None);
        let read = |va: u64, buf: &mut [u8]| {
            let Ok((pa, page)) = vmem::translate_pa(format, &tables, root, va) else {
                return false;
            };
            let left = page.bytes() - (va & (page.bytes() - 1));
            left >= buf.len() as u64 && self.ram.read(pa, buf).is_ok()
        };
        kallsyms::kallsyms(info, offsets, &read)
    }

    /// What the file is, in a few words (`ELF`; `kdump-zlib (flattened),
    /// dump level 0, 65536 of 65536 RAM pages dumped` …).
    pub fn format(&self) -> &str {
        &self.format
    }
}

/// `file` mapped read-only (copy-on-write).
fn map_file(file: &File, path: &Path) -> Result<Mmap, DumpError> {
    // SAFETY: a private (copy-on-write) mapping: writes through it never
    // reach the file. The dump must not be truncated while served (as
    // with any mapped file, that would fault).
    unsafe { MmapOptions::new().map_copy_read_only(file) }
        .map_err(|e| DumpError::Io(path.to_path_buf(), e))
}

/// A kdump file's RAM, and its vCPUs from the ELF notes it carries.
fn read_kdump(view: FileView) -> Result<Contents, DumpError> {
    let (memory, headers) = kdump::open(view)?;
    // QEMU writes "Unknown" for arm64 guests: then the notes tell (QEMU's
    // x86 CPU-state notes, or arm64's register notes).
    let vmcoreinfo = match &headers.vmcoreinfo {
        Some(text) => Some(VmcoreInfo::parse(text)),
        None => notes::vmcoreinfo(&headers.notes)?,
    };
    let x86 = || notes::x86_cpus(&headers.notes, vmcoreinfo.as_ref());
    let arm = || notes::aarch64_cpus(&headers.notes);
    let (arch, cpus, arm_cpus) = match headers.machine.as_str() {
        "x86_64" => (DumpArch::X86_64, x86()?, Vec::new()),
        "aarch64" => (DumpArch::Aarch64, Vec::new(), arm()?),
        _ => match x86()? {
            cpus if !cpus.is_empty() => (DumpArch::X86_64, cpus, Vec::new()),
            _ => (DumpArch::Aarch64, Vec::new(), arm()?),
        },
    };
    if cpus.is_empty() && arm_cpus.is_empty() {
        return Err(DumpError::NoCpus);
    }
    Ok(Contents {
        ram: GuestRam::from_access(memory, HostSpans::Untrusted),
        arch,
        cpus,
        arm_cpus,
        vmcoreinfo,
        format: headers.format,
    })
}
