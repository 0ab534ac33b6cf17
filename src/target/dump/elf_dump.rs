//! A stopped VM from a file: QEMU's `dump-guest-memory` ELF (a `PT_LOAD`
//! per RAM range at its guest-physical address, and per vCPU an
//! `NT_PRSTATUS` note and a "QEMU" note with the full CPU state), mapped
//! copy-on-write, never read into memory.
//!
//! Everything in the file is checked before use: segments must lie inside
//! the file and not overlap, notes inside their segment; a file that lies
//! gives a [`DumpError`], never a read outside the mapping.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use elf::abi::{PT_LOAD, PT_NOTE};
use elf::endian::LittleEndian;
use elf::ElfBytes;
use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};
use memmap2::{Mmap, MmapOptions};

use crate::arch::controls::{EFER_LMA, EFER_LME, EFER_NXE};
use crate::target::machine::memory::{GuestRam, HostSpans, RamAccess, RamRange};
use crate::target::machine::x86_constants::flat_segment;
use crate::vmem::PhysAddr;

/// The note QEMU writes per vCPU with its whole state (`QEMUCPUState`).
const QEMU_NOTE_NAME: &[u8] = b"QEMU";
/// Its size in version 1: header, 16 GPRs, rip, rflags, 10 segments of
/// 24 bytes, cr0-cr4, kernel_gs_base.
const QEMU_CPU_STATE_SIZE: usize = 8 + 18 * 8 + 10 * 24 + 5 * 8 + 8;
/// `DESC_L_MASK` in QEMU's segment flags: a 64-bit code segment.
const DESC_L: u32 = 1 << 21;

/// Why a dump cannot be served.
#[derive(Debug)]
#[non_exhaustive]
pub enum DumpError {
    /// The file cannot be opened or mapped.
    Io(PathBuf, std::io::Error),
    /// Not a little-endian ELF64 core file.
    NotACore(String),
    /// A segment claims bytes past the end of the file.
    Truncated {
        /// The segment's guest-physical address.
        gpa: u64,
        /// Where it would end in the file.
        end: u64,
        /// How long the file is.
        file_len: u64,
    },
    /// Two RAM segments claim the same guest-physical address.
    Overlap(u64),
    /// No "QEMU" CPU-state note: nothing says where the vCPUs were.
    NoCpus,
    /// A note is cut short or has an unknown layout.
    BadNote(String),
    /// A dump format recognised by its magic bytes, but not read.
    Unsupported(&'static str),
}

/// What the formats we read are, for errors about those we do not.
const READABLE: &str = "readable: ELF cores (QEMU dump-guest-memory without -z/-l/-s, \
                        virsh dump --memory-only) and raw RAM images (--raw)";

/// Dump and image formats known by their first bytes, which this target
/// does not read.
const UNSUPPORTED_MAGICS: &[(&[u8], &str)] = &[
    (
        b"makedumpfile\0",
        "a kdump-compressed dump in makedumpfile's flattened form (QEMU \
         dump-guest-memory -z/-l/-s, virsh dump --format=kdump-*)",
    ),
    (
        b"KDUMP   ",
        "a kdump-compressed dump (makedumpfile -c/-l/-p/-z, virsh dump --format=kdump-*)",
    ),
    (b"DISKDUMP", "a diskdump file"),
    (b"QEVM", "a QEMU migration stream or savevm state"),
    (b"QFI\xfb", "a qcow2 disk image (a savevm snapshot inside?)"),
    (b"PAGEDU64", "a Windows 64-bit crash dump"),
    (b"PAGEDUMP", "a Windows 32-bit crash dump"),
];

/// The unsupported format `data` starts like, if any.
fn unsupported_format(data: &[u8]) -> Option<&'static str> {
    UNSUPPORTED_MAGICS
        .iter()
        .find(|(magic, _)| data.starts_with(magic))
        .map(|(_, what)| *what)
}

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DumpError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            DumpError::NotACore(why) => {
                write!(f, "not a QEMU memory dump: {why} ({READABLE})")
            }
            DumpError::Truncated { gpa, end, file_len } => write!(
                f,
                "the RAM at {gpa:#x} ends at byte {end:#x} of a {file_len:#x}-byte file (truncated dump?)"
            ),
            DumpError::Overlap(gpa) => write!(f, "two RAM segments both hold {gpa:#x}"),
            DumpError::NoCpus => f.write_str("the dump has no QEMU CPU-state notes"),
            DumpError::BadNote(why) => write!(f, "bad note: {why}"),
            DumpError::Unsupported(what) => write!(f, "{what}: not read ({READABLE})"),
        }
    }
}

