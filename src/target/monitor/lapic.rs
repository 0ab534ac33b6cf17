//! `info lapic`: a vCPU's local APIC as QEMU's monitor shows it, from
//! KVM's copy of the APIC register page (`KVM_GET_LAPIC`, in-kernel
//! irqchip only).

use std::fmt::Write;

/// Usage line of `info lapic` (shown with QEMU's other commands).
pub(crate) const USAGE: &str = "\
info lapic [CPU]    the local APIC of vCPU CPU (default: the one marked
    in info cpus): LVTs, timer, SPIV, ICR, ISR/IRR, priorities (KVM's
    in-kernel irqchip only)
";

/// One vCPU's local APIC as KVM keeps it.
#[derive(Clone)]
pub(crate) struct Lapic {
    /// The vCPU's index.
    pub cpu: usize,
    /// The 1 KiB register page of `KVM_GET_LAPIC` (xAPIC offsets).
    pub page: [u8; 1024],
    /// IA32_APIC_BASE.EXTD: the APIC is in x2APIC mode.
    pub x2apic: bool,
}

// Register offsets in the APIC page (Intel SDM vol. 3, table 11-1).
const TPR: usize = 0x80;
const APR: usize = 0x90;
const PPR: usize = 0xa0;
const LDR: usize = 0xd0;
const DFR: usize = 0xe0;
const SPIV: usize = 0xf0;
const ISR: usize = 0x100;
const TMR: usize = 0x180;
const IRR: usize = 0x200;
const ESR: usize = 0x280;
const ICR: usize = 0x300;
const ICR2: usize = 0x310;
const LVT_TIMER: usize = 0x320;
const LVT_THERMAL: usize = 0x330;
const LVT_PERF: usize = 0x340;
const LVT_LINT0: usize = 0x350;
const LVT_LINT1: usize = 0x360;
const LVT_ERROR: usize = 0x370;
const TIMER_INITIAL: usize = 0x380;
const TIMER_CURRENT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3e0;

/// Delivery mode 4 of an LVT entry: NMI (no vector).
const DELIVERY_NMI: u32 = 4;

