//! x86-64 paging: 4-level (48-bit) and 5-level LA57 (57-bit).
//!
//! Entry layout: Intel SDM vol. 3A §4.5 ("4-level paging and 5-level
//! paging"), tables 4-15 to 4-20; shared with the other x86 modes in
//! `arch::x86`. What entries mean also depends on the CPU: see [`X86Cpu`].

use super::x86::{protection_key, Codec, LevelBits, X86Cpu, FLAGS};
use super::{Descriptor, PageTableFormat};
use super::{Flags, Perms, PhysAddr, Rights};

pub use super::x86::{
    PAGE_ACCESSED, PAGE_COW, PAGE_DIRTY, PAGE_GLOBAL, PAGE_NX, PAGE_PAT_4K, PAGE_PAT_LARGE,
    PAGE_PCD, PAGE_PRESENT, PAGE_PS, PAGE_PWT, PAGE_RW, PAGE_USER,
};

/// Physical-address bits of an entry (MAXPHYADDR = 52).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Smallest page.
pub const PAGE_SIZE: usize = 4096;
/// Bytes in one table.
pub const PAGE_TABLE_SIZE: usize = 4096;

const NAMES_4: [&str; 4] = ["PML4", "PDPT", "PD", "PT"];
const NAMES_5: [&str; 5] = ["PML5", "PML4", "PDPT", "PD", "PT"];

/// The x86-64 paging mode (IA-32e paging), chosen at run time: CR4.LA57
/// and the CPU it runs on ([`X86Cpu`]: MAXPHYADDR, 1 GiB pages, EFER.NXE,
/// CR0.WP, SMEP, SMAP, protection keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Amd64 {
    la57: bool,
    cpu: X86Cpu,
    /// The address bits of an entry (below MAXPHYADDR).
    addr: u64,
    /// Bits reserved in every entry (51:MAXPHYADDR, and 63 without NXE).
    reserved: u64,
}

impl Amd64 {
    /// 4-level paging, 48-bit virtual addresses, on [`X86Cpu::ASSUMED`].
    pub const FOUR_LEVEL: Amd64 = Amd64::with_cpu(false, X86Cpu::ASSUMED);
    /// 5-level paging (CR4.LA57), 57-bit virtual addresses, on
    /// [`X86Cpu::ASSUMED`].
    pub const FIVE_LEVEL: Amd64 = Amd64::with_cpu(true, X86Cpu::ASSUMED);

    /// The mode for a given CR4.LA57 on [`X86Cpu::ASSUMED`].
    pub const fn new(la57: bool) -> Amd64 {
        Amd64::with_cpu(la57, X86Cpu::ASSUMED)
    }

    /// The mode for a given CR4.LA57 on `cpu`.
    pub const fn with_cpu(la57: bool, cpu: X86Cpu) -> Amd64 {
        Amd64 {
            la57,
            cpu,
            addr: cpu.addr_mask(),
            reserved: cpu.above_phys() | cpu.xd_reserved(),
        }
    }

    /// The CPU this mode decodes entries for.
    pub const fn cpu(&self) -> &X86Cpu {
        &self.cpu
    }

    /// Whether this is 5-level paging.
    pub const fn la57(&self) -> bool {
        self.la57
    }

    #[inline]
    fn last_level(&self) -> usize {
        self.levels() - 1
    }

    /// The bits of our `level`: PT, PD and (with 1 GiB pages) PDPT
    /// entries may map pages; PS is reserved in PML4 and PML5 entries.
    #[inline]
    fn level_bits(&self, level: usize) -> LevelBits {
        let above_leaf = self.last_level().saturating_sub(level);
        let huge = above_leaf < 2 || (above_leaf == 2 && self.cpu.page_1g);
        let span = 1u64 << (12 + 9 * above_leaf.min(2));
        LevelBits::wide(self.addr, self.reserved, above_leaf == 0, huge, span)
    }
}

impl PageTableFormat for Amd64 {
    #[inline]
    fn levels(&self) -> usize {
        if self.la57 {
            5
        } else {
            4
        }
    }

    #[inline]
    fn va_bits(&self) -> u32 {
        if self.la57 {
            57
        } else {
            48
        }
    }

    #[inline]
    fn sign_extended(&self) -> bool {
        true
    }

    #[inline]
    fn shift(&self, level: usize) -> u32 {
        12 + 9 * (self.last_level() - level) as u32
    }

    fn index_bits(&self, _level: usize) -> u32 {
        9
    }

    #[inline]
    fn leaf_allowed(&self, level: usize) -> bool {
        let bits = self.level_bits(level);
        bits.last || bits.huge
    }

