//! Single steps that keep out of interrupt handlers where KVM cannot hold
//! interrupts back (no `KVM_GUESTDBG_BLOCKIRQ`, or the VMM chose so): a
//! step that entered an interrupt handler is not reported; the vCPU steps
//! on silently until the handler has returned to the instruction the step
//! began at, then steps that instruction. Long mode only (64-bit IDT and
//! interrupt frames).

use kvm_bindings::{kvm_regs, kvm_sregs};

use crate::arch::controls::EFER_LMA;
use crate::target::machine::memory::GuestRam;
use crate::target::machine::paging::{CpuLimits, Paging};
use crate::target::machine::x86_constants::RFLAGS_IF;

/// How single steps keep interrupts out (QEMU's NOIRQ, which gdb asks for
/// by default through `Qqemu.sstep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepIrqs {
    /// KVM holds interrupts back during the step
    /// (`KVM_GUESTDBG_BLOCKIRQ`): the default where the host has it.
    Block,
    /// KVM delivers them; a handler the step enters runs to its return
    /// without a stop, then the instruction is stepped (long mode): the
    /// default elsewhere.
    SkipHandlers,
}

/// The first vector of external interrupts (below: exceptions, which a
/// step shows as they are).
const FIRST_IRQ_VECTOR: u64 = 32;

/// The most silent steps spent in handlers for one step of gdb's; past it
/// the step stops where it is.
pub(crate) const MAX_HANDLER_STEPS: u32 = 1_000_000;

/// Where a step of gdb's began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    rip: u64,
    rsp: u64,
    cs: u16,
}

impl Origin {
    /// The origin of a step from these registers (long mode only).
    pub(crate) fn of(regs: &kvm_regs, sregs: &kvm_sregs) -> Option<Origin> {
        (sregs.efer & EFER_LMA != 0).then_some(Origin {
            rip: regs.rip,
            rsp: regs.rsp,
            cs: sregs.cs.selector,
        })
    }

    /// Whether the vCPU (now at `regs`) is back where the step began.
    pub(crate) fn returned_to(&self, regs: &kvm_regs) -> bool {
        regs.rip == self.rip && regs.rsp == self.rsp
    }

    /// Whether the step from here delivered an external interrupt. The
    /// vCPU (now at `regs`) is at most one instruction into the handler of
    /// a vector ≥ 32 of the IDT (KVM may stop before or after the
    /// handler's first instruction), and the interrupt frame the CPU pushed
    /// on this stack (16-byte aligned below the origin's rsp, as for every
    /// same-privilege delivery without an IST) returns to this very
    /// instruction, with interrupts enabled, on this very stack.
    pub(crate) fn entered_interrupt(
        &self,
        (regs, sregs): (&kvm_regs, &kvm_sregs),
        memory: &GuestRam,
        limits: &CpuLimits,
    ) -> bool {
        let paging = Paging::of(sregs, limits);
        let read = |va: u64| {
            let (gpa, _) = paging.translate(memory, va).ok()?;
            memory.read_u64(gpa).ok()
        };
        let frame = (self.rsp & !0xf).wrapping_sub(40);
        let pushed: Option<Vec<u64>> = (0..4).map(|i| read(frame.wrapping_add(i * 8))).collect();
        let Some([ret_rip, ret_cs, ret_flags, ret_rsp]) =
            pushed.as_deref().and_then(|p| <[u64; 4]>::try_from(p).ok())
        else {
            return false;
        };
        if ret_rip != self.rip
            || ret_cs & 0xffff != u64::from(self.cs)
            || ret_flags & RFLAGS_IF == 0
            || ret_rsp != self.rsp
        {
            return false;
        }
        let gates = (u64::from(sregs.idt.limit) + 1) / 16;
        (FIRST_IRQ_VECTOR..gates.min(256)).any(|vector| {
            let gate = sregs.idt.base.wrapping_add(vector * 16);
            let (Some(low), Some(high)) = (read(gate), read(gate.wrapping_add(8))) else {
                return false;
            };
            let handler = gate_offset(low, high);
            let present = low & (1 << 47) != 0;
            present && (handler..handler.saturating_add(MAX_INSTRUCTION)).contains(&regs.rip)
        })
    }
}

/// The longest x86 instruction, in bytes.
const MAX_INSTRUCTION: u64 = 15;

/// The handler address of a 64-bit IDT gate.
fn gate_offset(low: u64, high: u64) -> u64 {
    (low & 0xffff) | (low >> 32 & 0xffff_0000) | (high & 0xffff_ffff) << 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_offsets_are_put_together_from_three_fields() {
        // offset 0xffffffff_80401234: low 16 bits in 0..16, the next 16 in
        // 48..64, the high 32 in the second quadword.
        let low = 0x1234 | 0x08 << 16 | 0x8e00_u64 << 32 | 0x8040_u64 << 48;
        assert_eq!(gate_offset(low, 0xffff_ffff), 0xffff_ffff_8040_1234);
    }
}