impl Lapic {
    fn reg(&self, offset: usize) -> u32 {
        let bytes = &self.page[offset..offset + 4];
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    /// Bit `vector` of the 256-bit register at `base` (eight 32-bit
    /// words, 16 bytes apart).
    fn bit(&self, base: usize, vector: usize) -> bool {
        self.reg(base + vector / 32 * 0x10) >> (vector % 32) & 1 == 1
    }

    /// The vectors set in the 256-bit register at `base`, level-triggered
    /// ones (TMR) marked as QEMU marks them.
    fn vectors(&self, base: usize) -> String {
        let set: Vec<String> = (0..256)
            .filter(|&v| self.bit(base, v))
            .map(|v| {
                let level = if self.bit(TMR, v) { "(level)" } else { "" };
                format!("{v}{level} ")
            })
            .collect();
        if set.is_empty() {
            "(none)".into()
        } else {
            set.concat()
        }
    }
}

/// `set` if bit `bit` of `value` is set, else `clear`.
fn flag<'a>(value: u32, bit: u32, set: &'a str, clear: &'a str) -> &'a str {
    if value >> bit & 1 == 1 {
        set
    } else {
        clear
    }
}

/// One LVT line: `NAME\t 0xVALUE polarity trigger [masked] [pending]
/// [timer mode] delivery (vec N)`.
fn lvt_line(out: &mut String, name: &str, lvt: u32, timer: bool) {
    let delivery = ["Fixed", "...", "SMI", "...", "NMI", "INIT", "...", "ExtINT"];
    let mode = (lvt >> 8) & 7;
    let timer_mode = match (timer, lvt >> 17 & 1 == 1, lvt >> 18 & 1 == 1) {
        (false, ..) => "",
        (true, true, _) => "periodic",
        (true, false, true) => "tsc-deadline",
        (true, false, false) => "one-shot",
    };
    let _ = write!(
        out,
        "{name}\t 0x{lvt:08x} {} {:<5} {:<6} {:<7} {timer_mode:<12} {:<6}",
        flag(lvt, 13, "active-lo", "active-hi"),
        flag(lvt, 15, "level", "edge"),
        flag(lvt, 16, "masked", ""),
        flag(lvt, 12, "pending", ""),
        delivery[mode as usize],
    );
    if mode == DELIVERY_NMI {
        out.push('\n');
    } else {
        let _ = writeln!(out, " (vec {})", lvt & 0xff);
    }
}

/// `info lapic` as QEMU prints it (`x86_cpu_dump_local_apic_state`).
pub(crate) fn render(apic: &Lapic) -> String {
    let mut out = format!("dumping local APIC state for CPU {:<2}\n\n", apic.cpu);
    for (name, offset) in [
        ("LVT0", LVT_LINT0),
        ("LVT1", LVT_LINT1),
        ("LVTPC", LVT_PERF),
        ("LVTERR", LVT_ERROR),
        ("LVTTHMR", LVT_THERMAL),
        ("LVTT", LVT_TIMER),
    ] {
        lvt_line(&mut out, name, apic.reg(offset), offset == LVT_TIMER);
    }
    let dcr = apic.reg(TIMER_DIVIDE) & 0xf;
    let code = (dcr & 8) >> 1 | dcr & 3;
    let divide = if code == 7 { 1 } else { 2 << code };
    let _ = writeln!(
        out,
        "Timer\t DCR=0x{dcr:x} (divide by {divide}) initial_count = {} current_count = {}",
        apic.reg(TIMER_INITIAL),
        apic.reg(TIMER_CURRENT)
    );
    let spiv = apic.reg(SPIV);
    let _ = writeln!(
        out,
        "SPIV\t 0x{spiv:08x} APIC {}, focus={}, spurious vec {}",
        flag(spiv, 8, "enabled", "disabled"),
        flag(spiv, 9, "on", "off"),
        spiv & 0xff
    );
    icr_lines(&mut out, apic);
    let _ = writeln!(out, "ESR\t 0x{:08x}", apic.reg(ESR));
    let _ = writeln!(out, "ISR\t {}", apic.vectors(ISR));
    let _ = writeln!(out, "IRR\t {}", apic.vectors(IRR));
    // x2APIC has no DFR (always cluster) and a 32-bit LDR.
    let (dfr, ldr) = if apic.x2apic {
        (0, apic.reg(LDR))
    } else {
        (apic.reg(DFR) >> 28, apic.reg(LDR) >> 24)
    };
    let _ = write!(
        out,
        "\nAPR 0x{:02x} TPR 0x{:02x} DFR 0x{dfr:02x} LDR 0x{ldr:02x}",
        apic.reg(APR) & 0xff,
        apic.reg(TPR) & 0xff
    );
    if apic.x2apic {
        let _ = write!(out, "(cluster {}: id {:#x})", ldr >> 16, ldr & 0xffff);
    } else if dfr == 0 {
        let _ = write!(out, "(cluster {}: id {})", ldr >> 4, ldr & 0xf);
    }
    let _ = writeln!(out, " PPR 0x{:02x}", apic.reg(PPR) & 0xff);
    out
}

/// The ICR and ICR2 lines: the last IPI sent and where it went.
fn icr_lines(out: &mut String, apic: &Lapic) {
    let (icr, icr2) = (apic.reg(ICR), apic.reg(ICR2));
    let shorthand = (icr >> 18) & 3;
    let logical = icr >> 11 & 1 == 1;
    let _ = writeln!(
        out,
        "ICR\t 0x{icr:08x} {} {} {} {}",
        if logical { "logical" } else { "physical" },
        flag(icr, 15, "level", "edge"),
        flag(icr, 14, "assert", "de-assert"),
        ["no-shorthand", "self", "all-self", "all"][shorthand as usize]
    );
    let _ = write!(out, "ICR2\t 0x{icr2:08x}");
    if shorthand != 0 {
        out.push('\n');
        return;
    }
    let (id, kind) = if apic.x2apic {
        (icr2, "X2APIC ID")
    } else {
        (icr2 >> 24, "APIC ID")
    };
    let dfr = apic.reg(DFR) >> 28;
    match (logical, apic.x2apic, dfr) {
        (false, _, _) => {
            let _ = writeln!(
                out,
                " cpu {} ({kind})",
                if apic.x2apic { id } else { id & 0xff }
            );
        }
        (true, false, 0xf) => {
            let _ = writeln!(out, " mask {id:08b} ({kind})");
        }
        (true, true, _) => {
            let _ = writeln!(
                out,
                " cluster {} mask {:016b} ({kind})",
                id >> 16,
                id & 0xffff
            );
        }
        (true, false, _) => {
            let _ = writeln!(out, " cluster {} mask {:04b} ({kind})", id >> 4, id & 0xf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apic(regs: &[(usize, u32)], x2apic: bool) -> Lapic {
        let mut page = [0u8; 1024];
        for &(offset, value) in regs {
            page[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        }
        Lapic {
            cpu: 1,
            page,
            x2apic,
        }
    }

    /// Two vCPUs' APICs as QEMU 7.2.22 printed them (`info lapic`, TCG,
    /// `-cpu max -smp 2`, Debian's 6.1 cloud kernel stopped after its
    /// panic): the same register values give the same text.
    #[test]
    fn renders_as_qemu_prints_it() {
        let masked = [
            (LVT_LINT0, 0x0001_0000),
            (LVT_LINT1, 0x0001_0000),
            (LVT_PERF, 0x0001_0000),
            (LVT_ERROR, 0x0001_0000),
            (LVT_THERMAL, 0x0001_0000),
            (LVT_TIMER, 0x0001_0000),
            (TIMER_DIVIDE, 0x3),
            (TIMER_CURRENT, 0),
            (SPIV, 0xff),
            (IRR + 7 * 0x10, 1 << (236 - 224)),
            (TPR, 0x10),
            (PPR, 0x10),
            (DFR, 0xffff_ffff),
        ];
        let cpu = |index: usize, regs: &[(usize, u32)]| {
            let mut lapic = apic(&[&masked[..], regs].concat(), false);
            lapic.cpu = index;
            render(&lapic)
        };
        let first = cpu(
            0,
            &[
                (TIMER_INITIAL, 238_726),
                (ICR, 0x000c_00f8),
                (ICR2, 0x0200_0000),
                (LDR, 0x0100_0000),
            ],
        );
        let second = cpu(
            1,
            &[
                (TIMER_INITIAL, 242_399),
                (ICR, 0x0000_08fb),
                (ICR2, 0x0100_0000),
                (LDR, 0x0200_0000),
                (APR, 0x01),
            ],
        );
        // Both CPUs' LVTs, all masked by the panic.
        let lvts = "\
             LVT0\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)\n\
             LVT1\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)\n\
             LVTPC\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)\n\
             LVTERR\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)\n\
             LVTTHMR\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)\n\
             LVTT\t 0x00010000 active-hi edge  masked         one-shot     Fixed  (vec 0)\n";
        assert_eq!(
            first,
            format!(
                "dumping local APIC state for CPU 0 \n\
             \n\
             {lvts}\
             Timer\t DCR=0x3 (divide by 16) initial_count = 238726 current_count = 0\n\
             SPIV\t 0x000000ff APIC disabled, focus=off, spurious vec 255\n\
             ICR\t 0x000c00f8 physical edge de-assert all\n\
             ICR2\t 0x02000000\n\
             ESR\t 0x00000000\n\
             ISR\t (none)\n\
             IRR\t 236 \n\
             \n\
             APR 0x00 TPR 0x10 DFR 0x0f LDR 0x01 PPR 0x10\n"
            )
        );
        assert_eq!(
            second,
            format!(
                "dumping local APIC state for CPU 1 \n\
             \n\
             {lvts}\
             Timer\t DCR=0x3 (divide by 16) initial_count = 242399 current_count = 0\n\
             SPIV\t 0x000000ff APIC disabled, focus=off, spurious vec 255\n\
             ICR\t 0x000008fb logical edge de-assert no-shorthand\n\
             ICR2\t 0x01000000 mask 00000001 (APIC ID)\n\
             ESR\t 0x00000000\n\
             ISR\t (none)\n\
             IRR\t 236 \n\
             \n\
             APR 0x01 TPR 0x10 DFR 0x0f LDR 0x02 PPR 0x10\n"
            )
        );
    }

    #[test]
    fn timer_modes_dividers_and_x2apic_destinations() {
        let x2 = apic(
            &[
                (LVT_TIMER, 0x0002_0020),
                (TIMER_DIVIDE, 0x3),
                (TIMER_INITIAL, 625_000),
                (TIMER_CURRENT, 1234),
                (ICR, 0x0000_0830),
                (ICR2, 0x0003_0004),
                (LDR, 0x0003_0004),
            ],
            true,
        );
        let text = render(&x2);
        assert!(text.contains("periodic     Fixed  (vec 32)\n"), "{text}");
        assert!(
            text.contains("DCR=0x3 (divide by 16) initial_count = 625000 current_count = 1234"),
            "{text}"
        );
        assert!(
            text.contains("ICR2\t 0x00030004 cluster 3 mask 0000000000000100 (X2APIC ID)"),
            "{text}"
        );
        assert!(
            text.contains("DFR 0x00 LDR 0x30004(cluster 3: id 0x4) PPR"),
            "{text}"
        );
        let modes = render(&apic(
            &[
                (LVT_LINT0, 0x0000_0700),
                (LVT_LINT1, 0x0000_0400),
                (LVT_TIMER, 0x0004_00ec),
                (ISR + 0x10, 1 << 1),
                (TMR + 0x10, 1 << 1),
            ],
            false,
        ));
        assert!(modes.contains(" ExtINT (vec 0)\n"), "{modes}");
        assert!(modes.contains(" NMI   \n"), "NMI has no vector: {modes}");
        assert!(
            modes.contains(" tsc-deadline Fixed  (vec 236)\n"),
            "{modes}"
        );
        assert!(modes.contains("ISR\t 33(level) \n"), "{modes}");
        for (dcr, divide) in [(0xb, 1), (0x0, 2), (0x8, 32), (0xa, 128)] {
            let text = render(&apic(&[(TIMER_DIVIDE, dcr)], false));
            assert!(
                text.contains(&format!("(divide by {divide})")),
                "{dcr:#x}: {text}"
            );
        }
    }
}
