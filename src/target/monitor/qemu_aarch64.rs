//! QEMU's `info registers` of an arm64 CPU (`aarch64_cpu_dump_state`), as
//! far as a dump's `NT_PRSTATUS` tells: pc, x0-x30 three to a line, sp,
//! and PSTATE with its flags, exception level and stack selection. The
//! SME, BTI and FP parts QEMU adds after them are not in the dump.

use std::fmt::Write;

use crate::target::dump::cpu::Aarch64Cpu;

/// PSTATE's N, Z, C and V flags.
const FLAGS: [(u64, char); 4] = [
    (1 << 31, 'N'),
    (1 << 30, 'Z'),
    (1 << 29, 'C'),
    (1 << 28, 'V'),
];

/// `cpu`'s registers as QEMU prints them.
pub(crate) fn info_registers(cpu: &Aarch64Cpu, out: &mut String) {
    let _ = write!(out, " PC={:016x} ", cpu.pc);
    for (i, x) in cpu.x.iter().enumerate() {
        let end = if (i + 2) % 3 == 0 { '\n' } else { ' ' };
        let _ = write!(out, "X{i:02}={x:016x}{end}");
    }
    let _ = writeln!(out, " SP={:016x}", cpu.sp);
    let p = cpu.pstate;
    let flags: String = FLAGS
        .iter()
        .map(|&(bit, c)| if p & bit != 0 { c } else { '-' })
        .collect();
    let stack = if p & 1 != 0 { 'h' } else { 't' };
    let _ = writeln!(
        out,
        "PSTATE={:08x} {flags} EL{}{stack}",
        p as u32,
        (p >> 2) & 3
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's layout: the first line starts with a space and pc, the
    /// registers go three to a line, sp follows x30 on its line.
    #[test]
    fn lines_are_qemus() {
        let mut cpu = Aarch64Cpu {
            pc: 0xffffb4b6973a8f5c,
            sp: 0xffffb4b698003d40,
            pstate: 0x404000c5,
            ..Default::default()
        };
        cpu.x[0] = 0x5344;
        cpu.x[30] = 0x709eb4b6973a8f74;
        let mut out = String::new();
        info_registers(&cpu, &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 12);
        assert_eq!(
            lines[0],
            " PC=ffffb4b6973a8f5c X00=0000000000005344 X01=0000000000000000"
        );
        assert_eq!(
            lines[10],
            "X29=0000000000000000 X30=709eb4b6973a8f74  SP=ffffb4b698003d40"
        );
        assert_eq!(lines[11], "PSTATE=404000c5 -Z-- EL1h");
    }
}
