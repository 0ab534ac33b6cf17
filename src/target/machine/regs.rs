//! The x86-64 register file gdb sees, in QEMU's `i386-64bit.xml` order,
//! and its conversion to and from KVM's register structures.

use gdbstub::arch::{Arch, RegId, Registers};

pub use crate::target::machine::target_xml::{TARGET_XML, TARGET_XML_I386};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

/// `gdbstub` architecture: x86-64 with segments, segment bases, control
/// registers, EFER, x87 and SSE.
#[derive(Debug)]
pub enum X86_64Kvm {}

impl Arch for X86_64Kvm {
    type Usize = u64;
    type Registers = X86_64Regs;
    type BreakpointKind = usize;
    type RegId = X86_64RegId;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// One register of gdb's view, wherever it lives in [`X86_64Regs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `gpr[i]` (x86-64 order: rax rbx rcx rdx rsi rdi rbp rsp r8-r15).
    Gpr(usize),
    Rip,
    Eflags,
    /// cs ss ds es fs gs.
    Segment(usize),
    FsBase,
    GsBase,
    KGsBase,
    /// cr0 cr2 cr3 cr4 cr8.
    Cr(usize),
    Efer,
    St(usize),
    /// fctrl fstat ftag fiseg fioff foseg fooff fop.
    X87(usize),
    Xmm(usize),
    Mxcsr,
}

/// Which register file gdb sees: chosen when gdb attaches, from the mode
/// the vCPU is in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RegLayout {
    /// QEMU's `i386-64bit.xml`: 66 registers.
    #[default]
    X86_64,
    /// gdb's i386 core and SSE sets plus segment bases, control registers
    /// and EFER: 50 registers, for a vCPU in 32-bit protected mode.
    I386,
}

/// (field, size in bytes) of each register of a layout, in gdb's order.
const fn fields<const N: usize>(layout: RegLayout) -> [(Field, usize); N] {
    let mut out = [(Field::Mxcsr, 4); N];
    let mut n = 0;
    let wide = match layout {
        RegLayout::X86_64 => 8,
        RegLayout::I386 => 4,
    };
    let (gprs, xmms): (&[usize], usize) = match layout {
        RegLayout::X86_64 => (&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], 16),
        // eax ecx edx ebx esp ebp esi edi
        RegLayout::I386 => (&[0, 2, 3, 1, 7, 6, 4, 5], 8),
    };
    let mut i = 0;
    while i < gprs.len() {
        out[n] = (Field::Gpr(gprs[i]), wide);
        n += 1;
        i += 1;
    }
    out[n] = (Field::Rip, wide);
    out[n + 1] = (Field::Eflags, 4);
    n += 2;
    i = 0;
    while i < 6 {
        out[n] = (Field::Segment(i), 4);
        n += 1;
        i += 1;
    }
    out[n] = (Field::FsBase, wide);
    out[n + 1] = (Field::GsBase, wide);
    out[n + 2] = (Field::KGsBase, wide);
    n += 3;
    i = 0;
    while i < 5 {
        out[n] = (Field::Cr(i), wide);
        n += 1;
        i += 1;
    }
    out[n] = (Field::Efer, 8);
    n += 1;
    i = 0;
    while i < 8 {
        out[n] = (Field::St(i), 10);
        n += 1;
        i += 1;
    }
    i = 0;
    while i < 8 {
        out[n] = (Field::X87(i), 4);
        n += 1;
        i += 1;
    }
    i = 0;
    while i < xmms {
        out[n] = (Field::Xmm(i), 16);
        n += 1;
        i += 1;
    }
    out[n] = (Field::Mxcsr, 4);
    out
}

const FIELDS_X86_64: [(Field, usize); 66] = fields(RegLayout::X86_64);
const FIELDS_I386: [(Field, usize); 50] = fields(RegLayout::I386);

impl RegLayout {
    fn fields(self) -> &'static [(Field, usize)] {
        match self {
            RegLayout::X86_64 => &FIELDS_X86_64,
            RegLayout::I386 => &FIELDS_I386,
        }
    }

    /// Bytes of the whole register file (`g`).
    pub fn bytes(self) -> usize {
        self.fields().iter().map(|(_, size)| size).sum()
    }

    /// Where register `id` lies in the `g` bytes (`None`: no such
    /// register in this layout).
    pub fn byte_range(self, id: X86_64RegId) -> Option<std::ops::Range<usize>> {
        let fields = self.fields();
        let (_, size) = fields.get(id.0)?;
        let start: usize = fields[..id.0].iter().map(|(_, size)| size).sum();
        Some(start..start + size)
    }

    /// The target description gdb gets for this layout.
    pub fn target_xml(self) -> &'static str {
        match self {
            RegLayout::X86_64 => TARGET_XML,
            RegLayout::I386 => TARGET_XML_I386,
        }
    }
}

