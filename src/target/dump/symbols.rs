//! Kernel symbols for gdb from a `System.map` or `/proc/kallsyms` listing
//! (`ADDRESS TYPE NAME [MODULE]`): an ELF file with no contents, only a
//! symbol table, whose one `NOBITS` section spans the symbols, so gdb can
//! load it (as the exec-file) and name addresses in `x/i`, `bt` and
//! `info symbol` while memory still comes from the target.

use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::target::dump::cpu::DumpArch;
use crate::target::dump::dump_file::Dump;

/// Why a listing cannot be turned into a symbol file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SymbolsError {
    /// A line that is not `ADDRESS TYPE NAME`.
    BadLine(usize),
    /// No symbols at all (e.g. Debian's placeholder `System.map`).
    Empty,
}

impl fmt::Display for SymbolsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SymbolsError::BadLine(n) => write!(f, "line {n} is not `ADDRESS TYPE NAME`"),
            SymbolsError::Empty => f.write_str("no symbols with an address in the listing"),
        }
    }
}

impl std::error::Error for SymbolsError {}

/// One symbol: address, whether it is code, whether it is absolute (an
/// offset such as a per-CPU variable's, not an address), name.
struct Symbol<'a> {
    addr: u64,
    code: bool,
    absolute: bool,
    name: &'a str,
}

/// The kernel half of a 64-bit address space starts here: a kernel
/// listing's symbols below it (per-CPU offsets from 0) are not addresses.
const KERNEL_HALF: u64 = 1 << 63;

/// Parse a `System.map` / kallsyms listing; zero addresses (kallsyms with
/// addresses hidden) and placeholder lines are left out. `A` symbols, and
/// symbols in the lower half of a listing that has kernel-half ones (the
/// per-CPU offsets `System.map` lists as data), are absolute.
fn parse(listing: &str) -> Result<Vec<Symbol<'_>>, SymbolsError> {
    let mut symbols = Vec::new();
    for (n, line) in listing.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(SymbolsError::BadLine(n + 1));
        };
        let addr = u64::from_str_radix(addr, 16).map_err(|_| SymbolsError::BadLine(n + 1))?;
        if addr == 0 || addr == u64::MAX {
            continue;
        }
        symbols.push(Symbol {
            addr,
            code: matches!(kind, "T" | "t" | "W" | "w"),
            absolute: matches!(kind, "A" | "a"),
            name,
        });
    }
    if symbols.iter().any(|s| s.addr >= KERNEL_HALF) {
        for s in symbols.iter_mut().filter(|s| s.addr < KERNEL_HALF) {
            s.absolute = true;
        }
    }
    if symbols.iter().all(|s| s.absolute) {
        return Err(SymbolsError::Empty);
    }
    Ok(symbols)
}

/// Symbols further apart than this start a new section: addresses in
/// between belong to nothing the listing describes (the image and the
/// module area are far apart; the image has no gap this large).
const SECTION_GAP: u64 = 16 << 20;

/// The address ranges the symbols cover, page-aligned: one section each.
fn sections(symbols: &[Symbol<'_>]) -> Vec<std::ops::Range<u64>> {
    let mut addrs: Vec<u64> = symbols
        .iter()
        .filter(|s| !s.absolute)
        .map(|s| s.addr)
        .collect();
    addrs.sort_unstable();
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    for addr in addrs {
        let page_end = (addr | 0xfff).saturating_add(1);
        match ranges.last_mut() {
            Some(last) if addr.saturating_sub(last.end) < SECTION_GAP => {
                last.end = last.end.max(page_end);
            }
            _ => ranges.push(addr & !0xfff..page_end),
        }
    }
    ranges
}

const ELF_HEADER: usize = 64;
const SECTION_HEADER: usize = 64;
const SYMBOL: usize = 24;
const SHT_NULL: u32 = 0;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC_EXEC: u64 = 0x2 | 0x4;
const SHN_ABS: u16 = 0xfff1;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
const STB_GLOBAL: u8 = 1;

/// One section header's fields.
struct SectionHeader {
    name: u32,
    kind: u32,
    flags: u64,
    addr: u64,
    offset: usize,
    size: u64,
    link: u32,
    entsize: u64,
}

impl SectionHeader {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend(self.name.to_le_bytes());
        out.extend(self.kind.to_le_bytes());
        out.extend(self.flags.to_le_bytes());
        out.extend(self.addr.to_le_bytes());
        out.extend((self.offset as u64).to_le_bytes());
        out.extend(self.size.to_le_bytes());
        out.extend(self.link.to_le_bytes());
        // sh_info of .symtab: index of the first global symbol (1).
        out.extend(u32::from(self.kind == SHT_SYMTAB).to_le_bytes());
        out.extend(if self.kind == SHT_NOBITS { 4096u64 } else { 8 }.to_le_bytes());
        out.extend(self.entsize.to_le_bytes());
    }
}

