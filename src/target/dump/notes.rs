//! ELF notes as dumps carry them: the notes of a note segment, and the
//! vCPU state QEMU writes per CPU (its "QEMU" note, `QEMUCPUState`), in an
//! ELF core's `PT_NOTE` or a kdump file's note area alike.

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

use crate::arch::controls::{
    CR0_PE, CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA, EFER_LME, EFER_NXE,
};
use crate::target::dump::cpu::{Aarch64Cpu, Aarch64Fp, DumpCpu};
use crate::target::dump::error::DumpError;
use crate::target::dump::vmcoreinfo::{VmcoreInfo, VMCOREINFO_NOTE_NAME};

/// The note QEMU writes per vCPU with its whole state (`QEMUCPUState`).
pub(crate) const QEMU_NOTE_NAME: &[u8] = b"QEMU";
/// Its size in version 1: header, 16 GPRs, rip, rflags, 10 segments of
/// 24 bytes, cr0-cr4, kernel_gs_base.
pub(crate) const QEMU_CPU_STATE_SIZE: usize = 8 + 18 * 8 + 10 * 24 + 5 * 8 + 8;
/// `DESC_L_MASK` in QEMU's segment flags: a 64-bit code segment.
pub(crate) const DESC_L: u32 = 1 << 21;

/// The x86 vCPUs of the note area `data`, in order: QEMU's CPU-state
/// notes; without them (a guest's own kdump vmcore), the `NT_PRSTATUS`
/// registers, in the long mode the kernel runs in, with the kernel's own
/// tables (`info`'s root; 5-level if it says so) as CR3 — none without
/// VMCOREINFO to say where those are.
pub(crate) fn x86_cpus(data: &[u8], info: Option<&VmcoreInfo>) -> Result<Vec<DumpCpu>, DumpError> {
    let notes = notes_in(data)?;
    let qemu: Vec<DumpCpu> = notes
        .iter()
        .filter(|note| note.name == QEMU_NOTE_NAME && note.kind == 0)
        .map(|note| qemu_cpu_state(note.desc))
        .collect::<Result<_, _>>()?;
    // (An x86 kernel's VMCOREINFO names init_top_pgt; arm64's notes are
    // NT_PRSTATUS too, and must not be read as x86 registers.)
    let x86_kernel = info.filter(|i| i.symbol("init_top_pgt").is_some());
    let Some((root, _)) = x86_kernel
        .and_then(VmcoreInfo::kernel_root)
        .filter(|_| qemu.is_empty())
    else {
        return Ok(qemu);
    };
    let la57 = info.and_then(|i| i.number("pgtable_l5_enabled")) == Some(1);
    let cr4 = CR4_PAE | CR4_PSE | if la57 { CR4_LA57 } else { 0 };
    let controls = [
        CR0_PG | CR0_PE | CR0_WP,
        root,
        cr4,
        EFER_LME | EFER_LMA | EFER_NXE,
    ];
    let cpus = prstatus_registers(&notes, 27, "x86-64")?;
    Ok(cpus
        .iter()
        .map(|reg| {
            // user_regs_struct: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax
            // rcx rdx rsi rdi orig_ax rip cs eflags rsp ss fs_base gs_base.
            let mut cpu = DumpCpu::long_mode(reg[16], reg[19], controls);
            let r = &mut cpu.regs;
            (r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx) =
                (reg[0], reg[1], reg[2], reg[3], reg[4], reg[5]);
            (r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx) =
                (reg[6], reg[7], reg[8], reg[9], reg[10], reg[11]);
            (r.rdx, r.rsi, r.rdi, r.rflags) = (reg[12], reg[13], reg[14], reg[18]);
            let s = &mut cpu.sregs;
            s.cs.selector = reg[17] as u16;
            s.cs.dpl = (reg[17] & 3) as u8;
            s.ss.selector = reg[20] as u16;
            s.ss.dpl = (reg[20] & 3) as u8;
            (s.fs.base, s.gs.base) = (reg[21], reg[22]);
            cpu
        })
        .collect())
}

