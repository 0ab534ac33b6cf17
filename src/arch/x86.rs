//! The entry layout all x86 paging modes share (Intel SDM vol. 3A §4.3,
//! §4.4, §4.5): bit 0 P, 1 R/W, 2 U/S, 3 PWT, 4 PCD, 5 A, 6 D (leaves),
//! 7 PS in directories / PAT in a 4 KiB PTE, 8 G (leaves), 9-11 ignored
//! (bit 11: our copy-on-write marker), 12 PAT in huge pages, 62:59 the
//! protection key of an IA-32e leaf, 63 XD where the mode has it. The
//! modes differ in their address bits and reserved bits, and both depend
//! on the CPU ([`X86Cpu`]).

use super::Descriptor;
use super::{Access, Flags, Perms, PhysAddr, Rights};

/// Entry present.
pub const PAGE_PRESENT: u64 = 1 << 0;
/// Writes allowed.
pub const PAGE_RW: u64 = 1 << 1;
/// User-mode accesses allowed.
pub const PAGE_USER: u64 = 1 << 2;
/// Write-through caching.
pub const PAGE_PWT: u64 = 1 << 3;
/// Cache disable.
pub const PAGE_PCD: u64 = 1 << 4;
/// Accessed.
pub const PAGE_ACCESSED: u64 = 1 << 5;
/// Dirty (leaves only).
pub const PAGE_DIRTY: u64 = 1 << 6;
/// Page size: this directory entry maps a huge page. In a PTE this bit is PAT.
pub const PAGE_PS: u64 = 1 << 7;
/// PAT bit of a 4 KiB PTE.
pub const PAGE_PAT_4K: u64 = 1 << 7;
/// Global (leaves only).
pub const PAGE_GLOBAL: u64 = 1 << 8;
/// Software-available bit 11: copy-on-write marker.
pub const PAGE_COW: u64 = 1 << 11;
/// PAT bit of a huge page.
pub const PAGE_PAT_LARGE: u64 = 1 << 12;
/// Execute disable (PAE and IA-32e paging with EFER.NXE = 1).
pub const PAGE_NX: u64 = 1 << 63;
/// Where an IA-32e leaf keeps its protection key (CR4.PKE).
const KEY_SHIFT: u32 = 59;

/// What an x86 MMU depends on besides the tables: the CPU's features
/// (CPUID, as the hypervisor offers them to the guest) and the control
/// register bits that change what entries mean and what they allow.
///
/// A debugger builds one from the vCPU (`KVM_GET_CPUID2`, CR0, CR4, EFER,
/// PKRU); code without a CPU uses [`X86Cpu::ASSUMED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct X86Cpu {
    /// MAXPHYADDR, the physical-address width (CPUID 8000_0008h EAX\[7:0\]):
    /// entry address bits from here up to 51 are reserved.
    pub phys_bits: u8,
    /// 1 GiB pages (CPUID 8000_0001h EDX.Page1GB); without them PS in a
    /// PDPTE is reserved.
    pub page_1g: bool,
    /// PSE-36 (CPUID 1 EDX bit 17): 4 MiB pages of 32-bit paging reach
    /// physical addresses above 4 GiB through bits 20:13.
    pub pse36: bool,
    /// EFER.NXE: bit 63 of PAE and IA-32e entries is XD; otherwise it is
    /// reserved.
    pub nxe: bool,
    /// CR0.WP: supervisor writes honour R/W.
    pub wp: bool,
    /// CR4.SMEP: the supervisor cannot execute user pages.
    pub smep: bool,
    /// CR4.SMAP: the supervisor cannot read or write user pages (rights
    /// are reported for EFLAGS.AC = 0).
    pub smap: bool,
    /// CR4.PKE: user pages of IA-32e paging carry a protection key
    /// (bits 62:59) checked against [`X86Cpu::pkru`].
    pub pke: bool,
    /// The PKRU register: for key `k`, bit `2k` disables data access and
    /// bit `2k + 1` disables writes.
    pub pkru: u32,
}

impl X86Cpu {
    /// What the plain constants (`Amd64::FOUR_LEVEL`, `I686::PAE` …)
    /// assume: MAXPHYADDR 52, 1 GiB pages, PSE-36, EFER.NXE = 1,
    /// CR0.WP = 1, and no SMEP, SMAP or protection keys.
    pub const ASSUMED: X86Cpu = X86Cpu {
        phys_bits: 52,
        page_1g: true,
        pse36: true,
        nxe: true,
        wp: true,
        smep: false,
        smap: false,
        pke: false,
        pkru: 0,
    };

    /// The physical-address bits of an entry below bit 52.
    pub(crate) const fn addr_mask(&self) -> u64 {
        let bits = if self.phys_bits > 52 {
            52
        } else {
            self.phys_bits
        };
        ((1u64 << bits) - 1) & !0xfff
    }

