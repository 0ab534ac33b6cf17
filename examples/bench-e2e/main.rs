//! End-to-end benchmark: the real gdb against the demo VM's stub, against
//! QEMU's gdbstub (the same guest ELF booted by `qemu-system-x86_64` via
//! PVH, under TCG; skipped if QEMU is not installed) and against a
//! do-nothing stub (gdb's own floor), in one run.
//!
//! ```sh
//! cargo build --release --examples && ./target/release/examples/bench-e2e
//! ```
//!
//! Prints: `dump binary memory` of 64 MiB, `stepi` rate over 10,000 steps,
//! Ctrl-C latency on a running guest, and CPU used by the stub process over
//! 10 s while stopped and while a halted guest waits in `continue`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DUMP_BYTES: u64 = 64 << 20;
/// 32 MiB into the direct map: clear of the page tables and the kernel.
const DUMP_BASE: u64 = 0xffff_8880_0200_0000;
const STEPS: u32 = 10_000;

struct Stub {
    child: Child,
    port: u16,
}

impl Stub {
    /// QEMU running the demo guest, its gdbstub on a free port.
    fn qemu() -> Option<Stub> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "128",
                "-display",
                "none",
                "-nodefaults",
                "-no-reboot",
            ])
            .args(["-kernel", env!("DEMO_GUEST_ELF")])
            .arg("-gdb")
            .arg(format!("tcp:127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // Wait until its gdbstub accepts connections.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                std::thread::sleep(Duration::from_millis(200));
                return Some(Stub { child, port });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn start(binary: &Path, args: &[&str]) -> Stub {
        let mut child = Command::new(binary)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        let stdout = child.stdout.take().expect("stdout");
        let port = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split("listening on ")
                    .nth(1)
                    .and_then(|a| a.rsplit(':').next()?.parse().ok())
            })
            .expect("the stub printed its port");
        Stub { child, port }
    }

    /// CPU seconds the stub process has used so far.
    fn cpu(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: u64 = fields
            .get(11..13)
            .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
        ticks as f64 / 100.0
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gdb(port: u16, commands: &[String]) -> Command {
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx", "-ex", "set pagination off", "-ex"])
        .arg(format!("target remote 127.0.0.1:{port}"));
    for c in commands {
        cmd.arg("-ex").arg(c);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Wall time of a gdb run minus the time of connecting and detaching.
fn timed(port: u16, commands: &[String]) -> Duration {
    let run = |cmds: &[String]| {
        let start = Instant::now();
        let out = gdb(port, cmds).output().expect("gdb");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        start.elapsed()
    };
    let base = (0..3).map(|_| run(&[])).min().unwrap_or_default();
    run(commands).saturating_sub(base)
}

fn ctrl_c_latency(port: u16) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let mut child = gdb(port, &["continue".into()]).spawn().expect("gdb");
        std::thread::sleep(Duration::from_millis(800));
        let start = Instant::now();
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let mut out = child.stdout.take().expect("stdout");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("SIGINT") {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        samples.push(start.elapsed());
        let _ = child.wait();
    }
    samples.sort();
    samples[samples.len() / 2]
}

/// CPU the stub uses in 10 s while gdb is attached and runs `command`.
fn cpu_over_10s(stub: &Stub, command: &str) -> f64 {
    let mut child = gdb(stub.port, &[command.into()]).spawn().expect("gdb");
    std::thread::sleep(Duration::from_millis(500));
    let before = stub.cpu();
    std::thread::sleep(Duration::from_secs(10));
    let used = stub.cpu() - before;
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.kill();
    let _ = child.wait();
    used / 10.0 * 100.0
}

fn halting_kernel(dir: &Path) -> PathBuf {
    let src = dir.join("halt.c");
    let elf = dir.join("halt.elf");
    std::fs::write(
        &src,
        "void _start(void) { for (;;) __asm__ volatile(\"hlt\"); }\n",
    )
    .expect("write");
    let status = Command::new("gcc")
        .args([
            "-O1",
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-fno-pic",
            "-Wl,-Ttext=0x600000",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&elf)
        .status()
        .expect("gcc");
    assert!(status.success());
    elf
}

struct Row {
    dump: Duration,
    steps_per_s: f64,
}

/// Fill the dumped range with random bytes (through gdb), so that neither
/// stub profits from run-length encoding zeros.
fn fill_random(port: u16, dir: &Path) {
    let file = dir.join("random.bin");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..DUMP_BYTES / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(&file, bytes).expect("write");
    let out = gdb(
        port,
        &[format!("restore {} binary {DUMP_BASE:#x}", file.display())],
    )
    .output()
    .expect("gdb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn measure(port: u16, thread: &str) -> Row {
    let dump = timed(
        port,
        &[format!(
            "dump binary memory /dev/null {DUMP_BASE:#x} {:#x}",
            DUMP_BASE + DUMP_BYTES
        )],
    );
    let steps = timed(
        port,
        &[format!("thread {thread}"), format!("stepi {STEPS}")],
    );
    Row {
        dump,
        steps_per_s: f64::from(STEPS) / steps.as_secs_f64(),
    }
}

fn main() {
    let exe = std::env::current_exe().expect("exe");
    let dir = exe.parent().expect("examples dir");
    let tmp = std::env::temp_dir().join(format!("bench-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let ours = Stub::start(
        &dir.join("demo-vm"),
        &["--listen", "127.0.0.1:0", "--mem", "128"],
    );
    let floor = Stub::start(&dir.join("null-stub"), &[]);
    fill_random(ours.port, &tmp);
    println!(
        "gdb 13 against the demo VM (ours), QEMU on the same guest and a do-nothing stub (floor): {} MiB dump of random bytes, {STEPS} steps",
        DUMP_BYTES >> 20
    );
    let qemu = Stub::qemu();
    if let Some(q) = &qemu {
        fill_random(q.port, &tmp);
    }
    let a = measure(ours.port, "1");
    let q = qemu.as_ref().map(|q| measure(q.port, "1"));
    let b = measure(floor.port, "1");
    let mb = |d: Duration| DUMP_BYTES as f64 / 1e6 / d.as_secs_f64();
    let cell = |v: Option<String>| v.unwrap_or_else(|| "n/a".into());
    println!(
        "{:<32} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "", "ours", "QEMU", "floor", "vs QEMU", "vs floor"
    );
    println!(
        "{:<32} {:>10.2} s {:>12} {:>10.2} s {:>10} {:>9.2}x",
        "dump binary memory 64 MiB",
        a.dump.as_secs_f64(),
        cell(q.as_ref().map(|q| format!("{:.2} s", q.dump.as_secs_f64()))),
        b.dump.as_secs_f64(),
        cell(
            q.as_ref()
                .map(|q| format!("{:.2}x", q.dump.as_secs_f64() / a.dump.as_secs_f64()))
        ),
        a.dump.as_secs_f64() / b.dump.as_secs_f64()
    );
    println!(
        "{:<32} {:>7.1} MB/s {:>12} {:>7.1} MB/s",
        "  throughput",
        mb(a.dump),
        cell(q.as_ref().map(|q| format!("{:.1} MB/s", mb(q.dump)))),
        mb(b.dump)
    );
    println!(
        "{:<32} {:>12.0} {:>12} {:>12.0} {:>10} {:>9.2}x",
        "stepi per second",
        a.steps_per_s,
        cell(q.as_ref().map(|q| format!("{:.0}", q.steps_per_s))),
        b.steps_per_s,
        cell(
            q.as_ref()
                .map(|q| format!("{:.2}x", a.steps_per_s / q.steps_per_s))
        ),
        a.steps_per_s / b.steps_per_s
    );
    if let Some(q) = &qemu {
        let ms = ctrl_c_latency(q.port).as_secs_f64() * 1e3;
        println!("{:<32} {:>12} {:>9.2} ms", "Ctrl-C to stop, QEMU", "", ms);
        println!(
            "{:<32} {:>12} {:>10.1} %",
            "CPU while stopped, QEMU",
            "",
            cpu_over_10s(q, "shell sleep 11")
        );
    }
    drop(qemu);
    let latency = ctrl_c_latency(ours.port);
    println!(
        "{:<34} {:>9.2} ms",
        "Ctrl-C to stop (median of 5)",
        latency.as_secs_f64() * 1e3
    );
    println!(
        "{:<34} {:>10.1} %",
        "CPU while stopped (10 s)",
        cpu_over_10s(&ours, "shell sleep 11")
    );
    drop(ours);
    let halted = Stub::start(
        &dir.join("demo-vm"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--vcpus",
            "1",
            "--kernel",
            halting_kernel(&tmp).to_str().unwrap_or(""),
        ],
    );
    println!(
        "{:<34} {:>10.1} %",
        "CPU, halted guest in continue",
        cpu_over_10s(&halted, "continue")
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