    fn phys_limit(&self) -> u64 {
        1 << self.cpu.phys_bits.min(52)
    }

    fn supported_flags(&self) -> Flags {
        FLAGS
    }

    fn representable(&self, perms: Perms) -> Perms {
        Codec { nx: self.cpu.nxe }.representable(perms)
    }

    #[inline]
    fn rights(&self, perms: Perms, leaf: u64) -> Rights {
        self.cpu.rights(perms, self.protection_key(leaf))
    }

    #[inline]
    fn protection_key(&self, leaf: u64) -> Option<u8> {
        self.cpu.pke.then(|| protection_key(leaf))
    }

    #[inline]
    fn leaf_address_mask(&self, level: usize) -> u64 {
        self.level_bits(level).leaf_address_mask()
    }

    #[inline]
    fn decode(&self, level: usize, raw: u64) -> Descriptor {
        Codec { nx: self.cpu.nxe }.decode(raw, &self.level_bits(level))
    }

    fn encode_leaf(&self, level: usize, addr: PhysAddr, perms: Perms, flags: Flags) -> u64 {
        Codec { nx: self.cpu.nxe }.encode(
            level == self.last_level(),
            addr,
            PTE_ADDR_MASK,
            perms,
            flags,
        )
    }

    fn encode_table(&self, _level: usize, addr: PhysAddr) -> u64 {
        PAGE_PRESENT | PAGE_RW | PAGE_USER | (addr & PTE_ADDR_MASK)
    }

    fn relax_table(&self, _level: usize, raw: u64) -> u64 {
        Codec { nx: self.cpu.nxe }.relax(raw)
    }

    fn restrict(&self, _level: usize, raw: u64, allowed: Perms) -> u64 {
        Codec { nx: self.cpu.nxe }.restrict(raw, allowed)
    }

    fn with_table_addr(&self, _level: usize, raw: u64, addr: PhysAddr) -> u64 {
        (raw & !PTE_ADDR_MASK) | (addr & PTE_ADDR_MASK)
    }