/// A register in gdb's numbering; its size depends on the layout of the
/// session, so gdbstub is not told one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86_64RegId(pub usize);

impl RegId for X86_64RegId {
    fn from_raw_id(id: usize) -> Option<(Self, Option<std::num::NonZeroUsize>)> {
        (id < FIELDS_X86_64.len()).then_some((X86_64RegId(id), None))
    }
}

/// The register file, with x86-64's widths (a 32-bit layout reads and
/// writes the low halves).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct X86_64Regs {
    /// How gdb sees these registers (`g` bytes).
    pub layout: RegLayout,
    /// rax rbx rcx rdx rsi rdi rbp rsp r8-r15 (gdb's x86-64 order).
    pub gpr: [u64; 16],
    /// rip.
    pub rip: u64,
    /// eflags.
    pub eflags: u32,
    /// cs ss ds es fs gs selectors.
    pub segments: [u32; 6],
    /// FS.base.
    pub fs_base: u64,
    /// GS.base.
    pub gs_base: u64,
    /// IA32_KERNEL_GS_BASE.
    pub k_gs_base: u64,
    /// cr0 cr2 cr3 cr4 cr8.
    pub cr: [u64; 5],
    /// EFER.
    pub efer: u64,
    /// st0-st7, 80-bit.
    pub st: [[u8; 10]; 8],
    /// fctrl fstat ftag fiseg fioff foseg fooff fop.
    pub x87_control: [u32; 8],
    /// xmm0-xmm15.
    pub xmm: [u128; 16],
    /// mxcsr.
    pub mxcsr: u32,
}

impl X86_64Regs {
    fn get(&self, field: Field) -> u128 {
        match field {
            Field::Gpr(i) => self.gpr[i].into(),
            Field::Rip => self.rip.into(),
            Field::Eflags => self.eflags.into(),
            Field::Segment(i) => self.segments[i].into(),
            Field::FsBase => self.fs_base.into(),
            Field::GsBase => self.gs_base.into(),
            Field::KGsBase => self.k_gs_base.into(),
            Field::Cr(i) => self.cr[i].into(),
            Field::Efer => self.efer.into(),
            Field::St(i) => {
                let mut bytes = [0u8; 16];
                bytes[..10].copy_from_slice(&self.st[i]);
                u128::from_le_bytes(bytes)
            }
            Field::X87(i) => self.x87_control[i].into(),
            Field::Xmm(i) => self.xmm[i],
            Field::Mxcsr => self.mxcsr.into(),
        }
    }

    /// Set `field` to `value` (truncated to the field's width).
    fn set(&mut self, field: Field, value: u128) {
        match field {
            Field::Gpr(i) => self.gpr[i] = value as u64,
            Field::Rip => self.rip = value as u64,
            Field::Eflags => self.eflags = value as u32,
            Field::Segment(i) => self.segments[i] = value as u32,
            Field::FsBase => self.fs_base = value as u64,
            Field::GsBase => self.gs_base = value as u64,
            Field::KGsBase => self.k_gs_base = value as u64,
            Field::Cr(i) => self.cr[i] = value as u64,
            Field::Efer => self.efer = value as u64,
            Field::St(i) => self.st[i].copy_from_slice(&value.to_le_bytes()[..10]),
            Field::X87(i) => self.x87_control[i] = value as u32,
            Field::Xmm(i) => self.xmm[i] = value,
            Field::Mxcsr => self.mxcsr = value as u32,
        }
    }

