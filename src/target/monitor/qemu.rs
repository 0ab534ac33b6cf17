//! QEMU's monitor commands, in QEMU's exact output formats, so pwndbg,
//! GEF and gdb-pt-dump work unchanged (formats from QEMU's
//! target/i386/monitor.c, monitor/hmp-cmds-target.c, target/i386/cpu-dump.c).

use std::fmt::Write;

use kvm_bindings::kvm_segment;

use super::args;
use super::context::{cpu_index, Context, Effect};
use super::errors::{usage, CmdError};
use super::lapic::render;
use super::qemu_aarch64;
use crate::target::machine::memory::GuestTables;
use crate::target::machine::paging::WALK_BUDGET;
use crate::vmem::{self, Flags, Perms};

/// Usage of the QEMU-compatible commands.
pub(crate) const USAGE: &str = "\
info mem            ranges of equal protection: start-end size [u-]r[w-]
info tlb            every page: va: pa XGPDACTUW
info registers      the current vCPU's registers, QEMU layout
info cpus           every vCPU and the host thread that runs it; * marks
    the one the other commands use (cpu N's, else the one that stopped)
cpu N               make vCPU N the one the commands use, until the VM
    next stops
gva2gpa ADDR        physical address of ADDR in the current space
gpa2hva ADDR        where this process holds guest-physical ADDR
info mtree [-f]     guest-physical memory as QEMU's flat view: RAM
    ranges (memslots; a dump's pieces) and the holes between them
chardev-add file,id=ID,path=PATH
                    open an existing file read-only (nothing is written;
                    the handshake gdb-pt-dump uses to find the VMM)
chardev-remove ID   close it
xp /FMT ADDR        physical memory dump (FMT: count, x|d|u|c, b|h|w|g)
    e.g. monitor xp /4xg 0x100000
x /FMT ADDR         virtual memory dump through the current space
    e.g. monitor x /2gx $sp+8
ADDR and other numbers: hex, decimal, 4k/2m/1g, $pc/$sp/$rax/$cr3...,
    + - * & | and parentheses
";

fn mappings<'a>(
    ctx: &'a Context<'_>,
    tables: &'a GuestTables<'a>,
) -> Result<impl Iterator<Item = vmem::Mapping> + 'a, CmdError> {
    let fmt = ctx.format.ok_or("PG disabled")?;
    Ok(vmem::virt_to_phys(fmt, tables, 0, u64::MAX)
        .with_budget(WALK_BUDGET)
        .filter_map(Result::ok))
}

/// `info mem`: runs of equal user / write protection, PA ignored.
pub(crate) fn info_mem(ctx: &Context<'_>, out: &mut String) -> Result<(), CmdError> {
    let Some(root) = ctx.root else {
        out.push_str("PG disabled\n");
        return Ok(());
    };
    let tables = GuestTables::new(ctx.memory, root, None);
    let mut run: Option<(u64, u64, Perms)> = None;
    let emit = |out: &mut String, (start, end, perms): (u64, u64, Perms)| {
        let _ = writeln!(
            out,
            "{start:016x}-{end:016x} {:016x} {}r{}",
            end.wrapping_sub(start),
            if perms.contains(Perms::USER) {
                'u'
            } else {
                '-'
            },
            if perms.contains(Perms::WRITE) {
                'w'
            } else {
                '-'
            }
        );
    };
    for m in mappings(ctx, &tables)? {
        let prot = m.perms() & (Perms::USER | Perms::WRITE);
        let end = m.virt_base.wrapping_add(m.len);
        match &mut run {
            Some((_, run_end, run_prot)) if *run_end == m.virt_base && *run_prot == prot => {
                *run_end = end
            }
            _ => {
                if let Some(done) = run.replace((m.virt_base, end, prot)) {
                    emit(out, done);
                }
            }
        }
    }
    if let Some(done) = run {
        emit(out, done);
    }
    Ok(())
}