/// `NT_PRSTATUS`, the note each CPU's general registers are in.
const NT_PRSTATUS: u32 = 1;
/// Where `pr_reg` starts in a 64-bit `elf_prstatus`.
const PR_REG: usize = 112;

/// The arm64 vCPUs of the `NT_PRSTATUS` notes in the note area `data`, in
/// order (`pr_reg`: x0-x30, sp, pc, pstate).
pub(crate) fn aarch64_cpus(data: &[u8]) -> Result<Vec<Aarch64Cpu>, DumpError> {
    let notes = notes_in(data)?;
    let cpus = prstatus_registers(&notes, 34, "arm64")?;
    // Each CPU's NT_PRFPREG follows its NT_PRSTATUS, in the same order.
    let mut fp = notes
        .iter()
        .filter(|note| note.name == b"CORE" && note.kind == NT_PRFPREG)
        .map(|note| fpsimd_state(note.desc));
    Ok(cpus
        .iter()
        .map(|reg| {
            let mut cpu = Aarch64Cpu {
                sp: reg[31],
                pc: reg[32],
                pstate: reg[33],
                fp: fp.next().flatten(),
                ..Aarch64Cpu::default()
            };
            cpu.x.copy_from_slice(&reg[..31]);
            cpu
        })
        .collect())
}

/// `NT_PRFPREG`, the note of a CPU's FP/SIMD registers.
const NT_PRFPREG: u32 = 2;

/// An arm64 `user_fpsimd_state` (32 × 16 bytes, FPSR, FPCR); `None` if
/// `desc` is too short for one.
fn fpsimd_state(desc: &[u8]) -> Option<Aarch64Fp> {
    let regs = desc.get(..32 * 16 + 8)?;
    let mut fp = Aarch64Fp::default();
    for (v, bytes) in fp.v.iter_mut().zip(regs.chunks_exact(16)) {
        *v = u128::from_le_bytes(bytes.try_into().ok()?);
    }
    fp.fpsr = u32::from_le_bytes(regs[512..516].try_into().ok()?);
    fp.fpcr = u32::from_le_bytes(regs[516..520].try_into().ok()?);
    Some(fp)
}

/// The first `count` words of `pr_reg` in each `NT_PRSTATUS` note of
/// `notes`, in order; a note too short for them is an error (`arch` names
/// the layout expected).
fn prstatus_registers(
    notes: &[Note<'_>],
    count: usize,
    arch: &str,
) -> Result<Vec<Vec<u64>>, DumpError> {
    notes
        .iter()
        .filter(|note| note.name == b"CORE" && note.kind == NT_PRSTATUS)
        .map(|note| {
            let regs = note.desc.get(PR_REG..PR_REG + count * 8).ok_or_else(|| {
                DumpError::BadNote(format!(
                    "an {arch} NT_PRSTATUS of {} bytes, {} expected",
                    note.desc.len(),
                    PR_REG + count * 8
                ))
            })?;
            Ok(regs
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
                .collect())
        })
        .collect()
}

/// The VMCOREINFO note in the note area `data`, if there is one.
pub(crate) fn vmcoreinfo(data: &[u8]) -> Result<Option<VmcoreInfo>, DumpError> {
    Ok(notes_in(data)?
        .iter()
        .find(|note| note.name == VMCOREINFO_NOTE_NAME)
        .map(|note| VmcoreInfo::parse(note.desc)))
}

/// One ELF note.
struct Note<'a> {
    /// Without its trailing NULs.
    name: &'a [u8],
    kind: u32,
    desc: &'a [u8],
}

