//! [`Dump`]: a stopped VM from a file, whatever its format — QEMU's ELF
//! (`elf_dump`), a kdump-compressed file plain or flattened (`kdump`), or a
//! raw RAM image — as guest RAM, the vCPUs' state and the VMCOREINFO the
//! guest left.

use std::fs::File;
use std::path::Path;

use log::debug;
use memmap2::{Mmap, MmapOptions};

use crate::target::dump::contents::Contents;
use crate::target::dump::cpu::DumpCpu;
use crate::target::dump::elf_dump;
use crate::target::dump::error::{unsupported_format, DumpError};
use crate::target::dump::file_view::{FileView, FLATTENED_SIGNATURE};
use crate::target::dump::kallsyms;
use crate::target::dump::kdump::{self, KDUMP_SIGNATURE};
use crate::target::dump::notes;
use crate::target::dump::vmcoreinfo::VmcoreInfo;
use crate::target::machine::memory::{GuestRam, HostSpans};
use crate::target::machine::paging::{CpuLimits, Paging};
use crate::vmem::HumanBytes;

/// A memory dump: guest RAM and the vCPUs' state.
#[derive(Debug)]
pub struct Dump {
    ram: GuestRam,
    cpus: Vec<DumpCpu>,
    vmcoreinfo: Option<VmcoreInfo>,
    format: String,
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
            contents.cpus.len(),
            HumanBytes(contents.ram.total_size()),
            if contents.vmcoreinfo.is_some() {
                ", VMCOREINFO"
            } else {
                ""
            }
        );
        Ok(Dump {
            ram: contents.ram,
            cpus: contents.cpus,
            vmcoreinfo: contents.vmcoreinfo,
            format: contents.format,
        })
    }

    /// A raw RAM image (another VMM's snapshot): the whole file is guest
    /// RAM from `ram_base`, and `cpu` says where the one vCPU was.
    pub fn raw(path: &Path, ram_base: u64, cpu: DumpCpu) -> Result<Dump, DumpError> {
        let file = File::open(path).map_err(|e| DumpError::Io(path.to_path_buf(), e))?;
        Ok(Dump {
            ram: elf_dump::raw(map_file(&file, path)?, ram_base)?,
            cpus: vec![cpu],
            vmcoreinfo: None,
            format: "raw RAM image".into(),
        })
    }

    /// Guest RAM (read-only: gdb's writes are refused).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The vCPUs, in the dump's order.
    pub fn cpus(&self) -> &[DumpCpu] {
        &self.cpus
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
        let (root, _) = info
            .kernel_root()
            .ok_or("VMCOREINFO names no kernel page table")?;
        let cpu = self.cpus.first().ok_or("the dump has no CPU")?;
        let Paging::Paged { format, .. } = Paging::of(&cpu.sregs, &CpuLimits::default()) else {
            return Err("the first CPU has paging off".into());
        };
        let kernel = Paging::Paged { format, root };
        let read = |va: u64, buf: &mut [u8]| {
            kernel
                .translate(&self.ram, va)
                .is_ok_and(|(pa, left)| left >= buf.len() as u64 && self.ram.read(pa, buf).is_ok())
        };
        kallsyms::kallsyms(info, &read)
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
    if !matches!(headers.machine.as_str(), "x86_64" | "") {
        return Err(DumpError::Kdump(format!(
            "a dump of a {} guest: only x86_64 kdump files are served so far",
            headers.machine
        )));
    }
    let cpus = notes::qemu_cpus(&headers.notes)?;
    if cpus.is_empty() {
        return Err(DumpError::NoCpus);
    }
    let vmcoreinfo = match headers.vmcoreinfo {
        Some(text) => Some(VmcoreInfo::parse(&text)),
        None => notes::vmcoreinfo(&headers.notes)?,
    };
    Ok(Contents {
        ram: GuestRam::from_access(memory, HostSpans::Untrusted),
        cpus,
        vmcoreinfo,
        format: headers.format,
    })
}