    /// The `g` bytes, in this file's layout.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.layout.bytes());
        for &(field, size) in self.layout.fields() {
            out.extend_from_slice(&self.get(field).to_le_bytes()[..size]);
        }
        out
    }

    /// Registers from `g` bytes of either layout (told apart by length);
    /// the registers a 32-bit layout lacks are zero.
    pub fn from_bytes(bytes: &[u8]) -> Option<X86_64Regs> {
        let layout = [RegLayout::X86_64, RegLayout::I386]
            .into_iter()
            .find(|l| l.bytes() == bytes.len())?;
        let mut regs = X86_64Regs {
            layout,
            ..X86_64Regs::default()
        };
        let mut at = 0;
        for &(field, size) in layout.fields() {
            let mut value = [0u8; 16];
            value[..size].copy_from_slice(&bytes[at..at + size]);
            regs.set(field, u128::from_le_bytes(value));
            at += size;
        }
        Some(regs)
    }

    /// This file with what `new` says in its layout: a 32-bit layout
    /// replaces the low halves only, and leaves what it lacks.
    pub fn merged(&self, new: &X86_64Regs) -> X86_64Regs {
        let mut out = self.clone();
        for &(field, size) in new.layout.fields() {
            let mask = if size >= 16 {
                u128::MAX
            } else {
                (1u128 << (8 * size)) - 1
            };
            out.set(field, (self.get(field) & !mask) | (new.get(field) & mask));
        }
        out
    }
}

impl Registers for X86_64Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        for b in self.to_bytes() {
            write_byte(Some(b));
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        *self = X86_64Regs::from_bytes(bytes).ok_or(())?;
        Ok(())
    }
}

/// The KVM state a register file is read from and written to.
#[derive(Debug, Default, Clone)]
pub struct KvmState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// x87 / SSE state.
    pub fpu: kvm_fpu,
    /// IA32_KERNEL_GS_BASE.
    pub k_gs_base: u64,
}

/// Which parts of a [`KvmState`] a write changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// `kvm_regs` changed.
    pub regs: bool,
    /// `kvm_sregs` changed.
    pub sregs: bool,
    /// `kvm_fpu` changed.
    pub fpu: bool,
    /// IA32_KERNEL_GS_BASE changed.
    pub k_gs_base: bool,
}

fn gprs_mut(r: &mut kvm_regs) -> [&mut u64; 16] {
    // gdb orders rbp before rsp; kvm_regs the reverse.
    [
        &mut r.rax, &mut r.rbx, &mut r.rcx, &mut r.rdx, &mut r.rsi, &mut r.rdi, &mut r.rbp,
        &mut r.rsp, &mut r.r8, &mut r.r9, &mut r.r10, &mut r.r11, &mut r.r12, &mut r.r13,
        &mut r.r14, &mut r.r15,
    ]
}

fn crs_mut(s: &mut kvm_sregs) -> [&mut u64; 5] {
    [&mut s.cr0, &mut s.cr2, &mut s.cr3, &mut s.cr4, &mut s.cr8]
}

/// Full tag word from the FXSAVE abridged tag byte (valid or empty).
fn full_tag(abridged: u8) -> u32 {
    (0..8).fold(0u32, |tag, i| {
        let empty = abridged & (1 << i) == 0;
        tag | if empty { 0b11 << (2 * i) } else { 0 }
    })
}

fn abridged_tag(full: u32) -> u8 {
    (0..8).fold(0u8, |tag, i| {
        let empty = (full >> (2 * i)) & 0b11 == 0b11;
        tag | if empty { 0 } else { 1 << i }
    })
}

impl KvmState {
    /// The registers gdb sees.
    pub fn to_gdb(&self) -> X86_64Regs {
        let mut regs = self.regs;
        let mut sregs = self.sregs;
        let gpr = gprs_mut(&mut regs).map(|r| *r);
        let cr = crs_mut(&mut sregs).map(|r| *r);
        let s = &self.sregs;
        let mut st = [[0u8; 10]; 8];
        for (dst, src) in st.iter_mut().zip(self.fpu.fpr.iter()) {
            dst.copy_from_slice(&src[..10]);
        }
        X86_64Regs {
            layout: RegLayout::X86_64,
            gpr,
            rip: self.regs.rip,
            eflags: self.regs.rflags as u32,
            segments: [s.cs, s.ss, s.ds, s.es, s.fs, s.gs].map(|seg| u32::from(seg.selector)),
            fs_base: s.fs.base,
            gs_base: s.gs.base,
            k_gs_base: self.k_gs_base,
            cr,
            efer: s.efer,
            st,
            x87_control: [
                u32::from(self.fpu.fcw),
                u32::from(self.fpu.fsw),
                full_tag(self.fpu.ftwx),
                0,
                self.fpu.last_ip as u32,
                0,
                self.fpu.last_dp as u32,
                u32::from(self.fpu.last_opcode),
            ],
            xmm: self.fpu.xmm.map(u128::from_le_bytes),
            mxcsr: self.fpu.mxcsr,
        }
    }

