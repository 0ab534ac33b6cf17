//! The kernel's own symbol table, read out of a dump: VMCOREINFO names
//! `kallsyms_num_syms`, `kallsyms_names`, `kallsyms_token_table`,
//! `kallsyms_token_index`, `kallsyms_offsets` and
//! `kallsyms_relative_base` (Linux 6.x; earlier kernels do not), and the
//! table is decoded as `kernel/kallsyms.c` does — each name a length (one
//! byte, or two for "big" names) and token numbers, the first character
//! of the expanded name its type; addresses relative to the base (arm64:
//! unsigned offsets; x86-64: negative offsets base-relative, positive ones
//! absolute per-CPU offsets). What comes out reads as `/proc/kallsyms` of that boot, without
//! modules, so `--symbols` is not needed for a dump that has it.

use std::fmt::Write;

use crate::target::dump::vmcoreinfo::VmcoreInfo;

/// More symbols than any kernel has: a table that claims more lies.
const MAX_SYMBOLS: u32 = 1 << 22;
/// Longest name (Linux's KSYM_NAME_LEN is 512).
const MAX_NAME: usize = 1024;

/// How the table stores addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offsets {
    /// `CONFIG_KALLSYMS_ABSOLUTE_PERCPU` (x86-64): offsets ≥ 0 are
    /// absolute (per-CPU), negative ones count down from the base less one.
    AbsolutePercpu,
    /// Every offset is unsigned, from the base (arm64).
    Relative,
}

/// The kernel's symbols, as `/proc/kallsyms` lines (`ADDR TYPE NAME`),
/// read with `read(va, buf)` (kernel virtual addresses; false: unreadable),
/// addresses stored as `offsets` says.
pub(crate) fn kallsyms(
    info: &VmcoreInfo,
    offsets: Offsets,
    read: &dyn Fn(u64, &mut [u8]) -> bool,
) -> Result<String, String> {
    let symbol = |name: &str| {
        info.symbol(name)
            .ok_or_else(|| format!("VMCOREINFO has no SYMBOL({name}) (kernels before 6.x)"))
    };
    let bytes = |va: u64, len: usize, what: &str| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        if read(va, &mut buf) {
            Ok(buf)
        } else {
            Err(format!("cannot read {what} ({len} bytes at {va:#x})"))
        }
    };
    let count = u32::from_le_bytes(
        bytes(symbol("kallsyms_num_syms")?, 4, "kallsyms_num_syms")?
            .try_into()
            .unwrap_or_default(),
    );
    if count == 0 || count > MAX_SYMBOLS {
        return Err(format!("kallsyms_num_syms says {count}"));
    }
    let base = u64::from_le_bytes(
        bytes(
            symbol("kallsyms_relative_base")?,
            8,
            "kallsyms_relative_base",
        )?
        .try_into()
        .unwrap_or_default(),
    );
    let index = bytes(symbol("kallsyms_token_index")?, 512, "kallsyms_token_index")?;
    let token_at = |i: u8| u16::from_le_bytes([index[2 * i as usize], index[2 * i as usize + 1]]);
    let table_len = (0..=255).map(token_at).max().unwrap_or(0) as usize + 256;
    let table = read_prefix(symbol("kallsyms_token_table")?, table_len, read);
    let tokens: Vec<&[u8]> = (0..=255)
        .map(|i| {
            let start = (token_at(i) as usize).min(table.len());
            let rest = &table[start..];
            &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
        })
        .collect();
    let offsets_raw = bytes(
        symbol("kallsyms_offsets")?,
        count as usize * 4,
        "kallsyms_offsets",
    )?;
    let names_at = symbol("kallsyms_names")?;
    // Names are read in chunks as they are decoded (the table's length is
    // not recorded).
    let mut names = Chunks::new(names_at, read);
    let mut out = String::with_capacity(count as usize * 40);
    let mut name = Vec::with_capacity(64);
    for i in 0..count as usize {
        let first = names.byte().ok_or("kallsyms_names ends early")?;
        let len = if first & 0x80 != 0 {
            let second = names.byte().ok_or("kallsyms_names ends early")?;
            (first & 0x7f) as usize | (second as usize) << 7
        } else {
            first as usize
        };
        name.clear();
        for _ in 0..len {
            let token = names.byte().ok_or("kallsyms_names ends early")?;
            name.extend_from_slice(tokens[token as usize]);
        }
        if name.len() < 2 || name.len() > MAX_NAME {
            return Err(format!("symbol {i} decodes to {} bytes", name.len()));
        }
        let raw = i32::from_le_bytes(offsets_raw[i * 4..i * 4 + 4].try_into().unwrap_or_default());
        let addr = match offsets {
            Offsets::AbsolutePercpu if raw >= 0 => raw as u64,
            Offsets::AbsolutePercpu => base.wrapping_sub(1).wrapping_sub(raw as i64 as u64),
            Offsets::Relative => base.wrapping_add(raw as u32 as u64),
        };
        let kind = name[0] as char;
        let _ = writeln!(
            out,
            "{addr:016x} {kind} {}",
            String::from_utf8_lossy(&name[1..])
        );
    }
    Ok(out)
}

