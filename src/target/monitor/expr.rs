//! Monitor arguments as QEMU's monitor takes them: `$reg` names of the
//! current vCPU (`$pc`, `$sp`, `$rax`, `$cr3` …), numbers (hex, decimal,
//! `4k` sizes), `+ - * & |`, unary `~` and `-`, and parentheses, with or
//! without spaces.

use super::errors::{usage, CmdError};
use crate::target::dump::cpu::Aarch64Cpu;
use crate::target::machine::regs::KvmState;

/// The current vCPU's registers, of whichever architecture.
pub(crate) enum RegisterFile {
    /// An x86 vCPU's.
    X86(KvmState),
    /// An arm64 CPU's general registers (a dump's).
    Aarch64(Aarch64Cpu),
}

impl RegisterFile {
    /// The value of register `name` (lower case).
    fn get(&self, name: &str) -> Option<u64> {
        match self {
            RegisterFile::X86(state) => register(state, name),
            RegisterFile::Aarch64(cpu) => arm_register(cpu, name),
        }
    }
}

/// The value of arm64 register `name` (`pc`, `sp`, `x0`-`x30`, `fp`,
/// `lr`, `cpsr`/`pstate`) of `cpu`.
fn arm_register(cpu: &Aarch64Cpu, name: &str) -> Option<u64> {
    match name {
        "pc" => Some(cpu.pc),
        "sp" => Some(cpu.sp),
        "fp" => Some(cpu.x[29]),
        "lr" => Some(cpu.x[30]),
        "cpsr" | "pstate" => Some(cpu.pstate),
        _ => {
            let index: usize = name.strip_prefix('x')?.parse().ok()?;
            cpu.x.get(index).copied()
        }
    }
}

/// The value of register `name` (`pc`, `rip`, `eax` …) in `state`.
fn register(state: &KvmState, name: &str) -> Option<u64> {
    let (r, s) = (&state.regs, &state.sregs);
    let value = match name {
        "rax" => r.rax,
        "rbx" => r.rbx,
        "rcx" => r.rcx,
        "rdx" => r.rdx,
        "rsi" => r.rsi,
        "rdi" => r.rdi,
        "rbp" | "fp" => r.rbp,
        "rsp" | "sp" => r.rsp,
        "r8" => r.r8,
        "r9" => r.r9,
        "r10" => r.r10,
        "r11" => r.r11,
        "r12" => r.r12,
        "r13" => r.r13,
        "r14" => r.r14,
        "r15" => r.r15,
        "rip" | "pc" => r.rip,
        "eflags" | "rflags" => r.rflags,
        "cs" => s.cs.selector.into(),
        "ds" => s.ds.selector.into(),
        "es" => s.es.selector.into(),
        "fs" => s.fs.selector.into(),
        "gs" => s.gs.selector.into(),
        "ss" => s.ss.selector.into(),
        "fs_base" => s.fs.base,
        "gs_base" => s.gs.base,
        "k_gs_base" => state.k_gs_base,
        "cr0" => s.cr0,
        "cr2" => s.cr2,
        "cr3" => s.cr3,
        "cr4" => s.cr4,
        "cr8" => s.cr8,
        "efer" => s.efer,
        // The 32-bit names: the low half.
        _ => {
            let wide = match name {
                "eip" => "rip",
                "esp" => "rsp",
                "ebp" => "rbp",
                "eax" | "ebx" | "ecx" | "edx" | "esi" | "edi" => &name[1..],
                _ => return None,
            };
            let wide = if wide.len() == 2 {
                format!("r{wide}")
            } else {
                wide.to_string()
            };
            return register(state, &wide).map(|v| v & 0xffff_ffff);
        }
    };
    Some(value)
}