/// `info tlb`: one line per leaf page.
pub(crate) fn info_tlb(ctx: &Context<'_>, out: &mut String) -> Result<(), CmdError> {
    let Some(root) = ctx.root else {
        out.push_str("PG disabled\n");
        return Ok(());
    };
    let tables = GuestTables::new(ctx.memory, root, None);
    for m in mappings(ctx, &tables)? {
        let size = m.page_size.bytes();
        let perms = m.perms();
        let letter = |on: bool, c: char| if on { c } else { '-' };
        let letters: String = [
            letter(!perms.contains(Perms::EXEC), 'X'),
            letter(m.flags.contains(Flags::GLOBAL), 'G'),
            letter(size > 4096, 'P'),
            letter(m.flags.contains(Flags::DIRTY), 'D'),
            letter(m.flags.contains(Flags::ACCESSED), 'A'),
            letter(m.flags.contains(Flags::CACHE_DISABLE), 'C'),
            letter(m.flags.contains(Flags::WRITE_THROUGH), 'T'),
            letter(perms.contains(Perms::USER), 'U'),
            letter(perms.contains(Perms::WRITE), 'W'),
        ]
        .iter()
        .collect();
        for i in 0..m.len / size {
            let _ = writeln!(
                out,
                "{:016x}: {:016x} {letters}",
                m.virt_base.wrapping_add(i * size),
                m.phys_base + i * size
            );
        }
    }
    Ok(())
}

/// `gva2gpa ADDR`.
pub(crate) fn gva2gpa(ctx: &Context<'_>, words: &[&str], out: &mut String) -> Result<(), CmdError> {
    let va = match words {
        [addr] => args::number(addr)?,
        [] => return Err(usage("missing ADDR")),
        _ => return Err(usage("one ADDR only")),
    };
    let gpa = match (ctx.format, ctx.root) {
        (Some(fmt), Some(root)) => {
            let tables = GuestTables::new(ctx.memory, root, None);
            vmem::translate_addr(fmt, &tables, root, va)
                .ok()
                .map(|t| t.pa)
        }
        _ => Some(va),
    };
    let _ = match gpa {
        Some(gpa) => writeln!(out, "gpa: {gpa:#x}"),
        None => writeln!(out, "Unmapped"),
    };
    Ok(())
}

/// `gpa2hva ADDR`: where the VMM's process holds guest-physical ADDR, in
/// QEMU's words (gdb-pt-dump reads `/proc/PID/mem` there).
pub(crate) fn gpa2hva(ctx: &Context<'_>, words: &[&str], out: &mut String) -> Result<(), CmdError> {
    let gpa = match words {
        [addr] => args::number(addr)?,
        [] => return Err(usage("missing ADDR")),
        _ => return Err(usage("one ADDR only")),
    };
    let range = ctx
        .memory
        .ranges()
        .iter()
        .find(|r| r.contains(gpa) && r.host != 0)
        .copied()
        .ok_or_else(|| format!("No memory is mapped at address {gpa:#x}"))?;
    let _ = writeln!(
        out,
        "Host virtual address for {gpa:#x} (ram) is {:#x}",
        range.host + (gpa - range.gpa)
    );
    Ok(())
}

/// `info mtree [-f]`: QEMU's flat view of the system address space, as
/// far as the debugger knows it (pwndbg reads the RAM lines): each RAM
/// range and each hole between two of them (the VMM's MMIO lives there).
pub(crate) fn info_mtree(
    ctx: &Context<'_>,
    words: &[&str],
    out: &mut String,
) -> Result<(), CmdError> {
    match words {
        [] | ["-f"] => {}
        _ => return Err(usage("only -f (the flat view) is known")),
    }
    out.push_str("FlatView #0\n AS \"memory\", root: system\n");
    for cpu in 0..ctx.cpu_count {
        let _ = writeln!(out, " AS \"cpu-memory-{cpu}\", root: system");
    }
    out.push_str(" Root memory region: system\n");
    let mut end_of_last: Option<u64> = None;
    for (index, range) in ctx.memory.ranges().iter().enumerate() {
        if let Some(hole) = end_of_last.filter(|&end| end < range.gpa) {
            let _ = writeln!(
                out,
                "  {hole:016x}-{:016x} (prio 0, i/o): hole (no RAM)",
                range.gpa - 1
            );
        }
        let last = range.gpa.saturating_add(range.size.saturating_sub(1));
        let _ = writeln!(
            out,
            "  {:016x}-{last:016x} (prio 0, ram): {}",
            range.gpa,
            ctx.memory.describe(index)
        );
        end_of_last = last.checked_add(1);
    }
    out.push('\n');
    Ok(())
}