    /// Bits 51:MAXPHYADDR, reserved in every PAE and IA-32e entry.
    pub(crate) const fn above_phys(&self) -> u64 {
        0x000f_ffff_ffff_f000 & !self.addr_mask()
    }

    /// Bit 63 when it is not XD.
    pub(crate) const fn xd_reserved(&self) -> u64 {
        if self.nxe {
            0
        } else {
            PAGE_NX
        }
    }

    /// The effective rights at CPL 0 and CPL 3 of a page whose entries
    /// grant `perms` and whose protection key (if checked) is `key`
    /// (SDM vol. 3A §4.6).
    #[inline]
    pub(crate) fn rights(&self, perms: Perms, key: Option<u8>) -> Rights {
        let user_page = perms.contains(Perms::USER);
        let writable = perms.contains(Perms::WRITE);
        let exec = perms.contains(Perms::EXEC);
        let (no_access, no_write) = match key {
            Some(k) if user_page => {
                let bits = self.pkru >> (2 * u32::from(k & 0xf));
                (bits & 1 != 0, bits & 2 != 0)
            }
            _ => (false, false),
        };
        let mut user = Access::empty();
        if user_page {
            user.set(Access::READ, !no_access);
            user.set(Access::WRITE, writable && !no_access && !no_write);
            user.set(Access::EXEC, exec);
        }
        let mut kernel = Access::empty();
        let smap_blocks = user_page && self.smap;
        kernel.set(Access::READ, !smap_blocks && !no_access);
        let wp_blocks = self.wp && (!writable || no_write);
        kernel.set(Access::WRITE, !(smap_blocks || no_access || wp_blocks));
        kernel.set(Access::EXEC, exec && !(user_page && self.smep));
        Rights { kernel, user }
    }
}

/// Where one x86 mode keeps things: the pieces of an entry that differ
/// between 32-bit, PAE and IA-32e paging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Codec {
    /// Bit 63 is XD.
    pub nx: bool,
}

impl Codec {
    /// The rights one entry grants (READ always; EXEC unless XD).
    #[inline(always)]
    pub(crate) fn perms(self, raw: u64) -> Perms {
        // R/W is bit 1 in both; U/S (bit 2) is USER (bit 3).
        let mut bits = Perms::READ.bits() | (raw & PAGE_RW) as u8 | ((raw & PAGE_USER) << 1) as u8;
        if !self.nx || raw & PAGE_NX == 0 {
            bits |= (Perms::EXEC | Perms::USER_EXEC).bits();
        }
        Perms::from_bits_truncate(bits)
    }

    /// The attributes of a leaf whose PAT bit is `pat`.
    #[inline(always)]
    pub(crate) fn flags(self, raw: u64, pat: u64) -> Flags {
        // PWT, PCD (bits 3, 4) are WRITE_THROUGH, CACHE_DISABLE (3, 4).
        let mut bits = (raw & (PAGE_PWT | PAGE_PCD)) as u16;
        for (bit, flag) in [
            (PAGE_GLOBAL, Flags::GLOBAL),
            (PAGE_ACCESSED, Flags::ACCESSED),
            (PAGE_DIRTY, Flags::DIRTY),
            (pat, Flags::PAT),
            (PAGE_COW, Flags::COW),
        ] {
            bits |= flag.bits() * u16::from(raw & bit != 0);
        }
        Flags::from_bits_truncate(bits)
    }

    /// Present bit, rights and attributes of a leaf (no address, no PS).
    pub(crate) fn leaf_bits(self, perms: Perms, flags: Flags, pat: u64) -> u64 {
        let mut raw = PAGE_PRESENT;
        for (on, bit) in [
            (perms.contains(Perms::WRITE), PAGE_RW),
            (perms.contains(Perms::USER), PAGE_USER),
            (self.nx && !perms.contains(Perms::EXEC), PAGE_NX),
            (flags.contains(Flags::GLOBAL), PAGE_GLOBAL),
            (flags.contains(Flags::ACCESSED), PAGE_ACCESSED),
            (flags.contains(Flags::DIRTY), PAGE_DIRTY),
            (flags.contains(Flags::WRITE_THROUGH), PAGE_PWT),
            (flags.contains(Flags::CACHE_DISABLE), PAGE_PCD),
            (flags.contains(Flags::PAT), pat),
            (flags.contains(Flags::COW), PAGE_COW),
        ] {
            if on {
                raw |= bit;
            }
        }
        raw
    }

    /// An entry that lets every right through.
    pub(crate) fn relax(self, raw: u64) -> u64 {
        let raw = raw | PAGE_RW | PAGE_USER;
        if self.nx {
            raw & !PAGE_NX
        } else {
            raw
        }
    }

    /// An entry that lets through no more than `allowed`.
    pub(crate) fn restrict(self, mut raw: u64, allowed: Perms) -> u64 {
        if !allowed.contains(Perms::WRITE) {
            raw &= !PAGE_RW;
        }
        if !allowed.contains(Perms::USER) {
            raw &= !PAGE_USER;
        }
        if self.nx && !allowed.contains(Perms::EXEC) {
            raw |= PAGE_NX;
        }
        raw
    }