/// The notes of a note segment.
fn notes_in(mut data: &[u8]) -> Result<Vec<Note<'_>>, DumpError> {
    let word = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut notes = Vec::new();
    while data.len() >= 12 {
        let (namesz, descsz, kind) = (word(data, 0), word(data, 4), word(data, 8));
        let name_end = 12 + (namesz as usize).next_multiple_of(4);
        let desc_end = name_end
            .checked_add((descsz as usize).next_multiple_of(4))
            .filter(|&end| end <= data.len() && name_end <= data.len())
            .ok_or_else(|| DumpError::BadNote(format!("a note of {descsz} bytes is cut short")))?;
        let name = &data[12..12 + namesz as usize];
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        notes.push(Note {
            name,
            kind,
            desc: &data[name_end..name_end + descsz as usize],
        });
        data = &data[desc_end..];
    }
    Ok(notes)
}

/// A vCPU from QEMU's `QEMUCPUState` (version 1, as `target/i386/arch_dump.c`
/// writes it).
fn qemu_cpu_state(desc: &[u8]) -> Result<DumpCpu, DumpError> {
    if desc.len() < QEMU_CPU_STATE_SIZE {
        return Err(DumpError::BadNote(format!(
            "QEMU CPU state of {} bytes, {QEMU_CPU_STATE_SIZE} expected",
            desc.len()
        )));
    }
    let u64_at = |at: usize| u64::from_le_bytes(desc[at..at + 8].try_into().unwrap_or_default());
    let u32_at = |at: usize| u32::from_le_bytes(desc[at..at + 4].try_into().unwrap_or_default());
    let gpr = |i: usize| u64_at(8 + i * 8);
    let regs = kvm_regs {
        rax: gpr(0),
        rbx: gpr(1),
        rcx: gpr(2),
        rdx: gpr(3),
        rsi: gpr(4),
        rdi: gpr(5),
        rsp: gpr(6),
        rbp: gpr(7),
        r8: gpr(8),
        r9: gpr(9),
        r10: gpr(10),
        r11: gpr(11),
        r12: gpr(12),
        r13: gpr(13),
        r14: gpr(14),
        r15: gpr(15),
        rip: gpr(16),
        rflags: gpr(17),
    };
    let segments_at = 8 + 18 * 8;
    let raw_segment = |i: usize| {
        let at = segments_at + i * 24;
        (u32_at(at), u32_at(at + 4), u32_at(at + 8), u64_at(at + 16))
    };
    let segment = |i: usize| {
        let (selector, limit, flags, base) = raw_segment(i);
        kvm_segment {
            base,
            limit,
            selector: selector as u16,
            type_: (flags >> 8 & 0xf) as u8,
            present: (flags >> 15 & 1) as u8,
            dpl: (flags >> 13 & 3) as u8,
            db: (flags >> 22 & 1) as u8,
            s: (flags >> 12 & 1) as u8,
            l: (flags >> 21 & 1) as u8,
            g: (flags >> 23 & 1) as u8,
            avl: (flags >> 20 & 1) as u8,
            unusable: u8::from(flags >> 15 & 1 == 0),
            padding: 0,
        }
    };
    let table = |i: usize| {
        let (_, limit, _, base) = raw_segment(i);
        kvm_dtable {
            base,
            limit: limit as u16,
            padding: [0; 3],
        }
    };
    let cr = |i: usize| u64_at(segments_at + 10 * 24 + i * 8);
    let long_mode = raw_segment(0).2 & DESC_L != 0;
    let sregs = kvm_sregs {
        cs: segment(0),
        ds: segment(1),
        es: segment(2),
        fs: segment(3),
        gs: segment(4),
        ss: segment(5),
        ldt: segment(6),
        tr: segment(7),
        gdt: table(8),
        idt: table(9),
        cr0: cr(0),
        cr2: cr(2),
        cr3: cr(3),
        cr4: cr(4),
        efer: if long_mode {
            EFER_LME | EFER_LMA | EFER_NXE
        } else {
            0
        },
        ..Default::default()
    };
    Ok(DumpCpu {
        regs,
        sregs,
        kernel_gs_base: u64_at(segments_at + 10 * 24 + 5 * 8),
    })
}