impl std::error::Error for DumpError {}

/// One vCPU as the dump recorded it.
#[derive(Debug, Clone, Copy)]
pub struct DumpCpu {
    /// General registers, rip and rflags.
    pub regs: kvm_regs,
    /// Segments, descriptor tables, control registers; EFER inferred (the
    /// dump has none): LME, LMA and NXE in 64-bit code.
    pub sregs: kvm_sregs,
    /// IA32_KERNEL_GS_BASE.
    pub kernel_gs_base: u64,
}

impl DumpCpu {
    /// A vCPU in 64-bit kernel code with these registers (the rest zero),
    /// for a raw RAM image whose VMM recorded only these.
    pub fn long_mode(rip: u64, rsp: u64, controls: [u64; 4]) -> DumpCpu {
        let [cr0, cr3, cr4, efer] = controls;
        let data = flat_segment(0x18, false, true);
        DumpCpu {
            regs: kvm_regs {
                rip,
                rsp,
                rflags: 0x2,
                ..Default::default()
            },
            sregs: kvm_sregs {
                cs: flat_segment(0x10, true, true),
                ss: data,
                ds: data,
                es: data,
                cr0,
                cr3,
                cr4,
                efer,
                ..Default::default()
            },
            kernel_gs_base: 0,
        }
    }
}

/// A memory dump: guest RAM and the vCPUs' state.
#[derive(Debug)]
pub struct Dump {
    ram: GuestRam,
    cpus: Vec<DumpCpu>,
}

impl Dump {
    /// Map and check QEMU's ELF dump at `path` (milliseconds, whatever its
    /// size: nothing is read but the headers and notes).
    pub fn open(path: &Path) -> Result<Dump, DumpError> {
        let file = File::open(path).map_err(|e| DumpError::Io(path.to_path_buf(), e))?;
        Dump::open_file(&file, path)
    }

    /// As [`Dump::open`], for a file already open (`path` names it in
    /// errors).
    pub(crate) fn open_file(file: &File, path: &Path) -> Result<Dump, DumpError> {
        let io = |e| DumpError::Io(path.to_path_buf(), e);
        // SAFETY: a private (copy-on-write) mapping: writes through it never
        // reach the file. The dump must not be truncated while served (as
        // with any mapped file, that would fault).
        let map = unsafe { MmapOptions::new().map_copy_read_only(file) }.map_err(io)?;
        let ElfHeaders { pieces, cpus } = ElfHeaders::parse(&map)?;
        Ok(Dump {
            ram: GuestRam::from_access(DumpMemory { map, pieces }, HostSpans::Trusted),
            cpus,
        })
    }

