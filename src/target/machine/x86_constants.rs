//! x86 constants the target shares: exception vectors, RFLAGS and DR7
//! bits, MSRs.

/// #DB, the debug exception.
pub(crate) const DB_VECTOR: u32 = 1;
/// #BP, the breakpoint exception (`int3`).
pub(crate) const BP_VECTOR: u32 = 3;
/// The `int3` opcode.
pub(crate) const INT3: u8 = 0xcc;
/// The `hlt` instruction.
pub(crate) const HLT: u8 = 0xf4;
/// RFLAGS.IF: maskable interrupts enabled.
pub(crate) const RFLAGS_IF: u64 = 1 << 9;
/// IA32_KERNEL_GS_BASE (the `swapgs` partner of GS.base).
pub(crate) const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_APIC_BASE: where the local APIC is and how it is addressed.
pub(crate) const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_APIC_BASE.EXTD: the local APIC is in x2APIC mode.
pub(crate) const APIC_BASE_EXTD: u64 = 1 << 10;
/// DR6 bits 0-3: which debug-register slot matched.
pub(crate) const DR6_HIT_MASK: u64 = 0xf;
/// DR7 bit 10 reads as one.
pub(crate) const DR7_FIXED_1: u64 = 1 << 10;

/// The linear address of the instruction at rip: CS.base counts outside
/// 64-bit code (and the address wraps at 4 GiB there).
pub(crate) fn code_address(rip: u64, cs: &kvm_bindings::kvm_segment) -> u64 {
    if cs.l != 0 {
        rip
    } else {
        cs.base.wrapping_add(rip) & 0xffff_ffff
    }
}

/// DR7's local-enable bit of `slot`.
pub(crate) fn dr7_enable(slot: usize) -> u64 {
    1 << (slot * 2)
}

/// DR7's R/W and LEN fields of `slot`: `rw` 0 = execute, 1 = write,
/// 3 = read or write; `len` the encoded length (0 = 1, 1 = 2, 3 = 4,
/// 2 = 8 bytes).
pub(crate) fn dr7_condition(slot: usize, rw: u64, len: u64) -> u64 {
    (rw | len << 2) << (16 + slot * 4)
}

/// A flat 4 GiB segment at ring 0, as `KVM_SET_SREGS` takes it: code
/// (execute/read) or data (read/write), 64-bit code if `long`.
pub fn flat_segment(selector: u16, code: bool, long: bool) -> kvm_bindings::kvm_segment {
    kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!(code && long)),
        s: 1,
        l: u8::from(code && long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}
