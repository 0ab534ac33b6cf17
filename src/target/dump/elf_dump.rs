//! QEMU's `dump-guest-memory` ELF (a `PT_LOAD` per RAM range at its
//! guest-physical address; per vCPU an `NT_PRSTATUS` note and a "QEMU" note
//! with the full CPU state; a "VMCOREINFO" note if the guest left one), and
//! raw RAM images: mapped copy-on-write, never read into memory.
//!
//! Everything in the file is checked before use: segments must lie inside
//! the file and not overlap, notes inside their segment; a file that lies
//! gives a [`DumpError`], never a read outside the mapping.

use elf::abi::{PT_LOAD, PT_NOTE};
use elf::endian::LittleEndian;
use elf::ElfBytes;
use memmap2::Mmap;

use crate::target::dump::contents::Contents;
use crate::target::dump::cpu::{Aarch64Cpu, DumpArch, DumpCpu};
use crate::target::dump::error::{unsupported_format, DumpError};
use crate::target::dump::notes;
use crate::target::dump::vmcoreinfo::VmcoreInfo;
use crate::target::machine::memory::{GuestRam, HostSpans, RamAccess, RamRange};
use crate::vmem::PhysAddr;

/// Read QEMU's ELF dump mapped as `map`.
pub(crate) fn read(map: Mmap) -> Result<Contents, DumpError> {
    let ElfHeaders {
        pieces,
        cpus,
        arm_cpus,
        arch,
        vmcoreinfo,
    } = ElfHeaders::parse(&map)?;
    Ok(Contents {
        ram: GuestRam::from_access(DumpMemory { map, pieces }, HostSpans::Trusted),
        arch,
        cpus,
        arm_cpus,
        vmcoreinfo,
        format: "ELF".into(),
    })
}

/// The whole of `map` as guest RAM from `ram_base`.
pub(crate) fn raw(map: Mmap, ram_base: u64) -> Result<GuestRam, DumpError> {
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
    Ok(GuestRam::from_access(
        DumpMemory { map, pieces },
        HostSpans::Trusted,
    ))
}

/// What the headers and notes of a dump say.
struct ElfHeaders {
    pieces: Vec<Piece>,
    arch: DumpArch,
    cpus: Vec<DumpCpu>,
    arm_cpus: Vec<Aarch64Cpu>,
    vmcoreinfo: Option<VmcoreInfo>,
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
        let arch = match file.ehdr.e_machine {
            elf::abi::EM_AARCH64 => DumpArch::Aarch64,
            _ => DumpArch::X86_64,
        };
        let segments = file
            .segments()
            .ok_or_else(|| DumpError::NotACore("no program headers".into()))?;
        let file_len = data.len() as u64;
        let mut pieces = Vec::new();
        let mut cpus = Vec::new();
        let mut arm_cpus = Vec::new();
        let mut vmcoreinfo = None;
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
                vmcoreinfo = vmcoreinfo.or(notes::vmcoreinfo(notes)?);
                match arch {
                    DumpArch::Aarch64 => arm_cpus.extend(notes::aarch64_cpus(notes)?),
                    _ => cpus.extend(notes::x86_cpus(notes, vmcoreinfo.as_ref())?),
                }
            }
        }
        pieces.sort_by_key(|p| p.gpa);
        if let Some(pair) = pieces.windows(2).find(|w| w[0].gpa + w[0].len > w[1].gpa) {
            return Err(DumpError::Overlap(pair[1].gpa));
        }
        if cpus.is_empty() && arm_cpus.is_empty() {
            return Err(DumpError::NoCpus);
        }
        Ok(ElfHeaders {
            pieces,
            arch,
            cpus,
            arm_cpus,
            vmcoreinfo,
        })
    }
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
    use std::fs::File;

    use memmap2::MmapOptions;

    use super::*;
    use crate::arch::controls::{EFER_LMA, EFER_LME, EFER_NXE};
    use crate::target::dump::notes::{DESC_L, QEMU_CPU_STATE_SIZE, QEMU_NOTE_NAME};

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
            let Ok(ElfHeaders { pieces, cpus, .. }) = ElfHeaders::parse(&data) else {
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