    /// A raw RAM image (another VMM's snapshot): the whole file is guest
    /// RAM from `ram_base`, and `cpu` says where the one vCPU was.
    pub fn raw(path: &Path, ram_base: u64, cpu: DumpCpu) -> Result<Dump, DumpError> {
        let io = |e| DumpError::Io(path.to_path_buf(), e);
        let file = File::open(path).map_err(io)?;
        // SAFETY: as in `open`.
        let map = unsafe { MmapOptions::new().map_copy_read_only(&file) }.map_err(io)?;
        let len = map.len() as u64;
        if ram_base.checked_add(len).is_none() {
            return Err(DumpError::NotACore(format!(
                "{len:#x} bytes of RAM from {ram_base:#x} wrap"
            )));
        }
        let pieces = vec![Piece {
            gpa: ram_base,
            len,
            offset: 0,
        }];
        Ok(Dump {
            ram: GuestRam::from_access(DumpMemory { map, pieces }, HostSpans::Trusted),
            cpus: vec![cpu],
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
}

/// What the headers and notes of a dump say.
struct ElfHeaders {
    pieces: Vec<Piece>,
    cpus: Vec<DumpCpu>,
}

impl ElfHeaders {
    fn parse(data: &[u8]) -> Result<ElfHeaders, DumpError> {
        if let Some(what) = unsupported_format(data) {
            return Err(DumpError::Unsupported(what));
        }
        let not_core = |e: elf::ParseError| DumpError::NotACore(e.to_string());
        let file = ElfBytes::<LittleEndian>::minimal_parse(data).map_err(not_core)?;
        if file.ehdr.e_type != elf::abi::ET_CORE {
            return Err(DumpError::NotACore("not an ELF core file".into()));
        }
        let segments = file
            .segments()
            .ok_or_else(|| DumpError::NotACore("no program headers".into()))?;
        let file_len = data.len() as u64;
        let mut pieces = Vec::new();
        let mut cpus = Vec::new();
        for ph in segments.iter() {
            let end = ph.p_offset.checked_add(ph.p_filesz);
            if ph.p_type == PT_LOAD && ph.p_filesz > 0 {
                match end {
                    Some(end) if end <= file_len => {}
                    _ => {
                        return Err(DumpError::Truncated {
                            gpa: ph.p_paddr,
                            end: end.unwrap_or(u64::MAX),
                            file_len,
                        })
                    }
                }
                if ph.p_paddr.checked_add(ph.p_filesz).is_none() {
                    return Err(DumpError::NotACore(format!(
                        "a segment at {:#x} wraps",
                        ph.p_paddr
                    )));
                }
                pieces.push(Piece {
                    gpa: ph.p_paddr,
                    len: ph.p_filesz,
                    offset: ph.p_offset,
                });
            }
            if ph.p_type == PT_NOTE {
                let notes = end
                    .filter(|&end| end <= file_len)
                    .map(|end| &data[ph.p_offset as usize..end as usize])
                    .ok_or_else(|| DumpError::BadNote("notes past the end of the file".into()))?;
                for note in notes_in(notes)? {
                    if note.name == QEMU_NOTE_NAME && note.kind == 0 {
                        cpus.push(qemu_cpu_state(note.desc)?);
                    }
                }
            }
        }
        pieces.sort_by_key(|p| p.gpa);
        if let Some(pair) = pieces.windows(2).find(|w| w[0].gpa + w[0].len > w[1].gpa) {
            return Err(DumpError::Overlap(pair[1].gpa));
        }
        if cpus.is_empty() {
            return Err(DumpError::NoCpus);
        }
        Ok(ElfHeaders { pieces, cpus })
    }
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

/// One RAM segment: guest-physical range and where its bytes are in the
/// file.
#[derive(Debug, Clone, Copy)]
struct Piece {
    gpa: PhysAddr,
    len: u64,
    offset: u64,
}

/// Guest RAM in a mapped dump.
struct DumpMemory {
    map: Mmap,
    /// By address, not overlapping, inside the file (checked at open).
    pieces: Vec<Piece>,
}

impl DumpMemory {
    /// The file bytes of `gpa ..` up to the end of its piece.
    fn at(&self, gpa: PhysAddr) -> Option<&[u8]> {
        let i = self.pieces.partition_point(|p| p.gpa + p.len <= gpa);
        let piece = self.pieces.get(i).filter(|p| p.gpa <= gpa)?;
        let start = usize::try_from(piece.offset + (gpa - piece.gpa)).ok()?;
        let end = usize::try_from(piece.offset + piece.len).ok()?;
        self.map.get(start..end)
    }
}

impl RamAccess for DumpMemory {
    fn read(&self, gpa: PhysAddr, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let Some(bytes) = gpa.checked_add(done as u64).and_then(|at| self.at(at)) else {
                break;
            };
            let n = bytes.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[..n]);
            done += n;
        }
        done
    }

    fn covers(&self, _gpa: PhysAddr, _len: usize) -> bool {
        // A dump is read-only here: gdb's writes are refused.
        false
    }

    fn write(&self, _gpa: PhysAddr, _data: &[u8]) -> usize {
        0
    }

    fn load_u64(&self, gpa: PhysAddr) -> Option<u64> {
        let bytes = self.at(gpa)?.get(..8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    fn ranges(&self) -> Vec<RamRange> {
        self.pieces
            .iter()
            .map(|p| RamRange {
                gpa: p.gpa,
                size: p.len,
                // Where the mapped file holds it (pieces lie inside the
                // file: checked when it was opened).
                host: self.at(p.gpa).map_or(0, |bytes| bytes.as_ptr() as u64),
            })
            .collect()
    }

    fn describe(&self, index: usize) -> String {
        match self.pieces.get(index) {
            Some(piece) => format!("dump @file+{:#x}", piece.offset),
            None => "dump".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little ELF64 core: `loads` as (paddr, file offset, size) and one
    /// note segment holding `notes` as (name, type, desc).
    fn core(loads: &[(u64, u64, u64)], notes: &[(&[u8], u32, Vec<u8>)], len: usize) -> Vec<u8> {
        let phnum = loads.len() + 1;
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        (f[4], f[5], f[6]) = (2, 1, 1); // ELF64, little endian, version 1
        f[16..18].copy_from_slice(&4u16.to_le_bytes()); // ET_CORE
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let mut note_bytes = Vec::new();
        for (name, kind, desc) in notes {
            note_bytes.extend((name.len() as u32 + 1).to_le_bytes());
            note_bytes.extend((desc.len() as u32).to_le_bytes());
            note_bytes.extend(kind.to_le_bytes());
            note_bytes.extend(*name);
            note_bytes.push(0);
            note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
            note_bytes.extend(desc);
            note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
        }
        let notes_at = 64 + 56 * phnum as u64;
        let phdr = |kind: u32, offset: u64, paddr: u64, size: u64| {
            let mut p = vec![0u8; 56];
            p[..4].copy_from_slice(&kind.to_le_bytes());
            p[8..16].copy_from_slice(&offset.to_le_bytes());
            p[24..32].copy_from_slice(&paddr.to_le_bytes());
            p[32..40].copy_from_slice(&size.to_le_bytes());
            p[40..48].copy_from_slice(&size.to_le_bytes());
            p
        };
        f.extend(phdr(PT_NOTE, notes_at, 0, note_bytes.len() as u64));
        for &(paddr, offset, size) in loads {
            f.extend(phdr(PT_LOAD, offset, paddr, size));
        }
        f.extend(note_bytes);
        f.resize(len.max(f.len()), 0xaa);
        f
    }

    fn cpu_state() -> (&'static [u8], u32, Vec<u8>) {
        let mut desc = vec![0u8; QEMU_CPU_STATE_SIZE];
        desc[..4].copy_from_slice(&1u32.to_le_bytes());
        desc[8 + 16 * 8..8 + 17 * 8].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        let cs_flags = 8 + 18 * 8 + 8;
        desc[cs_flags..cs_flags + 4].copy_from_slice(&(DESC_L | 1 << 15).to_le_bytes());
        let cr3 = 8 + 18 * 8 + 10 * 24 + 3 * 8;
        desc[cr3..cr3 + 8].copy_from_slice(&0x1000u64.to_le_bytes());
        (QEMU_NOTE_NAME, 0, desc)
    }

    #[test]
    fn a_good_dump_gives_its_cpus_and_ram() {
        let data = core(&[(0x1000, 0x1000, 0x2000)], &[cpu_state()], 0x3000);
        let headers = ElfHeaders::parse(&data).unwrap();
        assert_eq!(headers.cpus.len(), 1);
        let cpu = headers.cpus[0];
        assert_eq!(cpu.regs.rip, 0xffff_ffff_8100_0000);
        assert_eq!(cpu.sregs.cr3, 0x1000);
        assert_eq!(cpu.sregs.cs.l, 1);
        assert_eq!(cpu.sregs.efer, EFER_LME | EFER_LMA | EFER_NXE);
        assert_eq!(headers.pieces.len(), 1);
    }

    #[test]
    fn lying_dumps_are_refused_with_a_reason() {
        let cpu = [cpu_state()];
        let truncated = core(&[(0, 0x1000, 0x10_0000)], &cpu, 0x2000);
        assert!(matches!(
            ElfHeaders::parse(&truncated),
            Err(DumpError::Truncated { gpa: 0, .. })
        ));
        let wrapping = core(&[(u64::MAX - 10, 0x1000, 0x100)], &cpu, 0x2000);
        assert!(matches!(
            ElfHeaders::parse(&wrapping),
            Err(DumpError::NotACore(_))
        ));
        let overlapping = core(
            &[(0, 0x1000, 0x1000), (0x800, 0x1000, 0x1000)],
            &cpu,
            0x2000,
        );
        assert!(matches!(
            ElfHeaders::parse(&overlapping),
            Err(DumpError::Overlap(0x800))
        ));
        let no_cpus = core(&[(0, 0x1000, 0x1000)], &[], 0x2000);
        assert!(matches!(
            ElfHeaders::parse(&no_cpus),
            Err(DumpError::NoCpus)
        ));
        let short = core(&[], &[(QEMU_NOTE_NAME, 0, vec![1; 100])], 0);
        assert!(matches!(
            ElfHeaders::parse(&short),
            Err(DumpError::BadNote(_))
        ));
        // A note whose size runs past its segment.
        let mut cut = core(&[], &[cpu_state()], 0);
        let descsz_at = 64 + 56 + 4;
        cut[descsz_at..descsz_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            ElfHeaders::parse(&cut),
            Err(DumpError::BadNote(_))
        ));
        assert!(matches!(
            ElfHeaders::parse(b"not an ELF"),
            Err(DumpError::NotACore(_))
        ));
        assert!(matches!(
            ElfHeaders::parse(&[]),
            Err(DumpError::NotACore(_))
        ));
    }

    /// `data` as a dump's RAM would map it (no file needed).
    fn mapped(data: &[u8]) -> Mmap {
        let mut map = MmapOptions::new()
            .len(data.len().max(1))
            .map_anon()
            .unwrap();
        map[..data.len()].copy_from_slice(data);
        map.make_read_only().unwrap()
    }

    /// Good dumps with random bytes of their headers and notes changed,
    /// extreme words written over them, or cut anywhere: parsing never
    /// panics, and what opens reads and lists its RAM without a panic.
    /// 20,000 dumps; VMEM_GDBSTUB_LONG=1: 1,000,000.
    #[test]
    fn mutated_dumps_never_panic() {
        let long = std::env::var("VMEM_GDBSTUB_LONG").is_ok_and(|v| v == "1");
        let dumps: u64 = if long { 1_000_000 } else { 20_000 };
        let good = core(
            &[(0x1000, 0x1000, 0x1000), (0x10_0000, 0x2000, 0x800)],
            &[cpu_state(), cpu_state()],
            0x2800,
        );
        let headers = 64 + 56 * 3 + 2 * (24 + QEMU_CPU_STATE_SIZE);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut opened, mut refused) = (0u64, 0u64);
        for _ in 0..dumps {
            let mut data = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % headers as u64) as usize;
                match next() % 4 {
                    0 if at + 8 <= data.len() => {
                        let word = [u64::MAX, u64::MAX - 0xfff, 1 << 63, 0][next() as usize % 4];
                        data[at..at + 8].copy_from_slice(&word.to_le_bytes());
                    }
                    _ => data[at] = next() as u8,
                }
            }
            if next() % 8 == 0 {
                data.truncate((next() % data.len() as u64) as usize);
            }
            let Ok(ElfHeaders { pieces, cpus }) = ElfHeaders::parse(&data) else {
                refused += 1;
                continue;
            };
            opened += 1;
            assert!(!cpus.is_empty());
            let starts: Vec<u64> = pieces.iter().map(|p| p.gpa).collect();
            let mem = DumpMemory {
                map: mapped(&data),
                pieces,
            };
            for &start in &starts {
                for gpa in [
                    start,
                    start.wrapping_sub(1),
                    start.wrapping_add(0xff9),
                    next(),
                ] {
                    let mut buf = [0u8; 64];
                    let len = 1 + next() as usize % buf.len();
                    assert!(mem.read(gpa, &mut buf[..len]) <= len);
                    let _ = mem.load_u64(gpa);
                }
            }
            assert_eq!(mem.ranges().len(), starts.len());
        }
        eprintln!("{dumps} mutated dumps: {opened} opened, {refused} refused");
        assert!(opened > 0 && refused > 0, "both outcomes exercised");
    }

    #[test]
    fn reads_stop_at_the_end_of_ram() {
        let data = core(&[(0x1000, 0x1000, 0x1000)], &[cpu_state()], 0x2000);
        let ElfHeaders { pieces, .. } = ElfHeaders::parse(&data).unwrap();
        let path = std::env::temp_dir().join(format!("vmem-dump-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        // SAFETY: a private mapping of a file only this test uses.
        let map = unsafe { MmapOptions::new().map_copy_read_only(&File::open(&path).unwrap()) };
        let mem = DumpMemory {
            map: map.unwrap(),
            pieces,
        };
        let _ = std::fs::remove_file(&path);
        let mut buf = [0u8; 16];
        assert_eq!(mem.read(0x1ff8, &mut buf), 8);
        assert_eq!(mem.read(0xfff, &mut buf), 0);
        assert_eq!(mem.load_u64(0x1000), Some(0xaaaa_aaaa_aaaa_aaaa));
        assert_eq!(mem.load_u64(0x1ffc), None);
        assert_eq!(mem.load_u64(u64::MAX), None);
        assert!(!mem.covers(0x1000, 1));
    }
}