/// Up to `len` bytes at `va`, as many as read (page by page).
fn read_prefix(va: u64, len: usize, read: &dyn Fn(u64, &mut [u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut page = [0u8; 4096];
    while out.len() < len {
        let at = va.wrapping_add(out.len() as u64);
        let n = (4096 - (at & 4095) as usize).min(len - out.len());
        if !read(at, &mut page[..n]) {
            break;
        }
        out.extend_from_slice(&page[..n]);
    }
    out
}

/// A byte stream over kernel memory, read a page at a time.
struct Chunks<'a> {
    next: u64,
    buf: Vec<u8>,
    at: usize,
    read: &'a dyn Fn(u64, &mut [u8]) -> bool,
}

impl<'a> Chunks<'a> {
    fn new(va: u64, read: &'a dyn Fn(u64, &mut [u8]) -> bool) -> Self {
        Chunks {
            next: va,
            buf: Vec::new(),
            at: 0,
            read,
        }
    }

    fn byte(&mut self) -> Option<u8> {
        if self.at == self.buf.len() {
            let n = 4096 - (self.next & 4095) as usize;
            self.buf.resize(n, 0);
            if !(self.read)(self.next, &mut self.buf) {
                return None;
            }
            self.next = self.next.wrapping_add(n as u64);
            self.at = 0;
        }
        self.at += 1;
        Some(self.buf[self.at - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel image of three symbols in `memory` at 0x1000.., as
    /// scripts/kallsyms lays them out.
    #[test]
    fn decodes_the_table_as_linux_lays_it_out() {
        let mut memory = vec![0u8; 0x6000];
        // Tokens: 0 "T", 1 "start", 2 "_", 3 "D", 4 "banner", 5 "t", 6 "x".
        let tokens: [&[u8]; 7] = [b"T", b"start", b"_", b"D", b"banner", b"t", b"x"];
        let mut table = Vec::new();
        let mut index = vec![0u8; 512];
        for (i, t) in tokens.iter().enumerate() {
            index[2 * i..2 * i + 2].copy_from_slice(&(table.len() as u16).to_le_bytes());
            table.extend_from_slice(t);
            table.push(0);
        }
        // "T_start", "Dbanner", and a "big" name of 131 tokens (two length
        // bytes).
        let mut names = vec![3u8, 0, 2, 1, 2u8, 3, 4];
        names.extend([0x80 | (131 & 0x7f) as u8, (131 >> 7) as u8, 5]);
        names.extend([6u8; 130]);
        let offsets: [i32; 3] = [-1, -0x201, 0x40];
        memory[0x1000..0x1004].copy_from_slice(&3u32.to_le_bytes());
        memory[0x1008..0x1010].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        memory[0x2000..0x2200].copy_from_slice(&index);
        memory[0x3000..0x3000 + table.len()].copy_from_slice(&table);
        for (i, o) in offsets.iter().enumerate() {
            memory[0x4000 + 4 * i..0x4004 + 4 * i].copy_from_slice(&o.to_le_bytes());
        }
        memory[0x5000..0x5000 + names.len()].copy_from_slice(&names);
        let info = VmcoreInfo::parse(
            b"SYMBOL(kallsyms_num_syms)=1000\nSYMBOL(kallsyms_relative_base)=1008\n\
              SYMBOL(kallsyms_token_index)=2000\nSYMBOL(kallsyms_token_table)=3000\n\
              SYMBOL(kallsyms_offsets)=4000\nSYMBOL(kallsyms_names)=5000\n",
        );
        let read = |va: u64, buf: &mut [u8]| {
            let at = va as usize;
            match memory.get(at..at + buf.len()) {
                Some(bytes) => {
                    buf.copy_from_slice(bytes);
                    true
                }
                None => false,
            }
        };
        let listing = kallsyms(&info, Offsets::AbsolutePercpu, &read).expect("decodes");
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines[0], "ffffffff81000000 T _start");
        assert_eq!(lines[1], "ffffffff81000200 D banner");
        assert_eq!(lines[2], format!("0000000000000040 t {}", "x".repeat(130)));
        let relative = kallsyms(&info, Offsets::Relative, &read).expect("decodes");
        assert!(
            relative.starts_with("0000000080ffffff T _start\n"),
            "{relative}"
        );
        // A table that lies about its size, or that memory does not hold.
        let mut lying = memory.clone();
        lying[0x1000..0x1004].copy_from_slice(&u32::MAX.to_le_bytes());
        let read_lying = |va: u64, buf: &mut [u8]| {
            let at = va as usize;
            lying
                .get(at..at + buf.len())
                .map(|b| buf.copy_from_slice(b))
                .is_some()
        };
        assert!(kallsyms(&info, Offsets::AbsolutePercpu, &read_lying).is_err());
        let cut = |va: u64, buf: &mut [u8]| !(0x4000..0x5000).contains(&va) && read(va, buf);
        assert!(kallsyms(&info, Offsets::AbsolutePercpu, &cut).is_err());
        assert!(kallsyms(&VmcoreInfo::default(), Offsets::AbsolutePercpu, &read).is_err());
    }
}
