//! `info dump` and `info vmcoreinfo`: what the dump being served is, and
//! what the guest's VMCOREINFO says.

use std::fmt::Write;

use super::context::Context;
use super::errors::CmdError;
use crate::vmem::HumanBytes;

/// Usage lines (shown with QEMU's commands).
pub(crate) const USAGE: &str = "\
info dump           what the dump being served is: its format, CPUs and RAM,
    and what its VMCOREINFO says (kernel release, KASLR offset, phys_base,
    the kernel's page-table root)
info vmcoreinfo     the guest's VMCOREINFO, every line as it left it
";

/// `info dump`.
pub(crate) fn info_dump(ctx: &Context<'_>, out: &mut String) -> Result<(), CmdError> {
    let dump = ctx.dump.ok_or("not a dump: this is a live VM")?;
    let ranges = ctx.memory.ranges();
    let _ = writeln!(out, "format: {}", dump.format);
    let _ = writeln!(out, "CPUs: {}", ctx.cpu_count);
    let _ = writeln!(
        out,
        "RAM: {} in {} range(s)",
        HumanBytes(ctx.memory.total_size()),
        ranges.len()
    );
    let Some(info) = &dump.vmcoreinfo else {
        out.push_str("VMCOREINFO: none (QEMU writes it when the VM has -device vmcoreinfo and the guest loaded qemu_fw_cfg)\n");
        return Ok(());
    };
    let or_none = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "VMCOREINFO: {} entries", info.entries().count());
    let _ = writeln!(out, "  release: {}", info.os_release().unwrap_or("-"));
    let _ = writeln!(
        out,
        "  page size: {}",
        or_none(info.page_size().map(|p| p.to_string()))
    );
    let _ = writeln!(
        out,
        "  KASLR offset: {}",
        or_none(info.kernel_offset().map(|o| format!("{o:#x}")))
    );
    // Addresses in hex, counts and flags in decimal.
    for (number, address) in [
        ("phys_base", true),
        ("kimage_voffset", true),
        ("PHYS_OFFSET", true),
        ("VA_BITS", false),
        ("pgtable_l5_enabled", false),
        ("KERNELPACMASK", true),
    ] {
        let _ = match info.number(number) {
            Some(value) if address => writeln!(out, "  {number}: {value:#x}"),
            Some(value) => writeln!(out, "  {number}: {value}"),
            None => Ok(()),
        };
    }
    match info.kernel_root() {
        Some((root, how)) => {
            let _ = writeln!(out, "  kernel page-table root: {root:#x} ({how})");
        }
        None => out.push_str("  kernel page-table root: not said\n"),
    }
    Ok(())
}

/// `info vmcoreinfo`.
pub(crate) fn info_vmcoreinfo(ctx: &Context<'_>, out: &mut String) -> Result<(), CmdError> {
    let dump = ctx.dump.ok_or("not a dump: this is a live VM")?;
    let info = dump
        .vmcoreinfo
        .as_ref()
        .ok_or("this dump has no VMCOREINFO")?;
    for (key, value) in info.entries() {
        let _ = writeln!(out, "{key}={value}");
    }
    Ok(())
}