/// `chardev-add file,id=ID,path=PATH`: what to open (only the `file`
/// backend: gdb-pt-dump's way of finding the VMM's process).
pub(crate) fn chardev_add(words: &[&str]) -> Result<Effect, CmdError> {
    let spec = match words {
        [spec] => *spec,
        [] => return Err(usage("missing file,id=ID,path=PATH")),
        _ => return Err(usage("one argument: file,id=ID,path=PATH")),
    };
    let mut parts = spec.split(',');
    if parts.next() != Some("file") {
        return Err(usage(
            "only the file backend is supported: file,id=ID,path=PATH",
        ));
    }
    let (mut id, mut path) = (None, None);
    for part in parts {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("path", v)) => path = Some(v.to_string()),
            _ => return Err(usage(format!("unknown chardev option '{part}'"))),
        }
    }
    match (id, path) {
        (Some(id), Some(path)) if !id.is_empty() => Ok(Effect::ChardevAdd { id, path }),
        _ => Err(usage("file,id=ID,path=PATH needs both id and path")),
    }
}

/// `xp /FMT ADDR`: physical memory.
pub(crate) fn xp(ctx: &Context<'_>, words: &[&str], out: &mut String) -> Result<(), CmdError> {
    let read = |addr, buf: &mut [u8]| ctx.memory.read(addr, buf).is_ok();
    dump(words, out, read, |addr| ctx.memory.why_unreadable(addr))
}

/// `x /FMT ADDR`: virtual memory, through the current space (physical
/// with paging off), page by page.
pub(crate) fn x(ctx: &Context<'_>, words: &[&str], out: &mut String) -> Result<(), CmdError> {
    let (Some(fmt), Some(root)) = (ctx.format, ctx.root) else {
        return xp(ctx, words, out);
    };
    let tables = GuestTables::new(ctx.memory, root, None);
    let why = |va| {
        let (pa, _) = vmem::translate_pa(fmt, &tables, root, va).ok()?;
        ctx.memory.why_unreadable(pa)
    };
    let read = |addr: u64, buf: &mut [u8]| {
        let mut done = 0usize;
        while done < buf.len() {
            let va = addr.wrapping_add(done as u64);
            let Ok((pa, _)) = vmem::translate_pa(fmt, &tables, root, va) else {
                return false;
            };
            let n = (0x1000 - (va & 0xfff) as usize).min(buf.len() - done);
            if ctx.memory.read(pa, &mut buf[done..done + n]).is_err() {
                return false;
            }
            done += n;
        }
        true
    };
    dump(words, out, read, why)
}

/// QEMU's memory dump of `words` (`/FMT ADDR`) read by `read`: the lines
/// that can be read, then one error line for the first element that
/// cannot (with `why` it cannot, where the memory knows).
fn dump(
    words: &[&str],
    out: &mut String,
    read: impl Fn(u64, &mut [u8]) -> bool,
    why: impl Fn(u64) -> Option<String>,
) -> Result<(), CmdError> {
    let (spec, addr) = match words {
        [spec, addr] if spec.starts_with('/') => (&spec[1..], *addr),
        [addr] if !addr.starts_with('/') => ("", *addr),
        [] | [_] => return Err(usage("missing ADDR")),
        _ => return Err(usage("expected /FMT ADDR")),
    };
    let digits: String = spec.chars().take_while(char::is_ascii_digit).collect();
    let count: u64 = if digits.is_empty() {
        1
    } else {
        digits.parse().map_err(|_| usage("bad count"))?
    };
    let (mut format, mut size) = ('x', 4u64);
    for c in spec[digits.len()..].chars() {
        match c {
            'x' | 'd' | 'u' | 'c' => format = c,
            'b' => size = 1,
            'h' => size = 2,
            'w' => size = 4,
            'g' => size = 8,
            _ => return Err(usage(format!("unknown format letter '{c}'"))),
        }
    }
    if format == 'c' {
        size = 1;
    }
    if count > 1 << 16 {
        return Err(usage("count is too large (at most 65536)"));
    }
    let start = args::number(addr)?;
    let per_line = if size == 1 { 8 } else { 16 / size };
    let digits = match format {
        'x' => (size * 8 / 4) as usize,
        _ => (size * 8 * 10).div_ceil(33) as usize,
    };
    for i in 0..count {
        let at = start.wrapping_add(i * size);
        let mut bytes = [0u8; 8];
        if !read(at, &mut bytes[..size as usize]) {
            if i % per_line != 0 {
                out.push('\n');
            }
            let because = why(at).map(|why| format!(": {why}")).unwrap_or_default();
            return Err(format!("Cannot access memory at {at:#x}{because}").into());
        }
        if i % per_line == 0 {
            let _ = write!(out, "{at:016x}:");
        }
        let v = u64::from_le_bytes(bytes);
        let shift = 64 - 8 * size as u32;
        let _ = match format {
            'x' => write!(out, " 0x{v:0digits$x}"),
            'u' => write!(out, " {v:digits$}"),
            'd' => write!(out, " {:digits$}", ((v << shift) as i64) >> shift),
            _ => write!(out, " {}", printable(v as u8)),
        };
        if i % per_line == per_line - 1 || i == count - 1 {
            out.push('\n');
        }
    }
    Ok(())
}

