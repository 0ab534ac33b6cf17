//! kdump-compressed dumps of the Linux fixture against its ELF dump of the
//! same moment: QEMU's own `dump-guest-memory -z` (flattened), and
//! `makedumpfile -R`'s plain file of it. Debian's QEMU writes only zlib and
//! its makedumpfile neither snappy nor zstd (nor a kdump file of QEMU's
//! ELF), so the LZO, snappy and zstd files, and one that leaves pages out,
//! are the plain file rewritten here page by page in makedumpfile's layout,
//! with each codec crate's own encoder. The ELF dump, read by the reader
//! every other test checks against QEMU and Linux, is the oracle: same RAM,
//! same registers, same `info mem`.

mod fixture;

use std::path::{Path, PathBuf};

use fixture::{fixture, kallsyms, Served};
use vmem_gdbstub::target::{Debugger, Dump};

/// The kdump files QEMU and makedumpfile made of the moment of dump.elf.
const MADE: [&str; 2] = ["dump.kdump", "dump.kdump-plain"];

fn open(path: &Path) -> Dump {
    Dump::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn monitor(dump: &Path, lines: &[&str]) -> Vec<String> {
    let debugger = Debugger::from_dump(open(dump)).build();
    lines
        .iter()
        .map(|line| debugger.monitor(line).expect("monitor"))
        .collect()
}

/// Every RAM byte of `dump` that reads, by page (`None`: it does not).
fn ram(dump: &Dump) -> Vec<(u64, Option<Vec<u8>>)> {
    let mut pages = Vec::new();
    for r in dump.ram().ranges() {
        for gpa in (r.gpa..r.gpa + r.size).step_by(4096) {
            let mut page = vec![0u8; 4096];
            let read = dump.ram().read(gpa, &mut page).is_ok();
            pages.push((gpa, read.then_some(page)));
        }
    }
    pages
}

/// Page codecs as makedumpfile flags them.
#[derive(Clone, Copy)]
enum Codec {
    Lzo,
    Snappy,
    Zstd,
}

impl Codec {
    fn flag(self) -> u32 {
        match self {
            Codec::Lzo => 0x2,
            Codec::Snappy => 0x4,
            Codec::Zstd => 0x20,
        }
    }

    fn encode(self, page: &[u8]) -> Vec<u8> {
        match self {
            Codec::Lzo => lzo1x::compress(page, lzo1x::CompressLevel::default()),
            Codec::Snappy => snap::raw::Encoder::new().compress_vec(page).unwrap(),
            Codec::Zstd => {
                ruzstd::encoding::compress_to_vec(page, ruzstd::encoding::CompressionLevel::Fastest)
            }
        }
    }
}

/// `dump.kdump-plain` written again in makedumpfile's layout: pages
/// `keep` says no to left out (their bits cleared in the second bitmap, as
/// a dump level does), the others compressed with `codec` (raw where that
/// is no smaller, as makedumpfile does), the header saying so.
fn rewrite(
    dir: &Path,
    name: &str,
    codec: Codec,
    keep: impl Fn(u64) -> bool,
    level: i32,
) -> PathBuf {
    let plain = std::fs::read(dir.join("dump.kdump-plain")).unwrap();
    let word = |at: usize| u32::from_le_bytes(plain[at..at + 4].try_into().unwrap());
    let long = |at: usize| u64::from_le_bytes(plain[at..at + 8].try_into().unwrap());
    let block = word(428) as usize;
    let bitmap_at = (1 + word(432) as usize) * block;
    let half = word(436) as usize * block / 2;
    let second = bitmap_at + half;
    let dumped: Vec<u64> = (0..half as u64 * 8)
        .filter(|&pfn| plain[second + (pfn / 8) as usize] >> (pfn % 8) & 1 == 1)
        .collect();
    let descs = second + half;
    let kept: Vec<(usize, u64)> = dumped
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, pfn)| keep(pfn))
        .collect();
    let mut out = plain[..descs].to_vec();
    out[424..428].copy_from_slice(&codec.flag().to_le_bytes());
    out[block + 8..block + 12].copy_from_slice(&level.to_le_bytes());
    for &pfn in &dumped {
        if !keep(pfn) {
            out[second + (pfn / 8) as usize] &= !(1 << (pfn % 8));
        }
    }
    let mut data = Vec::new();
    let data_at = descs + kept.len() * 24;
    for &(i, _) in &kept {
        let d = descs + i * 24;
        let (offset, size, flags) = (long(d) as usize, word(d + 8) as usize, word(d + 12));
        let stored = &plain[offset..offset + size];
        let mut page = vec![0u8; block];
        match flags {
            0 => page.copy_from_slice(stored),
            1 => {
                let mut z = flate2::Decompress::new(true);
                z.decompress(stored, &mut page, flate2::FlushDecompress::Finish)
                    .unwrap();
            }
            other => panic!("page {i} has flags {other:#x}"),
        }
        let packed = codec.encode(&page);
        let (bytes, flags) = if packed.len() < block {
            (packed, codec.flag())
        } else {
            (page, 0)
        };
        out.extend(((data_at + data.len()) as u64).to_le_bytes());
        out.extend((bytes.len() as u32).to_le_bytes());
        out.extend(flags.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        data.extend_from_slice(&bytes);
    }
    out.extend(data);
    let path = std::env::temp_dir().join(format!("vmem-kdump-{name}-{}", std::process::id()));
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn every_kdump_file_holds_the_ram_and_cpus_of_the_elf_dump() {
    let Some(dir) = fixture() else { return };
    let elf = open(&dir.join("dump.elf"));
    let elf_ram = ram(&elf);
    let made = MADE.iter().map(|f| dir.join(f));
    let rewritten = [
        ("lzo", Codec::Lzo),
        ("snappy", Codec::Snappy),
        ("zstd", Codec::Zstd),
    ]
    .map(|(name, codec)| rewrite(dir, name, codec, |_| true, 0));
    let files: Vec<PathBuf> = made.chain(rewritten.iter().cloned()).collect();
    for path in &files {
        let kdump = open(path);
        assert_eq!(kdump.cpus().len(), elf.cpus().len(), "{}", path.display());
        for (k, e) in kdump.cpus().iter().zip(elf.cpus()) {
            assert_eq!(k.regs, e.regs, "{}", path.display());
            assert_eq!(k.sregs, e.sregs, "{}", path.display());
        }
        assert!(ram(&kdump) == elf_ram, "{}: RAM differs", path.display());
        assert_eq!(kdump.vmcoreinfo(), elf.vmcoreinfo(), "{}", path.display());
    }
    let formats: Vec<String> = files.iter().map(|f| open(f).format().to_string()).collect();
    for (format, codec) in formats
        .iter()
        .zip(["zlib", "zlib", "lzo", "snappy", "zstd"])
    {
        assert!(format.starts_with(&format!("kdump-{codec}")), "{format}");
    }
    assert!(formats[0].contains("(flattened)") && !formats[1].contains("(flattened)"));
    for path in rewritten {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn every_kdump_file_serves_the_same_page_tables() {
    let Some(dir) = fixture() else { return };
    let lines = ["info mem", "vmem spaces", "info registers"];
    let elf = monitor(&dir.join("dump.elf"), &lines);
    assert!(elf[0].lines().count() > 20, "{}", elf[0]);
    for file in MADE {
        assert_eq!(monitor(&dir.join(file), &lines), elf, "{file}");
    }
}

/// The guest left its VMCOREINFO (the fixture's VM has `-device
/// vmcoreinfo`): `info dump` reads it, and the kernel's own top table it
/// names (`init_top_pgt`) maps the kernel as the vCPUs' tables do.
#[test]
fn vmcoreinfo_names_the_kernel_and_its_page_tables() {
    let Some(dir) = fixture() else { return };
    let dump = open(&dir.join("dump.kdump"));
    let info = dump.vmcoreinfo().expect("VMCOREINFO");
    assert!(
        info.os_release().is_some_and(|r| r.starts_with("6.")),
        "{info:?}"
    );
    let (root, how) = info.kernel_root().expect("kernel root");
    assert!(how.contains("init_top_pgt"), "{how}");
    let symbols = kallsyms(dir);
    // KASLR: the symbol VMCOREINFO names is where kallsyms saw it.
    assert_eq!(info.symbol("init_top_pgt"), Some(symbols["init_top_pgt"]));
    let banner = symbols["linux_banner"];
    let out = monitor(
        &dir.join("dump.kdump"),
        &[
            "info dump",
            "vmem spaces",
            &format!("gva2gpa {banner:#x}"),
            &format!("vmem translate --space {root:#x} {banner:#x}"),
            "info vmcoreinfo",
        ],
    );
    assert!(
        out[0].contains("format: kdump-zlib (flattened)"),
        "{}",
        out[0]
    );
    assert!(
        out[0].contains(&format!("kernel page-table root: {root:#x}")),
        "{}",
        out[0]
    );
    assert!(
        out[1].contains(&format!("{root:#x}")) && out[1].contains("VMCOREINFO"),
        "{}",
        out[1]
    );
    let gpa = out[2].trim().rsplit(' ').next().unwrap().to_string();
    assert!(out[3].contains(&gpa), "{gpa} / {}", out[3]);
    assert!(out[4].contains("OSRELEASE=6."), "{}", out[4]);
    assert!(out[4].lines().count() > 20, "{}", out[4]);
}

/// Pages a dump level left out (here every third one, with their bits
/// cleared in the dumped-pages bitmap as makedumpfile clears them) are not
/// RAM, and say why; every other page reads as in the ELF dump.
#[test]
fn pages_left_out_are_said_to_be_left_out() {
    let Some(dir) = fixture() else { return };
    let path = rewrite(dir, "left-out", Codec::Zstd, |pfn| pfn % 3 != 1, 31);
    let elf = ram(&open(&dir.join("dump.elf")));
    let partial = ram(&open(&path));
    assert_eq!(elf.len(), partial.len());
    for ((gpa, whole), (at, part)) in elf.iter().zip(&partial) {
        assert_eq!(gpa, at);
        if gpa / 4096 % 3 == 1 {
            assert!(part.is_none(), "{gpa:#x} was left out");
        } else {
            assert_eq!(part, whole, "{gpa:#x}");
        }
    }
    let out = monitor(&path, &["xp /2xg 0x1000", "xp /2xg 0x2000", "info dump"]);
    assert!(
        out[0].contains("Cannot access memory at 0x1000: page 0x1000 was excluded from the dump (makedumpfile dump level 31)"),
        "{}",
        out[0]
    );
    assert!(out[1].starts_with("0000000000002000:"), "{}", out[1]);
    assert!(out[2].contains("dump level 31"), "{}", out[2]);
    let _ = std::fs::remove_file(path);
}

/// gdb against a kdump file, as against the ELF one: the banner through
/// the kernel's tables.
#[test]
fn gdb_reads_a_kdump_file() {
    let Some(dir) = fixture() else { return };
    let banner = kallsyms(dir)["linux_banner"];
    for file in MADE {
        let dump = dir.join(file);
        let served = Served::with_args(&["--dump", dump.to_str().unwrap()]);
        let out = served.gdb(&[&format!("x/s {banner:#x}"), "monitor info dump"]);
        assert!(out.contains("\"Linux version 6."), "{file}: {out}");
        assert!(out.contains("format: kdump-"), "{file}: {out}");
    }
}

/// Cut short or corrupted, a kdump file is refused in one line or served
/// with the pages that still read; never a panic, never a read outside the
/// file.
#[test]
fn lying_kdump_files_get_one_line_and_never_panic() {
    let Some(dir) = fixture() else { return };
    let tmp = std::env::temp_dir().join(format!("vmem-kdump-mutants-{}", std::process::id()));
    for source in ["dump.kdump-plain", "dump.kdump"] {
        let original = std::fs::read(dir.join(source)).unwrap();
        let mutants = fixture::mutants(&original);
        for (i, m) in mutants.iter().enumerate() {
            std::fs::write(&tmp, m).unwrap();
            match Dump::open(&tmp) {
                Err(e) => {
                    let line = e.to_string();
                    assert!(
                        !line.is_empty() && !line.contains('\n'),
                        "{source} #{i}: {line}"
                    );
                }
                Ok(dump) => {
                    let mut page = [0u8; 4096];
                    for r in dump.ram().ranges() {
                        for gpa in (r.gpa..r.gpa + r.size).step_by(4096 * 7) {
                            let _ = dump.ram().read(gpa, &mut page);
                        }
                    }
                    let debugger = Debugger::from_dump(dump).build();
                    let _ = debugger.monitor("info mem");
                }
            }
        }
    }
    let _ = std::fs::remove_file(&tmp);
}

/// The kernel's own kallsyms tables, found through VMCOREINFO and read
/// through its page tables, say what `/proc/kallsyms` of that boot said
/// (every symbol of the kernel image, in order; modules are not in them),
/// so gdb names kernel addresses with no `--symbols`.
#[test]
fn the_dump_carries_its_own_symbols() {
    let Some(dir) = fixture() else { return };
    let proc_kallsyms = std::fs::read_to_string(dir.join("kallsyms")).unwrap();
    let core: Vec<&str> = proc_kallsyms
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.contains('['))
        .collect();
    for file in ["dump.elf", "dump.kdump"] {
        let decoded = open(&dir.join(file)).kallsyms().expect("kallsyms");
        let decoded: Vec<&str> = decoded.lines().collect();
        assert_eq!(decoded.len(), core.len(), "{file}");
        let differ: Vec<(&&str, &&str)> =
            decoded.iter().zip(&core).filter(|(a, b)| a != b).collect();
        assert!(
            differ.is_empty(),
            "{file}: {} lines differ, first {:?}",
            differ.len(),
            differ.first()
        );
    }
    let dump = dir.join("dump.kdump");
    let served = Served::with_args(&["--dump", dump.to_str().unwrap()]);
    let out = served.gdb(&["x/s &linux_banner", "info symbol $pc"]);
    assert!(out.contains("<linux_banner>:\t\"Linux version 6."), "{out}");
    assert!(out.contains("in section .kernel"), "{out}");
}

/// A guest's own vmcore has no QEMU CPU-state notes: the vCPUs come from
/// its `NT_PRSTATUS` notes (registers as the QEMU notes say), in the
/// kernel's long mode, with the kernel's own tables from VMCOREINFO as CR3;
/// the kernel reads as in the full dump.
#[test]
fn a_dump_with_only_prstatus_notes_reads_through_the_kernels_tables() {
    let Some(dir) = fixture() else { return };
    let mut file = std::fs::read(dir.join("dump.elf")).unwrap();
    let (mut at, end) = {
        let elf = elf::ElfBytes::<elf::endian::LittleEndian>::minimal_parse(&file).unwrap();
        let note = elf
            .segments()
            .unwrap()
            .iter()
            .find(|ph| ph.p_type == elf::abi::PT_NOTE)
            .unwrap();
        (
            note.p_offset as usize,
            (note.p_offset + note.p_filesz) as usize,
        )
    };
    let mut hidden = 0;
    while at + 12 <= end {
        let word = |i: usize| u32::from_le_bytes(file[i..i + 4].try_into().unwrap()) as usize;
        let (namesz, descsz) = (word(at), word(at + 4));
        if &file[at + 12..at + 16] == b"QEMU" {
            file[at + 15] = b'X';
            hidden += 1;
        }
        at += 12 + namesz.next_multiple_of(4) + descsz.next_multiple_of(4);
    }
    assert_eq!(hidden, 2);
    let path = std::env::temp_dir().join(format!("vmem-prstatus-only-{}", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    let full = open(&dir.join("dump.elf"));
    let bare = open(&path);
    let root = full.vmcoreinfo().unwrap().kernel_root().unwrap().0;
    assert_eq!(bare.cpus().len(), 2);
    for (b, f) in bare.cpus().iter().zip(full.cpus()) {
        assert_eq!(b.regs, f.regs);
        assert_eq!(b.sregs.cr3, root);
        assert_eq!(b.sregs.cs.selector, f.sregs.cs.selector);
        assert_eq!(b.sregs.gs.base, f.sregs.gs.base);
    }
    let banner = kallsyms(dir)["linux_banner"];
    let lines = [
        format!("x /2xg {banner:#x}"),
        format!("gva2gpa {banner:#x}"),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let out = monitor(&path, &lines);
    assert_eq!(out, monitor(&dir.join("dump.elf"), &lines));
    // "Linux ve", little-endian.
    assert!(out[0].contains("65762078756e694c"), "{}", out[0]);
    let _ = std::fs::remove_file(path);
}