/// `line` with every `$name` replaced by the register's value in hex;
/// `read` gives the registers (called only if a `$` appears).
pub(crate) fn substitute(
    line: &str,
    read: impl FnOnce() -> Option<RegisterFile>,
) -> Result<String, CmdError> {
    if !line.contains('$') {
        return Ok(line.to_string());
    }
    let state = read().ok_or("the vCPU's registers cannot be read")?;
    let mut out = String::with_capacity(line.len() + 16);
    let mut rest = line;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let name_len = rest[at + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - at - 1);
        let name = &rest[at + 1..at + 1 + name_len];
        let value = state
            .get(&name.to_ascii_lowercase())
            .ok_or_else(|| usage(format!("unknown register ${name}")))?;
        out.push_str(&format!("{value:#x}"));
        rest = &rest[at + 1 + name_len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Binary operators, and `~` (unary, like `-`).
const OPERATORS: &str = "+-*&|~";

/// Whether `word` can be part of an expression (not an option, not a set
/// of rights like `r--`).
fn in_expression(word: &str) -> bool {
    !word.starts_with("--")
        && word
            .chars()
            .any(|c| c.is_ascii_digit() || "()".contains(c) || OPERATORS.contains(c))
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()_".contains(c) || OPERATORS.contains(c))
        && (word.chars().any(|c| c.is_ascii_digit() || "()".contains(c))
            || word.chars().all(|c| OPERATORS.contains(c)))
}

/// The words of a command line, an expression written with spaces
/// (`$sp + 0x10`) joined into one word.
pub(crate) fn words(line: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut depth = 0i32;
    for word in line.split_whitespace() {
        let joins = out.last().is_some_and(|last| {
            in_expression(last)
                && in_expression(word)
                && (depth > 0
                    || last.ends_with(|c| OPERATORS.contains(c) || c == '(')
                    || word.starts_with(|c| OPERATORS.contains(c) || c == ')'))
        });
        depth += word.matches('(').count() as i32 - word.matches(')').count() as i32;
        match out.last_mut() {
            Some(last) if joins => last.push_str(word),
            _ => out.push(word.to_string()),
        }
    }
    out
}

/// Whether `word` is an expression rather than a plain number.
pub(crate) fn is_expression(word: &str) -> bool {
    word.contains(|c| OPERATORS.contains(c) || "()".contains(c))
}

/// Evaluate `+ - * & |` (C precedence) over numbers that `number` reads.
pub(crate) fn eval(
    text: &str,
    number: impl Fn(&str) -> Result<u64, CmdError>,
) -> Result<u64, CmdError> {
    let mut parser = Parser {
        text: text.as_bytes(),
        at: 0,
        number: &number,
    };
    let value = parser.or()?;
    if parser.at != parser.text.len() {
        return Err(usage(format!(
            "'{text}': unexpected '{}'",
            &text[parser.at..]
        )));
    }
    Ok(value)
}

struct Parser<'t, 'n> {
    text: &'t [u8],
    at: usize,
    number: &'n dyn Fn(&str) -> Result<u64, CmdError>,
}

impl Parser<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(c);
        self.at += usize::from(found);
        found
    }

    fn or(&mut self) -> Result<u64, CmdError> {
        let mut v = self.and()?;
        while self.eat(b'|') {
            v |= self.and()?;
        }
        Ok(v)
    }

    fn and(&mut self) -> Result<u64, CmdError> {
        let mut v = self.sum()?;
        while self.eat(b'&') {
            v &= self.sum()?;
        }
        Ok(v)
    }

    fn sum(&mut self) -> Result<u64, CmdError> {
        let mut v = self.product()?;
        loop {
            if self.eat(b'+') {
                v = v.wrapping_add(self.product()?);
            } else if self.eat(b'-') {
                v = v.wrapping_sub(self.product()?);
            } else {
                return Ok(v);
            }
        }
    }

    fn product(&mut self) -> Result<u64, CmdError> {
        let mut v = self.atom()?;
        while self.eat(b'*') {
            v = v.wrapping_mul(self.atom()?);
        }
        Ok(v)
    }

    fn atom(&mut self) -> Result<u64, CmdError> {
        if self.eat(b'~') {
            return Ok(!self.atom()?);
        }
        if self.eat(b'-') {
            return Ok(self.atom()?.wrapping_neg());
        }
        if self.eat(b'(') {
            let v = self.or()?;
            if !self.eat(b')') {
                return Err(usage("missing ')'"));
            }
            return Ok(v);
        }
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.at += 1;
        }
        if start == self.at {
            return Err(usage("expected a number"));
        }
        let word = std::str::from_utf8(&self.text[start..self.at]).unwrap_or_default();
        (self.number)(word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::monitor::args::number;

    fn state() -> KvmState {
        let mut s = KvmState::default();
        s.regs.rip = 0xffff_ffff_8040_0341;
        s.regs.rsp = 0xffff_ffff_8060_0000;
        s.regs.rax = 0x1_2345_6789;
        s.sregs.cr3 = 0x10_0000;
        s
    }

    #[test]
    fn registers_and_arithmetic() {
        let line = substitute("xp /2gx $sp + 0x10", || Some(RegisterFile::X86(state()))).unwrap();
        assert_eq!(line, "xp /2gx 0xffffffff80600000 + 0x10");
        assert_eq!(words(&line), ["xp", "/2gx", "0xffffffff80600000+0x10"]);
        assert_eq!(
            eval("0xffffffff80600000+0x10", number).unwrap(),
            0xffff_ffff_8060_0010
        );
        assert_eq!(eval("(1+2)*3", number).unwrap(), 9);
        assert_eq!(eval("0x1000|0x7&0x3", number).unwrap(), 0x1003);
        assert_eq!(eval("4k-1", number).unwrap(), 0xfff);
        assert_eq!(eval("0x1234&~0xff", number).unwrap(), 0x1200);
        assert_eq!(eval("-1", number).unwrap(), u64::MAX);
        let eax = substitute("$eax", || Some(RegisterFile::X86(state()))).unwrap();
        assert_eq!(eax, "0x23456789");
        assert_eq!(
            substitute("$PC", || Some(RegisterFile::X86(state()))).unwrap(),
            "0xffffffff80400341"
        );
        assert!(matches!(
            substitute("$nope", || Some(RegisterFile::X86(state()))),
            Err(CmdError::Usage(_))
        ));
        assert!(eval("(1+2", number).is_err());
        assert!(eval("1+", number).is_err());
    }

    /// arm64 names: pc, sp, x0-x30, fp, lr, cpsr.
    #[test]
    fn arm64_registers() {
        let mut cpu = Aarch64Cpu {
            pc: 0xffff_8000_0801_0000,
            sp: 0xffff_8000_0a00_3d40,
            pstate: 0x3c5,
            ..Default::default()
        };
        cpu.x[3] = 0x30;
        cpu.x[29] = 0x29;
        cpu.x[30] = 0x30_0000;
        let arm = || Some(RegisterFile::Aarch64(cpu));
        assert_eq!(substitute("$pc+4", arm).unwrap(), "0xffff800008010000+4");
        assert_eq!(
            substitute("$X3 $fp $lr $sp", arm).unwrap(),
            "0x30 0x29 0x300000 0xffff80000a003d40"
        );
        assert_eq!(substitute("$cpsr", arm).unwrap(), "0x3c5");
        assert!(substitute("$x31", arm).is_err());
        assert!(substitute("$rax", arm).is_err());
    }

    #[test]
    fn rights_and_options_stay_words() {
        assert_eq!(
            words("vmem protect 0x400000 4k r-- --space 0x1000"),
            ["vmem", "protect", "0x400000", "4k", "r--", "--space", "0x1000"]
        );
        assert_eq!(words("gva2gpa ( 0x10 + 8 ) * 2"), ["gva2gpa", "(0x10+8)*2"]);
    }
}
