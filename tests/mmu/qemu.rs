//! What the QEMU oracle tests share: a RAM image, the check that QEMU is
//! here, and running it to the end.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Guest RAM the test writes: `bytes` from physical address `base`.
pub struct Image {
    pub base: u64,
    pub bytes: Vec<u8>,
}

impl Image {
    /// `len` bytes whose 8-byte words are `pattern(their address)`.
    pub fn filled(base: u64, len: u64, pattern: impl Fn(u64) -> u64) -> Image {
        let bytes = (0..len / 8)
            .flat_map(|i| pattern(base + i * 8).to_le_bytes())
            .collect();
        Image { base, bytes }
    }

    pub fn contains(&self, pa: u64, len: u64) -> bool {
        pa >= self.base && pa + len <= self.base + self.bytes.len() as u64
    }

    /// A little-endian value of `size` bytes at `pa`, if the image has it.
    pub fn read(&self, pa: u64, size: u64) -> Option<u64> {
        if !self.contains(pa, size) {
            return None;
        }
        let off = (pa - self.base) as usize;
        let mut word = [0u8; 8];
        word[..size as usize].copy_from_slice(&self.bytes[off..off + size as usize]);
        Some(u64::from_le_bytes(word))
    }

    pub fn write(&mut self, pa: u64, value: u64, size: u64) {
        let off = (pa - self.base) as usize;
        self.bytes[off..off + size as usize].copy_from_slice(&value.to_le_bytes()[..size as usize]);
    }
}

/// Whether `program` runs here; panics under VMEM_GDBSTUB_REQUIRE_KVM=1
/// (CI installs QEMU) when it does not.
pub fn available(program: &str) -> bool {
    let found = Command::new(program).arg("--version").output().is_ok();
    let required = std::env::var("VMEM_GDBSTUB_REQUIRE_KVM").is_ok_and(|v| v == "1");
    if !found && required {
        panic!("{program} is not installed, and VMEM_GDBSTUB_REQUIRE_KVM=1");
    }
    if !found {
        eprintln!("SKIPPED: {program} is not installed");
    }
    found
}

/// Run QEMU with `args` until it exits (at most 180 s); returns what the
/// guest wrote to `out`.
pub fn run(program: &str, args: &[String], out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("{program} did not finish the probe in 180 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read(out).unwrap_or_default()
}