    /// Apply what differs between `new` and the current registers, leaving
    /// everything else (hidden segment state, upper RFLAGS bits…) alone.
    pub fn apply(&mut self, new: &X86_64Regs) -> Changed {
        let old = self.to_gdb();
        let mut changed = Changed::default();
        if new.gpr != old.gpr || new.rip != old.rip || new.eflags != old.eflags {
            for (dst, src) in gprs_mut(&mut self.regs).into_iter().zip(new.gpr) {
                *dst = src;
            }
            self.regs.rip = new.rip;
            self.regs.rflags = (self.regs.rflags & !0xffff_ffff) | u64::from(new.eflags);
            changed.regs = true;
        }
        if new.segments != old.segments
            || (new.fs_base, new.gs_base, new.cr, new.efer)
                != (old.fs_base, old.gs_base, old.cr, old.efer)
        {
            let s = &mut self.sregs;
            let segs = [
                &mut s.cs, &mut s.ss, &mut s.ds, &mut s.es, &mut s.fs, &mut s.gs,
            ];
            for (seg, sel) in segs.into_iter().zip(new.segments) {
                seg.selector = sel as u16;
            }
            s.fs.base = new.fs_base;
            s.gs.base = new.gs_base;
            for (dst, src) in crs_mut(s).into_iter().zip(new.cr) {
                *dst = src;
            }
            s.efer = new.efer;
            changed.sregs = true;
        }
        if (new.st, new.x87_control, new.xmm, new.mxcsr)
            != (old.st, old.x87_control, old.xmm, old.mxcsr)
        {
            let f = &mut self.fpu;
            for (dst, src) in f.fpr.iter_mut().zip(new.st.iter()) {
                dst[..10].copy_from_slice(src);
            }
            f.fcw = new.x87_control[0] as u16;
            f.fsw = new.x87_control[1] as u16;
            f.ftwx = abridged_tag(new.x87_control[2]);
            f.last_ip = u64::from(new.x87_control[4]);
            f.last_dp = u64::from(new.x87_control[6]);
            f.last_opcode = new.x87_control[7] as u16;
            f.xmm = new.xmm.map(u128::to_le_bytes);
            f.mxcsr = new.mxcsr;
            changed.fpu = true;
        }
        if new.k_gs_base != old.k_gs_base {
            self.k_gs_base = new.k_gs_base;
            changed.k_gs_base = true;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let mut regs = X86_64Regs::default();
        regs.gpr[6] = 0x1111; // rbp
        regs.gpr[7] = 0x2222; // rsp
        regs.cr[2] = 0x1000; // cr3
        regs.efer = 0xd01;
        regs.xmm[15] = u128::MAX - 1;
        regs.mxcsr = 0x1f80;
        let bytes = regs.to_bytes();
        let layout = RegLayout::X86_64;
        assert_eq!(bytes.len(), layout.bytes());
        assert_eq!(bytes.len(), 608);
        assert_eq!(X86_64Regs::from_bytes(&bytes), Some(regs.clone()));
        let range = |id| layout.byte_range(X86_64RegId(id)).unwrap();
        assert_eq!(&bytes[range(29)], &0x1000u64.to_le_bytes());
        assert_eq!(&bytes[range(32)], &0xd01u64.to_le_bytes());
        assert_eq!(range(65).end, layout.bytes());
        assert!(layout.byte_range(X86_64RegId(66)).is_none());
        assert!(X86_64Regs::from_bytes(&bytes[1..]).is_none());
    }

    /// The i386 file: gdb's order eax ecx edx ebx esp ebp esi edi, 32-bit
    /// eip, segment bases and control registers, 64-bit EFER, xmm0-7; a
    /// write through it changes the low halves only.
    #[test]
    fn the_32_bit_layout() {
        let mut regs = X86_64Regs {
            layout: RegLayout::I386,
            ..Default::default()
        };
        regs.gpr = [
            0xa, 0xb, 0xc, 0xd, 0x51, 0xd1, 0xb9, 0x59, 8, 9, 10, 11, 12, 13, 14, 15,
        ];
        regs.rip = 0xffff_ffff_c010_0000;
        regs.cr[2] = 0x10_3000;
        regs.efer = 0x1_0000_0d00;
        regs.xmm[7] = 7;
        regs.xmm[8] = 8;
        regs.mxcsr = 0x1f80;
        let bytes = regs.to_bytes();
        let layout = RegLayout::I386;
        assert_eq!(bytes.len(), 348);
        let word = |id: usize| {
            let r = layout.byte_range(X86_64RegId(id)).unwrap();
            let mut v = [0u8; 16];
            v[..r.len()].copy_from_slice(&bytes[r]);
            u128::from_le_bytes(v)
        };
        // eax ecx edx ebx esp ebp esi edi
        let gprs: Vec<u128> = (0..8).map(word).collect();
        assert_eq!(gprs, [0xa, 0xc, 0xd, 0xb, 0x59, 0xb9, 0x51, 0xd1]);
        assert_eq!(word(8), 0xc010_0000, "eip: the low half");
        assert_eq!(word(21), 0x10_3000, "cr3");
        assert_eq!(word(24), 0x1_0000_0d00, "efer: 64 bits");
        assert_eq!(word(48), 7, "xmm7");
        assert_eq!(word(49), 0x1f80, "mxcsr last");
        assert_eq!(layout.byte_range(X86_64RegId(49)).unwrap().end, 348);
        assert!(layout.byte_range(X86_64RegId(50)).is_none());
        let back = X86_64Regs::from_bytes(&bytes).unwrap();
        assert_eq!(back.layout, RegLayout::I386);
        assert_eq!(back.gpr[8], 0, "no r8 in i386");
        // Merged into the full file: low halves replaced, the rest kept.
        let mut full = X86_64Regs {
            rip: 0xdead_0000_0000_0000,
            ..Default::default()
        };
        full.gpr[8] = 0x88;
        full.xmm[8] = 0x1234;
        let merged = full.merged(&back);
        assert_eq!(merged.rip, 0xdead_0000_c010_0000);
        assert_eq!(merged.gpr[8], 0x88);
        assert_eq!(merged.xmm[8], 0x1234);
        assert_eq!(merged.gpr[1], 0xb);
        assert_eq!(merged.layout, RegLayout::X86_64);
    }

    /// Each description names as many registers as its file has, whose
    /// sizes add up to the `g` packet, in the same order.
    #[test]
    fn the_descriptions_match_the_files() {
        for layout in [RegLayout::X86_64, RegLayout::I386] {
            let xml = layout.target_xml();
            let sizes: Vec<usize> = xml
                .split("<reg ")
                .skip(1)
                .map(|r| {
                    let bits = r.split("bitsize=\"").nth(1).unwrap();
                    bits[..bits.find('"').unwrap()].parse::<usize>().unwrap() / 8
                })
                .collect();
            let expected: Vec<usize> = (0..sizes.len())
                .map(|id| layout.byte_range(X86_64RegId(id)).unwrap().len())
                .collect();
            assert_eq!(sizes, expected, "{layout:?}");
            assert_eq!(sizes.iter().sum::<usize>(), layout.bytes());
        }
        assert!(RegLayout::I386
            .target_xml()
            .contains("<architecture>i386</architecture>"));
        assert!(RegLayout::I386
            .target_xml()
            .contains("<reg name=\"eip\" bitsize=\"32\""));
    }

    #[test]
    fn a_write_changes_only_what_was_written() {
        let mut state = KvmState::default();
        state.regs.rsp = 0x7000;
        state.regs.rbp = 0x8000;
        state.regs.rflags = 0x1_0000_0002;
        state.sregs.cs.selector = 8;
        state.sregs.cs.l = 1;
        let mut gdb = state.to_gdb();
        assert_eq!((gdb.gpr[6], gdb.gpr[7]), (0x8000, 0x7000));
        gdb.gpr[7] = 0x7100;
        let changed = state.apply(&gdb);
        assert_eq!(
            changed,
            Changed {
                regs: true,
                ..Changed::default()
            }
        );
        assert_eq!((state.regs.rsp, state.regs.rbp), (0x7100, 0x8000));
        assert_eq!(state.regs.rflags, 0x1_0000_0002, "upper RFLAGS kept");
        gdb.cr[2] = 0x5000;
        let changed = state.apply(&gdb);
        assert_eq!(
            changed,
            Changed {
                sregs: true,
                ..Changed::default()
            }
        );
        assert_eq!(state.sregs.cs.l, 1, "hidden segment state kept");
        assert_eq!(state.sregs.cr3, 0x5000);
    }
}
