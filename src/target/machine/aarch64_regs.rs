//! The arm64 register file gdb sees of a dump's CPU: the AArch64 core
//! registers (x0-x30, sp, pc, cpsr) as gdbstub_arch's target description
//! names them, the FP/SIMD registers, and the pointer-authentication
//! masks (gdb's `org.gnu.gdb.aarch64.pauth` feature, with the upper
//! half's masks gdb 14 and later read) so gdb strips a return address's
//! PAC before it unwinds through it.

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use gdbstub::arch::{Arch, RegId, Registers};

/// gdbstub's `Arch` for an arm64 dump.
#[derive(Debug)]
pub(crate) enum Aarch64Dump {}

impl Arch for Aarch64Dump {
    type Usize = u64;
    type Registers = Aarch64Regs;
    type RegId = Aarch64RegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(target_xml())
    }
}

/// x0-x30, sp, pc, cpsr, v0-v31, fpsr, fpcr, then the PAC masks, in
/// gdb's numbering; the FP/SIMD ones unavailable to gdb
/// when the dump has none.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Aarch64Regs {
    pub x: [u64; 31],
    pub sp: u64,
    pub pc: u64,
    pub cpsr: u32,
    /// v0-v31, FPSR, FPCR.
    pub fp: Option<([u128; 32], u32, u32)>,
    /// The masks of the PAC bits in data and code addresses, of the
    /// lower half and of the upper half (the kernel's).
    pub pauth: [u64; 4],
}

/// Bytes of the whole register file.
const FILE_BYTES: usize = 31 * 8 + 8 + 8 + 4 + 32 * 16 + 4 + 4 + 4 * 8;
/// Where v0 starts in it.
const V0_AT: usize = 31 * 8 + 8 + 8 + 4;

impl Registers for Aarch64Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.pc
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        let mut bytes = |value: &[u8], known: bool| {
            for &b in value {
                write_byte(known.then_some(b));
            }
        };
        for x in &self.x {
            bytes(&x.to_le_bytes(), true);
        }
        bytes(&self.sp.to_le_bytes(), true);
        bytes(&self.pc.to_le_bytes(), true);
        bytes(&self.cpsr.to_le_bytes(), true);
        let (v, fpsr, fpcr) = self.fp.unwrap_or_default();
        for v in &v {
            bytes(&v.to_le_bytes(), self.fp.is_some());
        }
        bytes(&fpsr.to_le_bytes(), self.fp.is_some());
        bytes(&fpcr.to_le_bytes(), self.fp.is_some());
        for mask in &self.pauth {
            bytes(&mask.to_le_bytes(), true);
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() != FILE_BYTES {
            return Err(());
        }
        let at = |offset: usize, n: usize| &bytes[offset..offset + n];
        let word = |offset: usize| u64::from_le_bytes(at(offset, 8).try_into().unwrap_or_default());
        let half = |offset: usize| u32::from_le_bytes(at(offset, 4).try_into().unwrap_or_default());
        for (i, x) in self.x.iter_mut().enumerate() {
            *x = word(i * 8);
        }
        self.sp = word(31 * 8);
        self.pc = word(32 * 8);
        self.cpsr = half(33 * 8);
        let mut v = [0u128; 32];
        for (i, v) in v.iter_mut().enumerate() {
            *v = u128::from_le_bytes(at(V0_AT + i * 16, 16).try_into().unwrap_or_default());
        }
        let fp_end = V0_AT + 32 * 16;
        self.fp = Some((v, half(fp_end), half(fp_end + 4)));
        for (i, mask) in self.pauth.iter_mut().enumerate() {
            *mask = word(fp_end + 8 + i * 8);
        }
        Ok(())
    }
}

/// A register by gdb's number: x0-x30 are 0-30, sp 31, pc 32, cpsr 33,
/// v0-v31 34-65, fpsr 66, fpcr 67, pauth_dmask 68, pauth_cmask 69,
/// pauth_dmask_high 70, pauth_cmask_high 71.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Aarch64RegId(pub usize);

impl RegId for Aarch64RegId {
    fn from_raw_id(id: usize) -> Option<(Self, Option<NonZeroUsize>)> {
        let size = match id {
            0..=32 | 68..=71 => 8,
            33 | 66 | 67 => 4,
            34..=65 => 16,
            _ => return None,
        };
        Some((Aarch64RegId(id), NonZeroUsize::new(size)))
    }
}

/// gdbstub_arch's AArch64 core and FPU features and gdb's pauth feature
/// (gdb 13 needs the FPU feature beside pauth: its first pseudo register
/// is q0).
pub(crate) fn target_xml() -> &'static str {
    static XML: OnceLock<String> = OnceLock::new();
    XML.get_or_init(|| {
        let full = <gdbstub_arch::aarch64::AArch64 as Arch>::target_description_xml().unwrap_or("");
        let feature = |name: &str| {
            let at = full.find(&format!("<feature name=\"{name}\""))?;
            let end = full[at..].find("</feature>")? + at + "</feature>".len();
            Some(&full[at..end])
        };
        format!(
            "<?xml version=\"1.0\"?><!DOCTYPE target SYSTEM \"gdb-target.dtd\">\
             <target version=\"1.0\"><architecture>aarch64</architecture>{}{}\
             <feature name=\"org.gnu.gdb.aarch64.pauth\">\
             <reg name=\"pauth_dmask\" bitsize=\"64\"/>\
             <reg name=\"pauth_cmask\" bitsize=\"64\"/>\
             <reg name=\"pauth_dmask_high\" bitsize=\"64\"/>\
             <reg name=\"pauth_cmask_high\" bitsize=\"64\"/>\
             </feature></target>",
            feature("org.gnu.gdb.aarch64.core").unwrap_or_default(),
            feature("org.gnu.gdb.aarch64.fpu").unwrap_or_default()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The description names 72 registers in the order the file is
    /// serialized, and a file reads back as written; FP/SIMD registers a
    /// dump lacks are unavailable.
    #[test]
    fn the_description_and_the_file_agree() {
        let xml = target_xml();
        assert_eq!(xml.matches("<reg ").count(), 72, "{xml}");
        let order = [
            "x30",
            "sp",
            "cpsr",
            "v0",
            "v31",
            "fpsr",
            "fpcr",
            "pauth_dmask",
            "pauth_cmask_high",
        ];
        let at: Vec<_> = order
            .iter()
            .map(|name| xml.find(&format!("name=\"{name}\"")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{xml}");
        let mut regs = Aarch64Regs::default();
        for (i, x) in regs.x.iter_mut().enumerate() {
            *x = 0x1111 * i as u64;
        }
        regs.sp = 0xffff_8000_0000_1000;
        regs.pc = 0xffff_8000_0000_2000;
        regs.cpsr = 0x6000_03c5;
        regs.pauth = [0x7f << 48, 0x7f << 48, 0xffff << 48, 0xffff << 48];
        let mut unknown = 0;
        regs.gdb_serialize(|b| unknown += usize::from(b.is_none()));
        assert_eq!(unknown, 32 * 16 + 8);
        let mut v = [0u128; 32];
        v[31] = u128::MAX - 5;
        regs.fp = Some((v, 0x1000_0000, 0x0300_0000));
        let mut bytes = Vec::new();
        regs.gdb_serialize(|b| bytes.push(b.unwrap()));
        assert_eq!(bytes.len(), FILE_BYTES);
        let mut back = Aarch64Regs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, regs);
        assert!(back.gdb_deserialize(&bytes[1..]).is_err());
    }
}