fn printable(c: u8) -> String {
    match c {
        b'\'' => "'\\''".into(),
        b'\\' => "'\\\\'".into(),
        b'\n' => "'\\n'".into(),
        b'\r' => "'\\r'".into(),
        0x20..=0x7e => format!("'{}'", c as char),
        _ => format!("'\\x{c:02x}'"),
    }
}

/// The high word of the segment's descriptor as QEMU keeps it: type, S,
/// DPL, P, limit bits 19:16 (from the byte limit and G), AVL, L, D/B, G.
fn seg_flags(s: &kvm_segment) -> u32 {
    let raw_limit = if s.g != 0 { s.limit >> 12 } else { s.limit };
    (u32::from(s.type_) << 8)
        | (raw_limit & 0xf_0000)
        | (u32::from(s.s) << 12)
        | (u32::from(s.dpl) << 13)
        | (u32::from(s.present) << 15)
        | (u32::from(s.avl) << 20)
        | (u32::from(s.l) << 21)
        | (u32::from(s.db) << 22)
        | (u32::from(s.g) << 23)
}

fn seg_line(out: &mut String, name: &str, s: &kvm_segment) {
    let flags = seg_flags(s);
    let _ = write!(
        out,
        "{name:<3}={:04x} {:016x} {:08x} {:08x}",
        s.selector,
        s.base,
        s.limit,
        flags & 0x00ff_ff00
    );
    if s.present != 0 {
        let _ = write!(out, " DPL={} ", s.dpl);
        let t = s.type_;
        if s.s != 0 {
            if t & 0x8 != 0 {
                let kind = if s.l != 0 {
                    "CS64"
                } else if s.db != 0 {
                    "CS32"
                } else {
                    "CS16"
                };
                let _ = write!(
                    out,
                    "{kind} [{}{}",
                    if t & 4 != 0 { 'C' } else { '-' },
                    if t & 2 != 0 { 'R' } else { '-' }
                );
            } else {
                let _ = write!(
                    out,
                    "DS   [{}{}",
                    if t & 4 != 0 { 'E' } else { '-' },
                    if t & 2 != 0 { 'W' } else { '-' }
                );
            }
            let _ = write!(out, "{}]", if t & 1 != 0 { 'A' } else { '-' });
        } else {
            let name = match t {
                2 => "LDT",
                9 => "TSS64-avl",
                11 => "TSS64-busy",
                _ => "SYS",
            };
            out.push_str(name);
        }
    }
    out.push('\n');
}

/// `cpu N`: the vCPU the commands use until the next stop.
pub(crate) fn cpu(ctx: &Context<'_>, words: &[&str]) -> Result<Effect, CmdError> {
    let [index] = words else {
        return Err(usage("expected one CPU index"));
    };
    Ok(Effect::SelectCpu(cpu_index(ctx, index)?))
}

/// `info cpus`: `* CPU #0: thread_id=TID`, `*` on the vCPU the monitor
/// commands use.
pub(crate) fn info_cpus(ctx: &Context<'_>, out: &mut String) {
    let threads = ctx.registers.vcpu_threads();
    for (index, thread) in threads.iter().enumerate() {
        let mark = if index == ctx.cpu { '*' } else { ' ' };
        let _ = match thread {
            Some(tid) => writeln!(out, "{mark} CPU #{index}: thread_id={tid}"),
            None => writeln!(out, "{mark} CPU #{index}: no host thread has run it"),
        };
    }
}

