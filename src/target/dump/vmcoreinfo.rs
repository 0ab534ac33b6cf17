//! VMCOREINFO: the `KEY=VALUE` lines a Linux guest leaves for dump readers
//! (in an ELF dump's "VMCOREINFO" note, or a kdump file's own area) —
//! `OSRELEASE`, `PAGESIZE`, `KERNELOFFSET`, `SYMBOL(name)=hex`,
//! `NUMBER(name)=decimal`, `SIZE(…)`, `OFFSET(…)`.

use std::collections::BTreeMap;

/// The note name VMCOREINFO travels under in an ELF dump.
pub(crate) const VMCOREINFO_NOTE_NAME: &[u8] = b"VMCOREINFO";

/// Longest VMCOREINFO read (the kernel's buffer is one page; a file that
/// claims more is cut here).
pub(crate) const MAX_VMCOREINFO: usize = 1 << 16;

/// Where x86-64 maps the kernel image (`__START_KERNEL_map`).
const X86_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// A guest's VMCOREINFO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmcoreInfo {
    entries: BTreeMap<String, String>,
}

impl VmcoreInfo {
    /// The lines of `text` (NUL padding and lines without `=` ignored;
    /// at most 64 KiB read).
    pub fn parse(text: &[u8]) -> VmcoreInfo {
        let text = &text[..text.len().min(MAX_VMCOREINFO)];
        let text = text.split(|&b| b == 0).next().unwrap_or_default();
        let entries = String::from_utf8_lossy(text)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
            .collect();
        VmcoreInfo { entries }
    }

    /// The value of `key` as written (`OSRELEASE`, `SYMBOL(init_top_pgt)` …).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Every entry, by key.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `SYMBOL(name)`: the symbol's address in the running kernel (hex).
    pub fn symbol(&self, name: &str) -> Option<u64> {
        parse_hex(self.get(&format!("SYMBOL({name})"))?)
    }

    /// `NUMBER(name)` (decimal; some kernels write hex with `0x`).
    pub fn number(&self, name: &str) -> Option<i64> {
        parse_number(self.get(&format!("NUMBER({name})"))?)
    }

    /// `KERNELOFFSET`: how far KASLR moved the kernel image (hex).
    pub fn kernel_offset(&self) -> Option<u64> {
        parse_hex(self.get("KERNELOFFSET")?)
    }

    /// `PAGESIZE`.
    pub fn page_size(&self) -> Option<u64> {
        self.get("PAGESIZE")?.parse().ok()
    }

    /// The guest-physical address of the kernel's own top page table, and
    /// how it was found: x86-64's `init_top_pgt` (its address less the
    /// kernel map's base, plus `phys_base`), arm64's `swapper_pg_dir`
    /// (less `kimage_voffset`; TTBR1's table).
    pub fn kernel_root(&self) -> Option<(u64, &'static str)> {
        if let (Some(sym), Some(base)) = (self.symbol("init_top_pgt"), self.number("phys_base")) {
            let pa = sym.checked_sub(X86_KERNEL_MAP)?.checked_add_signed(base)?;
            return Some((pa, "init_top_pgt - __START_KERNEL_map + phys_base"));
        }
        let sym = self.symbol("swapper_pg_dir")?;
        let voffset = self.number("kimage_voffset")? as u64;
        Some((sym.checked_sub(voffset)?, "swapper_pg_dir - kimage_voffset"))
    }

    /// `OSRELEASE`, the kernel's release string.
    pub fn os_release(&self) -> Option<&str> {
        self.get("OSRELEASE")
    }
}

/// Hex with or without `0x`.
fn parse_hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).ok()
}

/// Decimal, negative, or `0x` hex.
fn parse_number(text: &str) -> Option<i64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok().map(|v| v as i64),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kinds_of_entry() {
        let text = b"OSRELEASE=6.1.0-28-cloud-arm64\nPAGESIZE=4096\n\
            SYMBOL(swapper_pg_dir)=ffffd2f2a8a3a000\nNUMBER(kimage_voffset)=0xffffd2f1e7c00000\n\
            NUMBER(VA_BITS)=48\nNUMBER(PHYS_OFFSET)=-1\nKERNELOFFSET=52f1e7e00000\n\
            garbage line\nCRASHTIME=1700000000\n\0\0\0";
        let info = VmcoreInfo::parse(text);
        assert_eq!(info.os_release(), Some("6.1.0-28-cloud-arm64"));
        assert_eq!(info.page_size(), Some(4096));
        assert_eq!(info.symbol("swapper_pg_dir"), Some(0xffff_d2f2_a8a3_a000));
        assert_eq!(
            info.number("kimage_voffset"),
            Some(0xffff_d2f1_e7c0_0000u64 as i64)
        );
        assert_eq!(info.number("VA_BITS"), Some(48));
        assert_eq!(info.number("PHYS_OFFSET"), Some(-1));
        assert_eq!(info.kernel_offset(), Some(0x52f1_e7e0_0000));
        assert_eq!(info.symbol("init_top_pgt"), None);
        assert_eq!(info.entries().count(), 8);
        // arm64: TTBR1's table is swapper_pg_dir less kimage_voffset.
        assert_eq!(
            info.kernel_root().map(|r| r.0),
            Some(0xffff_d2f2_a8a3_a000 - 0xffff_d2f1_e7c0_0000)
        );
        let x86 = VmcoreInfo::parse(
            b"SYMBOL(init_top_pgt)=ffffffffa6c0a000\nNUMBER(phys_base)=-536870912\n",
        );
        assert_eq!(x86.kernel_root().map(|r| r.0), Some(0x6c0_a000));
    }

    #[test]
    fn hostile_text_reads_as_what_it_says() {
        assert!(VmcoreInfo::parse(b"").is_empty());
        assert!(VmcoreInfo::parse(&[0xff; 100]).is_empty());
        let info = VmcoreInfo::parse(b"SYMBOL(x)=zz\nNUMBER(y)=99999999999999999999999\n");
        assert_eq!(info.symbol("x"), None);
        assert_eq!(info.number("y"), None);
        let long = vec![b'A'; 1 << 20];
        assert!(VmcoreInfo::parse(&long).is_empty());
    }
}
