//! Kernel symbols for gdb from a `System.map` or `/proc/kallsyms` listing
//! (`ADDRESS TYPE NAME [MODULE]`): an ELF file with no contents, only a
//! symbol table, whose one `NOBITS` section spans the symbols, so gdb can
//! load it (as the exec-file) and name addresses in `x/i`, `bt` and
//! `info symbol` while memory still comes from the target.

use std::fmt;

/// Why a listing cannot be turned into a symbol file.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// One symbol: address, whether it is code, name.
struct Symbol<'a> {
    addr: u64,
    code: bool,
    name: &'a str,
}

/// Parse a `System.map` / kallsyms listing; zero addresses (kallsyms with
/// addresses hidden) and placeholder lines are left out.
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
            name,
        });
    }
    if symbols.is_empty() {
        return Err(SymbolsError::Empty);
    }
    Ok(symbols)
}

const ELF_HEADER: usize = 64;
const SECTION_HEADER: usize = 64;
const SYMBOL: usize = 24;
const SHT_PROGBITS_NONE: u32 = 0;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC_EXEC: u64 = 0x2 | 0x4;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
const STB_GLOBAL: u8 = 1;

/// An ELF64 x86-64 symbol file for the symbols of `listing`.
pub fn symbol_file(listing: &str) -> Result<Vec<u8>, SymbolsError> {
    let symbols = parse(listing)?;
    let low = symbols.iter().map(|s| s.addr).min().unwrap_or(0) & !0xfff;
    let high = symbols.iter().map(|s| s.addr).max().unwrap_or(0);
    let span = (high - low).saturating_add(0x1000);

    let mut strtab = vec![0u8];
    let mut symtab = vec![0u8; SYMBOL]; // the null symbol
    for s in &symbols {
        let name_at = strtab.len() as u32;
        strtab.extend_from_slice(s.name.as_bytes());
        strtab.push(0);
        let kind = if s.code { STT_FUNC } else { STT_OBJECT };
        symtab.extend(name_at.to_le_bytes());
        symtab.push(STB_GLOBAL << 4 | kind);
        symtab.push(0);
        symtab.extend(1u16.to_le_bytes()); // section 1: .kernel
        symtab.extend(s.addr.to_le_bytes());
        symtab.extend(0u64.to_le_bytes());
    }
    let shstrtab = b"\0.kernel\0.symtab\0.strtab\0.shstrtab\0";
    let (name_kernel, name_symtab, name_strtab, name_shstrtab) = (1u32, 9u32, 17u32, 25u32);

    let symtab_at = ELF_HEADER;
    let strtab_at = symtab_at + symtab.len();
    let shstrtab_at = strtab_at + strtab.len();
    let sections_at = (shstrtab_at + shstrtab.len()).next_multiple_of(8);
    let mut out = Vec::with_capacity(sections_at + 5 * SECTION_HEADER);
    // ELF header: ELF64, little endian, ET_EXEC, x86-64, 5 sections.
    out.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    out.extend(2u16.to_le_bytes());
    out.extend(62u16.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    out.extend(0u64.to_le_bytes()); // entry
    out.extend(0u64.to_le_bytes()); // phoff
    out.extend((sections_at as u64).to_le_bytes());
    out.extend(0u32.to_le_bytes()); // flags
    out.extend((ELF_HEADER as u16).to_le_bytes());
    out.extend(0u16.to_le_bytes()); // phentsize
    out.extend(0u16.to_le_bytes()); // phnum
    out.extend((SECTION_HEADER as u16).to_le_bytes());
    out.extend(5u16.to_le_bytes());
    out.extend(4u16.to_le_bytes()); // shstrndx
    out.extend(&symtab);
    out.extend(&strtab);
    out.extend(shstrtab);
    out.resize(sections_at, 0);
    let mut section = |name: u32,
                       kind: u32,
                       flags: u64,
                       addr: u64,
                       offset: usize,
                       size: u64,
                       link: u32,
                       entsize: u64| {
        out.extend(name.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(flags.to_le_bytes());
        out.extend(addr.to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        out.extend(size.to_le_bytes());
        out.extend(link.to_le_bytes());
        // sh_info of .symtab: index of the first global symbol (1).
        out.extend(u32::from(kind == SHT_SYMTAB).to_le_bytes());
        out.extend(if kind == SHT_NOBITS { 4096u64 } else { 8 }.to_le_bytes());
        out.extend(entsize.to_le_bytes());
    };
    section(0, SHT_PROGBITS_NONE, 0, 0, 0, 0, 0, 0);
    section(
        name_kernel,
        SHT_NOBITS,
        SHF_ALLOC_EXEC,
        low,
        sections_at,
        span,
        0,
        0,
    );
    section(
        name_symtab,
        SHT_SYMTAB,
        0,
        0,
        symtab_at,
        symtab.len() as u64,
        3,
        SYMBOL as u64,
    );
    section(
        name_strtab,
        SHT_STRTAB,
        0,
        0,
        strtab_at,
        strtab.len() as u64,
        0,
        0,
    );
    section(
        name_shstrtab,
        SHT_STRTAB,
        0,
        0,
        shstrtab_at,
        shstrtab.len() as u64,
        0,
        0,
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_become_symbol_tables_elf_readers_accept() {
        let listing = "ffffffff81000000 T _stext\r\nffffffff81000010 t helper\nffffffff82000000 D jiffies_64\n0000000000000000 A hidden\nffffffffc0001000 t mod_fn [ext4]\n";
        let file = symbol_file(listing).unwrap();
        let elf = elf::ElfBytes::<elf::endian::LittleEndian>::minimal_parse(&file).unwrap();
        let (symbols, strings) = elf.symbol_table().unwrap().unwrap();
        let named: Vec<(String, u64, u8)> = symbols
            .iter()
            .skip(1)
            .map(|s| {
                (
                    strings.get(s.st_name as usize).unwrap().to_string(),
                    s.st_value,
                    s.st_symtype(),
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                ("_stext".to_string(), 0xffff_ffff_8100_0000, STT_FUNC),
                ("helper".to_string(), 0xffff_ffff_8100_0010, STT_FUNC),
                ("jiffies_64".to_string(), 0xffff_ffff_8200_0000, STT_OBJECT),
                ("mod_fn".to_string(), 0xffff_ffff_c000_1000, STT_FUNC),
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