    fn level_name(&self, level: usize) -> &'static str {
        let names: &[&'static str] = if self.la57 { &NAMES_5 } else { &NAMES_4 };
        names.get(level).copied().unwrap_or("?")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_and_leaves() {
        let m = Amd64::FOUR_LEVEL;
        assert_eq!(
            [m.shift(0), m.shift(1), m.shift(2), m.shift(3)],
            [39, 30, 21, 12]
        );
        assert_eq!(
            [0, 1, 2, 3].map(|l| m.leaf_allowed(l)),
            [false, true, true, true]
        );
        let m5 = Amd64::FIVE_LEVEL;
        assert_eq!(m5.shift(0), 48);
        assert!(!m5.leaf_allowed(1));
        assert!(m5.leaf_allowed(2));
    }

    #[test]
    fn canonical_addresses() {
        let m = Amd64::FOUR_LEVEL;
        assert_eq!(m.linear(0x0000_7fff_ffff_f000), Some(0x7fff_ffff_f000));
        assert_eq!(m.linear(0xffff_8000_0000_0000), Some(0x8000_0000_0000));
        assert_eq!(m.linear(0x0000_8000_0000_0000), None);
        assert_eq!(m.canonical(0xffff_ffff_ffff), u64::MAX);
        assert_eq!(m.linear_range(0, u64::MAX), Some((0, (1 << 48) - 1)));
        assert_eq!(
            m.linear_range(0x1_0000_0000_0000, u64::MAX),
            Some((1 << 47, (1 << 48) - 1))
        );
        assert_eq!(m.linear_range(0x1_0000_0000_0000, 0x2_0000_0000_0000), None);
        assert_eq!(
            m.linear_range(0, 0x1_0000_0000_0000),
            Some((0, (1 << 47) - 1))
        );
        assert_eq!(
            Amd64::FIVE_LEVEL.linear(0xff00_0000_0000_0000),
            Some(1 << 56)
        );
    }

    /// SDM vol. 3A table 4-18 (PDE mapping a 2 MiB page): PS = bit 7,
    /// PAT = bit 12, address in 51:21, bits 20:13 reserved.
    #[test]
    fn huge_page_bits() {
        let m = Amd64::FOUR_LEVEL;
        let raw = 0x8000_0000_4020_1087u64; // P RW US PS, PAT, XD, PA 0x40200000
        match m.decode(2, raw) {
            Descriptor::Leaf { addr, perms, flags } => {
                assert_eq!(addr, 0x4020_0000);
                assert_eq!(perms, Perms::READ | Perms::WRITE | Perms::USER);
                assert_eq!(flags, Flags::PAT);
            }
            other => panic!("{other:?}"),
        }
        let rwu = Perms::READ | Perms::WRITE | Perms::USER;
        assert_eq!(m.encode_leaf(2, 0x4020_0000, rwu, Flags::PAT), raw);
        // Bit 13 set in a 2 MiB leaf is reserved.
        assert_eq!(
            m.decode(2, raw | 1 << 13),
            Descriptor::Reserved { bits: 1 << 13 }
        );
        // PS in a PML4E is reserved.
        assert_eq!(m.decode(0, 0x1083), Descriptor::Reserved { bits: 0x80 });
        // In a PTE bit 7 is PAT, not PS (table 4-20).
        match m.decode(3, 0x5083) {
            Descriptor::Leaf { addr, flags, .. } => {
                assert_eq!(addr, 0x5000);
                assert_eq!(flags, Flags::PAT);
            }
            other => panic!("{other:?}"),
        }
    }

    /// The vCPU's limits: without Page1GB a PDPTE with PS faults; address
    /// bits from MAXPHYADDR to 51 are reserved; without EFER.NXE so is bit
    /// 63 (SDM vol. 3A §4.5, tables 4-14 to 4-20).
    #[test]
    fn the_cpu_decides_what_is_reserved() {
        let cpu = X86Cpu {
            phys_bits: 48,
            page_1g: false,
            nxe: false,
            ..X86Cpu::ASSUMED
        };
        let m = Amd64::with_cpu(false, cpu);
        assert_eq!(
            m.decode(1, 0x4000_0083),
            Descriptor::Reserved { bits: 0x80 }
        );
        assert!(!m.leaf_allowed(1));
        assert!(matches!(
            Amd64::FOUR_LEVEL.decode(1, 0x4000_0083),
            Descriptor::Leaf { .. }
        ));
        assert_eq!(
            m.decode(3, 1 << 50 | 0x5003),
            Descriptor::Reserved { bits: 1 << 50 }
        );
        assert_eq!(
            m.decode(0, 1 << 63 | 0x5003),
            Descriptor::Reserved { bits: 1 << 63 }
        );
        // Bits 62:52 are ignored in IA-32e paging.
        assert!(matches!(
            m.decode(3, 0x7ff0_0000_0000_5003),
            Descriptor::Leaf { addr: 0x5000, .. }
        ));
        assert_eq!(m.phys_limit(), 1 << 48);
    }

    /// SDM vol. 3A §4.6: WP, SMEP, SMAP and protection keys.
    #[test]
    fn rights_at_each_privilege_level() {
        use super::super::Access;
        let user_rw = Perms::READ | Perms::WRITE | Perms::USER | Perms::EXEC | Perms::USER_EXEC;
        let kernel_ro = Perms::READ | Perms::EXEC | Perms::USER_EXEC;
        let plain = Amd64::FOUR_LEVEL;
        let r = plain.rights(user_rw, 0);
        assert_eq!((r.kernel, r.user), (Access::all(), Access::all()));
        assert_eq!(plain.rights(kernel_ro, 0).user, Access::empty());
        let no_wp = Amd64::with_cpu(
            false,
            X86Cpu {
                wp: false,
                ..X86Cpu::ASSUMED
            },
        );
        assert!(no_wp.rights(kernel_ro, 0).kernel.contains(Access::WRITE));
        let strict = Amd64::with_cpu(
            false,
            X86Cpu {
                smep: true,
                smap: true,
                ..X86Cpu::ASSUMED
            },
        );
        let r = strict.rights(user_rw, 0);
        assert_eq!((r.kernel, r.user), (Access::empty(), Access::all()));
        // Key 3 with access disabled (PKRU bit 6), key 5 write-disabled.
        let keys = Amd64::with_cpu(
            false,
            X86Cpu {
                pke: true,
                pkru: 1 << 6 | 1 << 11,
                ..X86Cpu::ASSUMED
            },
        );
        assert_eq!(keys.protection_key(3 << 59), Some(3));
        let r = keys.rights(user_rw, 3 << 59);
        assert_eq!((r.kernel, r.user), (Access::EXEC, Access::EXEC));
        let r = keys.rights(user_rw, 5 << 59);
        assert_eq!(
            (r.kernel, r.user),
            (Access::READ | Access::EXEC, Access::READ | Access::EXEC)
        );
        // Keys do not apply to supervisor pages.
        assert!(keys
            .rights(kernel_ro | Perms::WRITE, 3 << 59)
            .kernel
            .contains(Access::WRITE));
    }
}