/// DR0-DR3, DR6, DR7 after a reset (what QEMU shows of a CPU that never
/// set them): DR6's reserved bits read as ones, DR7's bit 10 as one.
const DEBUG_REGISTERS_AT_RESET: [u64; 6] = [0, 0, 0, 0, 0xffff_0ff0, 0x400];

/// `info registers`.
pub(crate) fn info_registers(ctx: &Context<'_>, out: &mut String) -> Result<(), CmdError> {
    if let Some(cpu) = ctx.registers.aarch64() {
        qemu_aarch64::info_registers(&cpu, out);
        return Ok(());
    }
    let state = ctx
        .registers
        .all_registers()
        .ok_or("cannot read the vCPU's registers")?;
    let r = &state.regs;
    let s = &state.sregs;
    let rows = [
        [
            ("RAX", r.rax),
            ("RBX", r.rbx),
            ("RCX", r.rcx),
            ("RDX", r.rdx),
        ],
        [
            ("RSI", r.rsi),
            ("RDI", r.rdi),
            ("RBP", r.rbp),
            ("RSP", r.rsp),
        ],
        [("R8 ", r.r8), ("R9 ", r.r9), ("R10", r.r10), ("R11", r.r11)],
        [
            ("R12", r.r12),
            ("R13", r.r13),
            ("R14", r.r14),
            ("R15", r.r15),
        ],
    ];
    for row in rows {
        let line: Vec<String> = row.iter().map(|(n, v)| format!("{n}={v:016x}")).collect();
        let _ = writeln!(out, "{}", line.join(" "));
    }
    let f = r.rflags;
    let bit = |mask: u64, c: char| if f & mask != 0 { c } else { '-' };
    let run = ctx.registers.run_state();
    let _ = writeln!(
        out,
        "RIP={:016x} RFL={:08x} [{}{}{}{}{}{}{}] CPL={} II={} A20=1 SMM={} HLT={}",
        r.rip,
        f as u32,
        bit(1 << 10, 'D'),
        bit(1 << 11, 'O'),
        bit(1 << 7, 'S'),
        bit(1 << 6, 'Z'),
        bit(1 << 4, 'A'),
        bit(1 << 2, 'P'),
        bit(1, 'C'),
        s.cs.selector & 3,
        u8::from(run.interrupt_shadow),
        u8::from(run.smm),
        u8::from(run.halted)
    );
    for (name, seg) in [
        ("ES", &s.es),
        ("CS", &s.cs),
        ("SS", &s.ss),
        ("DS", &s.ds),
        ("FS", &s.fs),
        ("GS", &s.gs),
        ("LDT", &s.ldt),
        ("TR", &s.tr),
    ] {
        seg_line(out, name, seg);
    }
    let _ = writeln!(out, "GDT=     {:016x} {:08x}", s.gdt.base, s.gdt.limit);
    let _ = writeln!(out, "IDT=     {:016x} {:08x}", s.idt.base, s.idt.limit);
    let _ = writeln!(
        out,
        "CR0={:08x} CR2={:016x} CR3={:016x} CR4={:08x}",
        s.cr0, s.cr2, s.cr3, s.cr4
    );
    let known = ctx.registers.debug_registers();
    let dr = known.unwrap_or(DEBUG_REGISTERS_AT_RESET);
    let _ = writeln!(
        out,
        "DR0={:016x} DR1={:016x} DR2={:016x} DR3={:016x}",
        dr[0], dr[1], dr[2], dr[3]
    );
    let _ = writeln!(out, "DR6={:016x} DR7={:016x}", dr[4], dr[5]);
    if known.is_none() {
        out.push_str("(DR0-DR7 unknown here, as in a memory dump: shown at their reset values)\n");
    }
    let _ = writeln!(out, "EFER={:016x}", s.efer);
    Ok(())
}

/// `info lapic [CPU]`.
pub(crate) fn info_lapic(
    ctx: &Context<'_>,
    words: &[&str],
    out: &mut String,
) -> Result<(), CmdError> {
    let cpu = match words {
        [] => ctx.cpu,
        [cpu] => cpu_index(ctx, cpu)?,
        _ => return Err(usage("expected at most one CPU")),
    };
    let apic = ctx.registers.local_apic(cpu)?;
    out.push_str(&render(&apic));
    Ok(())
}