/// An ELF64 x86-64 symbol file for the symbols of `listing`
/// ([`symbol_file_for`] an x86-64 kernel).
pub fn symbol_file(listing: &str) -> Result<Vec<u8>, SymbolsError> {
    symbol_file_for(listing, DumpArch::X86_64)
}

/// An ELF64 symbol file for the symbols of `listing`, a kernel of `arch`:
/// one `NOBITS` section per stretch of addresses the symbols cover
/// (`.kernel`, then `.kernel.1` … for the module area), so gdb names only
/// addresses inside them; absolute symbols (per-CPU offsets) belong to no
/// section.
pub fn symbol_file_for(listing: &str, arch: DumpArch) -> Result<Vec<u8>, SymbolsError> {
    let symbols = parse(listing)?;
    let ranges = sections(&symbols);
    // Section indices: 0 null, 1.. the ranges, then symtab, strtab, shstrtab.
    let first_range = 1usize;
    let symtab_index = first_range + ranges.len();

    let mut strtab = vec![0u8];
    let mut symtab = vec![0u8; SYMBOL]; // the null symbol
    for s in &symbols {
        let name_at = strtab.len() as u32;
        strtab.extend_from_slice(s.name.as_bytes());
        strtab.push(0);
        let kind = if s.code { STT_FUNC } else { STT_OBJECT };
        let section = if s.absolute {
            SHN_ABS
        } else {
            let i = ranges.partition_point(|r| r.end <= s.addr);
            (first_range + i) as u16
        };
        symtab.extend(name_at.to_le_bytes());
        symtab.push(STB_GLOBAL << 4 | kind);
        symtab.push(0);
        symtab.extend(section.to_le_bytes());
        symtab.extend(s.addr.to_le_bytes());
        symtab.extend(0u64.to_le_bytes());
    }
    let mut shstrtab = vec![0u8];
    let mut name = |text: &str| {
        let at = shstrtab.len() as u32;
        shstrtab.extend_from_slice(text.as_bytes());
        shstrtab.push(0);
        at
    };
    let range_names: Vec<u32> = (0..ranges.len())
        .map(|i| match i {
            0 => name(".kernel"),
            i => name(&format!(".kernel.{i}")),
        })
        .collect();
    let (name_symtab, name_strtab, name_shstrtab) =
        (name(".symtab"), name(".strtab"), name(".shstrtab"));

    let symtab_at = ELF_HEADER;
    let strtab_at = symtab_at + symtab.len();
    let shstrtab_at = strtab_at + strtab.len();
    let sections_at = (shstrtab_at + shstrtab.len()).next_multiple_of(8);
    let section_count = symtab_index + 3;
    let mut out = Vec::with_capacity(sections_at + section_count * SECTION_HEADER);
    // ELF header: ELF64, little endian, ET_EXEC, the kernel's machine.
    let machine: u16 = match arch {
        DumpArch::Aarch64 => 183,
        _ => 62,
    };
    out.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    out.extend(2u16.to_le_bytes());
    out.extend(machine.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    out.extend(0u64.to_le_bytes()); // entry
    out.extend(0u64.to_le_bytes()); // phoff
    out.extend((sections_at as u64).to_le_bytes());
    out.extend(0u32.to_le_bytes()); // flags
    out.extend((ELF_HEADER as u16).to_le_bytes());
    out.extend(0u16.to_le_bytes()); // phentsize
    out.extend(0u16.to_le_bytes()); // phnum
    out.extend((SECTION_HEADER as u16).to_le_bytes());
    out.extend((section_count as u16).to_le_bytes());
    out.extend(((symtab_index + 2) as u16).to_le_bytes()); // shstrndx
    out.extend(&symtab);
    out.extend(&strtab);
    out.extend(&shstrtab);
    out.resize(sections_at, 0);
    let table = |name, kind, offset, size: usize, link, entsize| SectionHeader {
        name,
        kind,
        flags: 0,
        addr: 0,
        offset,
        size: size as u64,
        link,
        entsize,
    };
    table(0, SHT_NULL, 0, 0, 0, 0).write(&mut out);
    for (range, &name) in ranges.iter().zip(&range_names) {
        SectionHeader {
            name,
            kind: SHT_NOBITS,
            flags: SHF_ALLOC_EXEC,
            addr: range.start,
            offset: sections_at,
            size: range.end - range.start,
            link: 0,
            entsize: 0,
        }
        .write(&mut out);
    }
    let strtab_index = (symtab_index + 1) as u32;
    table(
        name_symtab,
        SHT_SYMTAB,
        symtab_at,
        symtab.len(),
        strtab_index,
        SYMBOL as u64,
    )
    .write(&mut out);
    table(name_strtab, SHT_STRTAB, strtab_at, strtab.len(), 0, 0).write(&mut out);
    table(name_shstrtab, SHT_STRTAB, shstrtab_at, shstrtab.len(), 0, 0).write(&mut out);
    Ok(out)
}

/// The symbol file of a listing on disk, as handed to gdb: an ELF that
/// exists only in the stub ([`crate::target::DebuggerBuilder::exec_file_bytes`])
/// under a name made of the listing's.
#[derive(Debug, Clone)]
pub struct SymbolFile {
    /// The path gdb is told (nothing is there on the host).
    pub name: String,
    /// The ELF.
    pub elf: Vec<u8>,
}

impl SymbolFile {
    /// Read `listing` (a `System.map` or `/proc/kallsyms`) of a kernel of
    /// `arch` and make its symbol file; errors name the listing, in one
    /// line.
    pub fn from_listing(listing: &Path, arch: DumpArch) -> Result<SymbolFile, String> {
        let text =
            std::fs::read_to_string(listing).map_err(|e| format!("{}: {e}", listing.display()))?;
        let elf =
            symbol_file_for(&text, arch).map_err(|e| format!("{}: {e}", listing.display()))?;
        let base = listing
            .file_name()
            .map_or("symbols".into(), |n| n.to_string_lossy());
        Ok(SymbolFile {
            name: format!("/vmem-gdbstub/{base}.elf"),
            elf,
        })
    }

    /// The symbol file of the kernel in `dump`, from its own kallsyms
    /// tables ([`Dump::kallsyms`]): no listing needed.
    pub fn from_dump(dump: &Dump) -> Result<SymbolFile, String> {
        let listing = dump.kallsyms()?;
        let elf = symbol_file_for(&listing, dump.arch())
            .map_err(|e| format!("the dump's kallsyms: {e}"))?;
        Ok(SymbolFile {
            name: "/vmem-gdbstub/kallsyms-of-the-dump.elf".into(),
            elf,
        })
    }

    /// Write a copy to `path` for debuggers that need a local file (lldb):
    /// a new file only, never through a link, never over another file.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(path)?
            .write_all(&self.elf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_become_symbol_tables_elf_readers_accept() {
        let listing = "ffffffff81000000 T _stext\r\nffffffff81000010 t helper\nffffffff82000000 D jiffies_64\n0000000000000000 A hidden\n0000000000001000 A cpu_debug_store\n0000000000006000 D cpu_tss_rw\nffffffffc0001000 t mod_fn [ext4]\n";
        let file = symbol_file(listing).unwrap();
        let elf = elf::ElfBytes::<elf::endian::LittleEndian>::minimal_parse(&file).unwrap();
        let (symbols, strings) = elf.symbol_table().unwrap().unwrap();
        let named: Vec<(String, u64, u8, u16)> = symbols
            .iter()
            .skip(1)
            .map(|s| {
                (
                    strings.get(s.st_name as usize).unwrap().to_string(),
                    s.st_value,
                    s.st_symtype(),
                    s.st_shndx,
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                ("_stext".to_string(), 0xffff_ffff_8100_0000, STT_FUNC, 1),
                ("helper".to_string(), 0xffff_ffff_8100_0010, STT_FUNC, 1),
                (
                    "jiffies_64".to_string(),
                    0xffff_ffff_8200_0000,
                    STT_OBJECT,
                    1
                ),
                // Per-CPU offsets, as kallsyms (A) and System.map (D) list them.
                ("cpu_debug_store".to_string(), 0x1000, STT_OBJECT, SHN_ABS),
                ("cpu_tss_rw".to_string(), 0x6000, STT_OBJECT, SHN_ABS),
                ("mod_fn".to_string(), 0xffff_ffff_c000_1000, STT_FUNC, 2),
            ]
        );
        // The sections span the image and the module, nothing else.
        let (headers, names) = elf.section_headers_with_strtab().unwrap();
        let spans: Vec<(String, u64, u64)> = headers
            .unwrap()
            .iter()
            .filter(|h| h.sh_type == SHT_NOBITS)
            .map(|h| {
                let name = names.unwrap().get(h.sh_name as usize).unwrap();
                (name.to_string(), h.sh_addr, h.sh_addr + h.sh_size)
            })
            .collect();
        assert_eq!(
            spans,
            [
                (
                    ".kernel".to_string(),
                    0xffff_ffff_8100_0000,
                    0xffff_ffff_8200_1000
                ),
                (
                    ".kernel.1".to_string(),
                    0xffff_ffff_c000_1000,
                    0xffff_ffff_c000_2000
                ),
            ]
        );
        assert_eq!(
            symbol_file("ffffffffffffffff B The real System.map is in the -dbg package"),
            Err(SymbolsError::Empty)
        );
        assert_eq!(symbol_file("zz T x"), Err(SymbolsError::BadLine(1)));
        assert_eq!(symbol_file("ffff"), Err(SymbolsError::BadLine(1)));
    }
}