    /// Decode a present or absent entry at one level of a mode.
    #[inline(always)]
    pub(crate) fn decode(self, raw: u64, level: &LevelBits) -> Descriptor {
        if raw & PAGE_PRESENT == 0 {
            return Descriptor::Invalid;
        }
        if !level.last && raw & PAGE_PS == 0 {
            let bits = raw & level.reserved_table;
            if bits != 0 {
                return Descriptor::Reserved { bits };
            }
            return Descriptor::Table {
                addr: raw & level.addr,
                allowed: self.perms(raw),
            };
        }
        let pat = if level.last {
            PAGE_PAT_4K
        } else {
            PAGE_PAT_LARGE
        };
        // A huge page where the level allows none: PS is the offending bit.
        let bits = if level.huge || level.last {
            raw & level.reserved_leaf
        } else {
            PAGE_PS
        };
        if bits != 0 {
            return Descriptor::Reserved { bits };
        }
        Descriptor::Leaf {
            addr: level.leaf_addr(raw),
            perms: self.perms(raw),
            flags: self.flags(raw, pat),
        }
    }

    /// Encode a leaf (a huge page unless `last`).
    pub(crate) fn encode(
        self,
        last: bool,
        addr: PhysAddr,
        addr_mask: u64,
        perms: Perms,
        flags: Flags,
    ) -> u64 {
        let pat = if last { PAGE_PAT_4K } else { PAGE_PAT_LARGE };
        let ps = if last { 0 } else { PAGE_PS };
        self.leaf_bits(perms, flags, pat) | ps | (addr & addr_mask)
    }

    /// Rights a mode can express: READ always, EXEC always without XD.
    pub(crate) fn representable(self, perms: Perms) -> Perms {
        let perms = perms | Perms::READ;
        if self.nx && !perms.contains(Perms::EXEC) {
            perms - Perms::USER_EXEC
        } else {
            perms | Perms::EXEC | Perms::USER_EXEC
        }
    }
}

/// The bits of one level of one mode, precomputed from the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LevelBits {
    /// The level maps 4 KiB pages (bit 7 is PAT there).
    pub last: bool,
    /// A directory entry here may map a huge page.
    pub huge: bool,
    /// Address bits of a table entry (and of a 4 KiB page).
    pub addr: u64,
    /// Address bits of a huge page (bits below its alignment cleared; for
    /// PSE-36 the high bits come from 20:13 and are placed by `leaf_addr`).
    pub huge_addr: u64,
    /// Reserved bits of a table entry.
    pub reserved_table: u64,
    /// Reserved bits of a leaf.
    pub reserved_leaf: u64,
    /// 32-bit paging with PSE-36: bits 20:13 carry PA bits 39:32.
    pub pse36: bool,
}

impl LevelBits {
    /// The level of a PAE or IA-32e mode whose entries hold `addr` and
    /// reserve `reserved` (see [`X86Cpu::addr_mask`] and
    /// [`X86Cpu::above_phys`]); `span` is the size an entry here maps.
    #[inline(always)]
    pub(crate) const fn wide(
        addr: u64,
        reserved: u64,
        last: bool,
        huge: bool,
        span: u64,
    ) -> LevelBits {
        // Address bits below a huge page's alignment are reserved, but
        // bit 12 of a huge page is PAT.
        let below = if last { 0 } else { (span - 1) & !0x1fff };
        LevelBits {
            last,
            huge,
            addr,
            huge_addr: addr & !(span - 1),
            reserved_table: reserved,
            reserved_leaf: reserved | below,
            pse36: false,
        }
    }

    /// The bits of a leaf here that hold its address (attributes are all
    /// the others), or 0 where they are not one field (PSE-36).
    #[inline]
    pub(crate) fn leaf_address_mask(&self) -> u64 {
        match (self.last, self.pse36) {
            (true, _) => self.addr,
            (false, false) => self.huge_addr,
            (false, true) => 0,
        }
    }

    /// The physical address of a leaf here.
    #[inline]
    pub(crate) fn leaf_addr(&self, raw: u64) -> PhysAddr {
        if self.last {
            raw & self.addr
        } else if self.pse36 {
            (raw & self.huge_addr) | ((raw & 0x001f_e000) << 19)
        } else {
            raw & self.huge_addr
        }
    }
}

/// The protection key of an IA-32e leaf.
pub(crate) fn protection_key(raw: u64) -> u8 {
    ((raw >> KEY_SHIFT) & 0xf) as u8
}

/// Attributes every x86 mode can express.
pub(crate) const FLAGS: Flags = Flags::GLOBAL
    .union(Flags::ACCESSED)
    .union(Flags::DIRTY)
    .union(Flags::WRITE_THROUGH)
    .union(Flags::CACHE_DISABLE)
    .union(Flags::PAT)
    .union(Flags::COW);
