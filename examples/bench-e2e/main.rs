//! End-to-end benchmark: the real gdb against the demo VM's stub, against
//! QEMU's gdbstub (the same guest ELF booted by `qemu-system-x86_64` via
//! PVH, under TCG and under KVM; skipped if QEMU is not installed) and
//! against two do-nothing stubs (gdb's own floor), in one run: a static
//! one (canned replies at one pc) and one replaying, per run, what ours
//! answered in that run (logged with gdb's `remotelogfile` at the start,
//! checked to make gdb print the same), so gdb does exactly the same work
//! against it as against ours. gdb loads the guest's ELF in every case.
//!
//! ```sh
//! cargo build --release --examples && ./target/release/examples/bench-e2e
//! # Firecracker + ours vs Firecracker's own stub vs the demo VM:
//! ./target/release/examples/bench-e2e --firecracker "$(integrations/firecracker/build.sh)"
//! # `monitor info mem` / `info tlb` on a 4 GiB Linux guest, ours vs QEMU's:
//! ./target/release/examples/bench-e2e --linux-scale
//! ```
//!
//! Prints: `dump binary memory` of 64 MiB (gdb 13's hex `m`, and gdb 18's
//! binary `x` when a gdb that speaks it is found: `VMEM_GDBSTUB_GDB_X` or
//! `/opt/gdb18/bin/gdb`), `stepi` rate over 10,000 steps with the guest's
//! symbols (gdb 13) and over 5,000 without (gdb 13 and 18: `set sysroot
//! /nonexistent`, so not even the exec-file a stub names is loaded),
//! conditional-breakpoint hits per second (`break bump if ++$n == 1000`
//! while the guest calls `bump` in a loop), `continue` → breakpoint round
//! trips per second (300 continues to `bump`), Ctrl-C latency on a running
//! guest, and CPU used by the stub process over 10 s while stopped and
//! while a halted guest waits in `continue`.

mod firecracker;
#[path = "../../tests/demo/kernel.rs"]
mod kernel;
mod linux_scale;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DUMP_BYTES: u64 = 64 << 20;
/// 32 MiB into the direct map: clear of the page tables and the kernel.
const DUMP_BASE: u64 = 0xffff_8880_0200_0000;
const STEPS: u32 = 10_000;
/// The longest one gdb run may take.
const GDB_LIMIT: Duration = Duration::from_secs(30);
/// Steps without symbols (each gdb).
const BARE_STEPS: u32 = 5_000;
/// Conditional-breakpoint hits per measurement.
const HITS: u32 = 1_000;
/// `continue`s to a breakpoint per measurement.
const CONTINUES: u32 = 300;
const GUEST_ELF: &str = env!("DEMO_GUEST_ELF");

struct Stub {
    child: Child,
    /// What gdb's `target remote` takes: HOST:PORT or a socket path.
    target: String,
}

impl Stub {
    /// QEMU running the demo guest under `accel` (tcg or kvm), its
    /// gdbstub on a free port, once the guest runs in its higher half.
    fn qemu(accel: &str) -> Option<Stub> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                accel,
                "-m",
                "128",
                "-display",
                "none",
                "-nodefaults",
                "-no-reboot",
            ])
            .args(["-kernel", GUEST_ELF])
            .arg("-gdb")
            .arg(format!("tcp:127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stub = Stub {
            child,
            target: format!("127.0.0.1:{port}"),
        };
        // Wait until the guest runs its kernel (firmware is slow under a
        // paravirtualised KVM: up to half a minute).
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            let out = gdb(GDB, &stub.target, &["print/x $pc".into()])
                .output()
                .ok()?;
            if String::from_utf8_lossy(&out.stdout).contains("0xffffffff804") {
                return Some(stub);
            }
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
        let mut lines = BufReader::new(stdout).lines();
        let port: u16 = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split("listening on ")
                    .nth(1)
                    .and_then(|a| a.rsplit(':').next()?.parse().ok())
            })
            .expect("the stub printed its port");
        // Keep reading what it prints (Firecracker logs there; a closed
        // pipe would SIGPIPE it).
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Stub {
            child,
            target: format!("127.0.0.1:{port}"),
        }
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

impl Stub {
    /// Freeze (SIGSTOP) or thaw (SIGCONT) the stub's process, so a stub
    /// that is not being measured takes no CPU from the one that is.
    fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// gdb 13, as installed.
const GDB: &str = "gdb";

/// A gdb that speaks the binary `x` read (gdb 18), if one is installed.
fn gdb_with_x() -> Option<String> {
    [
        std::env::var("VMEM_GDBSTUB_GDB_X").unwrap_or_default(),
        "/opt/gdb18/bin/gdb".to_string(),
    ]
    .into_iter()
    .find(|path| {
        Command::new(path)
            .args(["-batch", "-nx", "-ex", "show remote binary-upload-packet"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("'x' packet"))
    })
}

/// `gdb` with the guest's symbols, connected to `port`, running `commands`.
fn gdb(gdb: &str, target: &str, commands: &[String]) -> Command {
    gdb_with(gdb, target, commands, true)
}

/// `gdb` connected to `port`, running `commands`; with `symbols` false it
/// loads no symbols at all (not the exec-file a stub names either).
fn gdb_with(gdb: &str, target: &str, commands: &[String], symbols: bool) -> Command {
    gdb_logged(gdb, target, commands, symbols, None)
}

/// [`gdb_with`], logging the remote protocol to `log` if given.
fn gdb_logged(
    gdb: &str,
    target: &str,
    commands: &[String],
    symbols: bool,
    log: Option<&Path>,
) -> Command {
    let mut cmd = Command::new(gdb);
    cmd.args(["-batch", "-nx", "-ex", "set pagination off"]);
    if let Some(log) = log {
        cmd.arg("-ex")
            .arg(format!("set remotelogfile {}", log.display()));
    }
    cmd.arg("-ex");
    if symbols {
        cmd.arg(format!("file {GUEST_ELF}"));
    } else {
        cmd.arg("set sysroot /nonexistent");
    }
    cmd.arg("-ex").arg(format!("target remote {target}"));
    for c in commands {
        cmd.arg("-ex").arg(c);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Wall time of a gdb run (with symbols) minus the time of connecting
/// and detaching; `Duration::MAX` if gdb failed.
fn timed(gdb_path: &str, target: &str, commands: &[String]) -> Duration {
    costed(gdb_path, target, None, commands, true, "").map_or(Duration::MAX, |c| c.wall)
}

/// Kill process `pid` after [`GDB_LIMIT`] unless `done` is set by then.
fn watchdog(pid: u32, done: &std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let done = std::sync::Arc::clone(done);
    std::thread::spawn(move || {
        std::thread::sleep(GDB_LIMIT);
        if !done.load(std::sync::atomic::Ordering::Acquire) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
}

/// What a gdb run cost beyond connecting and detaching: wall time, gdb's
/// CPU time, and the stub's (user and system: KVM_RUN is system time).
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    wall: Duration,
    gdb: Duration,
    stub_user: Duration,
    stub_system: Duration,
}

impl Cost {
    fn minus(self, base: Cost) -> Cost {
        Cost {
            wall: self.wall.saturating_sub(base.wall),
            gdb: self.gdb.saturating_sub(base.gdb),
            stub_user: self.stub_user.saturating_sub(base.stub_user),
            stub_system: self.stub_system.saturating_sub(base.stub_system),
        }
    }
}

/// CPU time used so far by the children this process has waited for.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// User and system CPU time of process `pid` so far (clock ticks of 10 ms).
fn process_cpu(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rfind(')')
        .map_or("", |end| &stat[end + 2..])
        .split(' ')
        .collect();
    let ticks = |i: usize| {
        Duration::from_millis(
            10 * fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0),
        )
    };
    (ticks(11), ticks(12))
}

/// What a gdb run cost beyond connecting and detaching (the stub's CPU
/// if its `pid` is given); `None` if gdb failed, timed out or did not print
/// `expect` (a stub whose breakpoints do not work ends `continue` early,
/// or never).
fn costed(
    gdb_path: &str,
    target: &str,
    stub: Option<u32>,
    commands: &[String],
    symbols: bool,
    expect: &str,
) -> Option<Cost> {
    let run = |cmds: &[String], expect: &str| {
        let stub_before = stub.map(process_cpu).unwrap_or_default();
        let gdb_before = children_cpu();
        let start = Instant::now();
        let child = gdb_with(gdb_path, target, cmds, symbols)
            .spawn()
            .expect("gdb");
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        watchdog(child.id(), &done);
        let out = child.wait_with_output().expect("gdb");
        done.store(true, std::sync::atomic::Ordering::Release);
        let wall = start.elapsed();
        let printed = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !printed.contains(expect) {
            let said = String::from_utf8_lossy(&out.stderr);
            let last = |text: &str| text.lines().last().unwrap_or("").to_string();
            eprintln!(
                "gdb ({}) failed, timed out or did not print {expect:?}; last lines: {:?} / {:?}",
                out.status,
                last(&printed),
                last(&said)
            );
            return None;
        }
        let stub_after = stub.map(process_cpu).unwrap_or_default();
        Some(Cost {
            wall,
            gdb: children_cpu().saturating_sub(gdb_before),
            stub_user: stub_after.0.saturating_sub(stub_before.0),
            stub_system: stub_after.1.saturating_sub(stub_before.1),
        })
    };
    let base = (0..3)
        .filter_map(|_| run(&[], ""))
        .min_by_key(|c| c.wall)
        .unwrap_or_default();
    Some(run(commands, expect)?.minus(base))
}

fn ctrl_c_latency(target: &str) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let mut child = gdb(GDB, target, &["continue".into()]).spawn().expect("gdb");
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        watchdog(child.id(), &done);
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
        done.store(true, std::sync::atomic::Ordering::Release);
    }
    samples.sort();
    samples[samples.len() / 2]
}

/// CPU the stub uses in 10 s while gdb is attached and runs `command`.
fn cpu_over_10s(stub: &Stub, commands: &[&str]) -> f64 {
    let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    let mut child = gdb(GDB, &stub.target, &commands).spawn().expect("gdb");
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

/// The address of `name` in the ELF at `path`.
fn symbol(path: &str, name: &str) -> u64 {
    let data = std::fs::read(path).expect("guest ELF");
    let file = elf::ElfBytes::<elf::endian::AnyEndian>::minimal_parse(&data).expect("ELF");
    let (symbols, strings) = file.symbol_table().expect("symbol table").expect("symbols");
    symbols
        .iter()
        .find(|s| strings.get(s.st_name as usize).is_ok_and(|n| n == name))
        .map(|s| s.st_value)
        .expect("symbol")
}

/// One round's numbers for one stub.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// `None` for the replaying floor (a 64 MiB log would measure the log).
    dump: Option<Duration>,
    dump_x: Option<Duration>,
    steps_per_s: f64,
    bare_steps_per_s: f64,
    bare_steps_x_per_s: Option<f64>,
    hits_per_s: f64,
    continues_per_s: f64,
    watches_per_s: f64,
    /// Per step (symbols, gdb 13), in µs: gdb's CPU, the stub's user and
    /// system CPU.
    step_gdb_us: f64,
    step_stub_user_us: f64,
    step_stub_system_us: f64,
}

impl Sample {
    /// Some measurement failed (gdb timed out or printed the wrong count).
    fn failed(&self) -> bool {
        let rates = [
            self.steps_per_s,
            self.bare_steps_per_s,
            self.hits_per_s,
            self.continues_per_s,
            self.watches_per_s,
        ];
        rates
            .iter()
            .chain(&self.bare_steps_x_per_s)
            .any(|r| *r == 0.0)
    }
}

/// What one stub was measured at: the median of each number over the
/// rounds.
struct Row {
    name: &'static str,
    medians: Sample,
}

/// Rounds of measurements; the stubs take turns within each round, so a
/// drift of the machine's speed touches them all alike.
const ROUNDS: usize = 7;

fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

/// Fill the dumped range with random bytes (through gdb), so that no stub
/// profits from run-length encoding zeros.
fn fill_random(target: &str, file: &Path) {
    let out = gdb(
        GDB,
        target,
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

fn random_file(dir: &Path) -> PathBuf {
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
    file
}

/// The gdb sessions measured on every stub besides the dump, each
/// against a fresh connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Run {
    /// `stepi` with the guest's symbols, gdb 13 (with the CPU breakdown).
    Steps,
    /// `stepi` without symbols, gdb 13.
    Bare,
    /// `stepi` without symbols, gdb 18.
    BareX,
    /// A conditional breakpoint that matches at the last of its hits.
    Hits,
    /// `continue` to a breakpoint, over and over.
    Continues,
    /// `continue` to a write watchpoint's trigger, over and over.
    Watches,
}

impl Run {
    const ALL: [Run; 6] = [
        Run::Steps,
        Run::Bare,
        Run::BareX,
        Run::Hits,
        Run::Continues,
        Run::Watches,
    ];

    /// The gdb that runs it (`None`: gdb 18 is not installed).
    fn gdb(self, gdb_x: Option<&str>) -> Option<String> {
        match self {
            Run::BareX => gdb_x.map(str::to_string),
            _ => Some(GDB.to_string()),
        }
    }

    fn symbols(self) -> bool {
        !matches!(self, Run::Bare | Run::BareX)
    }

    /// Steps, hits or continues made.
    fn count(self) -> u32 {
        match self {
            Run::Steps => STEPS,
            Run::Bare | Run::BareX => BARE_STEPS,
            Run::Hits => HITS,
            Run::Continues | Run::Watches => CONTINUES,
        }
    }

    fn commands(self, scripts: &Path) -> Vec<String> {
        let spin = |on: u8| format!("set var bench_spin = {on}");
        match self {
            // Every step run starts where the guest enters level1 (a
            // hardware breakpoint: QEMU KVM's software ones fail here), so
            // each round and the replaying floor step the same code.
            Run::Steps | Run::Bare | Run::BareX => vec![
                "thread 1".into(),
                format!("hbreak *{:#x}", symbol(GUEST_ELF, "level1")),
                "continue".into(),
                "delete".into(),
                format!("stepi {}", self.count()),
            ],
            Run::Hits => vec![
                spin(1),
                "set $n = 0".into(),
                format!("break bump if ++$n == {HITS}"),
                "continue".into(),
                "print $n".into(),
                "delete".into(),
                spin(0),
            ],
            Run::Continues | Run::Watches => vec![
                spin(1),
                if self == Run::Watches {
                    "watch bumps".into()
                } else {
                    "break bump".into()
                },
                format!("source {}", scripts.join("continues.gdb").display()),
                "print $i".into(),
                "delete".into(),
                spin(0),
            ],
        }
    }

    /// What gdb must print (the breakpoint runs count their stops).
    fn expect(self) -> String {
        match self {
            Run::Hits | Run::Continues | Run::Watches => format!("= {}", self.count()),
            _ => String::new(),
        }
    }
}

/// What one column's measurements talk to.
enum Serving<'a> {
    /// A real stub: every run.
    Stub(&'a Stub),
    /// The static floor: every run but [`Run::Watches`] (its memory never
    /// changes, and gdb resumes from a write watchpoint whose value stayed
    /// the same without a stop).
    Canned(&'a Stub),
    /// The replaying floor: a do-nothing stub per run, each replaying
    /// what ours answered in that run (no dump).
    Replay(Vec<(Run, Stub)>),
}

impl Serving<'_> {
    fn stub(&self, run: Run) -> Option<&Stub> {
        match self {
            Serving::Stub(stub) => Some(stub),
            Serving::Canned(stub) => (run != Run::Watches).then_some(*stub),
            Serving::Replay(stubs) => stubs.iter().find(|(r, _)| *r == run).map(|(_, s)| s),
        }
    }

    fn freeze(&self, frozen: bool) {
        match self {
            Serving::Stub(stub) | Serving::Canned(stub) => stub.freeze(frozen),
            Serving::Replay(stubs) => stubs.iter().for_each(|(_, s)| s.freeze(frozen)),
        }
    }
}

/// One round for one column: dump with gdb 13 (and gdb 18), then every
/// [`Run`].
fn measure_once(serving: &Serving, gdb_x: Option<&str>, scripts: &Path) -> Sample {
    let dump = [format!(
        "dump binary memory /dev/null {DUMP_BASE:#x} {:#x}",
        DUMP_BASE + DUMP_BYTES
    )];
    let dumping = match serving {
        Serving::Stub(stub) | Serving::Canned(stub) => Some(stub.target.as_str()),
        Serving::Replay(_) => None,
    };
    // -1: not measured (no replay of this run), 0: failed.
    let rate = |run: Run, d: Duration| match d {
        _ if serving.stub(run).is_none() => -1.0,
        Duration::MAX => 0.0,
        d => f64::from(run.count()) / d.as_secs_f64(),
    };
    let measure = |run: Run| -> Option<Cost> {
        let gdb = run.gdb(gdb_x)?;
        let stub = serving.stub(run)?;
        let pid = (run == Run::Steps).then(|| stub.child.id());
        let commands = run.commands(scripts);
        costed(
            &gdb,
            &stub.target,
            pid,
            &commands,
            run.symbols(),
            &run.expect(),
        )
    };
    let wall = |run: Run| measure(run).map_or(Duration::MAX, |c| c.wall);
    let step_cost = measure(Run::Steps);
    let per_step = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(STEPS);
    Sample {
        dump: dumping.map(|target| timed(GDB, target, &dump)),
        dump_x: dumping.and_then(|target| gdb_x.map(|g| timed(g, target, &dump))),
        steps_per_s: rate(Run::Steps, step_cost.map_or(Duration::MAX, |c| c.wall)),
        bare_steps_per_s: rate(Run::Bare, wall(Run::Bare)),
        bare_steps_x_per_s: gdb_x.map(|_| rate(Run::BareX, wall(Run::BareX))),
        hits_per_s: rate(Run::Hits, wall(Run::Hits)),
        continues_per_s: rate(Run::Continues, wall(Run::Continues)),
        watches_per_s: rate(Run::Watches, wall(Run::Watches)),
        step_gdb_us: step_cost.map_or(0.0, |c| per_step(c.gdb)),
        step_stub_user_us: step_cost.map_or(0.0, |c| per_step(c.stub_user)),
        step_stub_system_us: step_cost.map_or(0.0, |c| per_step(c.stub_system)),
    }
}

/// Log `run` against ours (`serving`) with gdb's `remotelogfile`, then
/// start a do-nothing stub replaying that log and check that gdb, run
/// the same way against it, prints exactly what it printed against ours
/// (same stops, same pcs, same symbols).
fn record_and_replay(
    run: Run,
    ours: &Serving,
    gdb_x: Option<&str>,
    scripts: &Path,
    null_stub: &Path,
) -> Option<(Run, Stub)> {
    let gdb = run.gdb(gdb_x)?;
    let stub = ours.stub(run)?;
    let log = scripts.join(format!("{run:?}.log"));
    let commands = run.commands(scripts);
    let output = |target: &str, log: Option<&Path>| {
        gdb_logged(&gdb, target, &commands, run.symbols(), log)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let recorded = output(&stub.target, Some(&log));
    let replay = Stub::start(null_stub, &["--replay", &log.display().to_string()]);
    let replayed = output(&replay.target, None);
    if replayed != recorded || !recorded.contains(&run.expect()) {
        println!("  {run:?}: the replay differs from ours' session; no replay floor for it");
        return None;
    }
    Some((run, replay))
}

/// The gdb script of [`CONTINUES`] continues.
fn write_scripts(dir: &Path) {
    let script =
        format!("set $i = 0\nwhile $i < {CONTINUES}\n  continue\n  set $i = $i + 1\nend\n");
    std::fs::write(dir.join("continues.gdb"), script).expect("script");
}

/// Every column measured `ROUNDS` times, in turns, each alone on the
/// machine.
fn measure_all(
    columns: &[(&'static str, Serving)],
    gdb_x: Option<&str>,
    scripts: &Path,
) -> Vec<Row> {
    columns.iter().for_each(|(_, s)| s.freeze(true));
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); columns.len()];
    for round in 0..ROUNDS {
        for (i, (name, serving)) in columns.iter().enumerate() {
            if samples[i].last().is_some_and(Sample::failed) {
                continue;
            }
            serving.freeze(false);
            let sample = measure_once(serving, gdb_x, scripts);
            serving.freeze(true);
            println!("  round {round} {name:<12} {sample:.2?}");
            if sample.failed() {
                println!("  {name} failed a measurement: not measured again");
            }
            samples[i].push(sample);
        }
    }
    columns.iter().for_each(|(_, s)| s.freeze(false));
    columns
        .iter()
        .zip(samples)
        .map(|((name, _), runs)| {
            let of = |f: &dyn Fn(&Sample) -> f64| median(runs.iter().map(f).collect());
            let some = |f: &dyn Fn(&Sample) -> Option<f64>| {
                let values: Vec<f64> = runs.iter().filter_map(f).collect();
                (!values.is_empty()).then(|| median(values))
            };
            let medians = Sample {
                // (A failed dump is Duration::MAX, beyond a float's reach.)
                dump: some(&|r| r.dump.map(|d| d.as_secs_f64()))
                    .and_then(|s| Duration::try_from_secs_f64(s).ok()),
                dump_x: some(&|r| r.dump_x.map(|d| d.as_secs_f64()))
                    .and_then(|s| Duration::try_from_secs_f64(s).ok()),
                steps_per_s: of(&|r| r.steps_per_s),
                bare_steps_per_s: of(&|r| r.bare_steps_per_s),
                bare_steps_x_per_s: some(&|r| r.bare_steps_x_per_s),
                hits_per_s: of(&|r| r.hits_per_s),
                continues_per_s: of(&|r| r.continues_per_s),
                watches_per_s: of(&|r| r.watches_per_s),
                step_gdb_us: of(&|r| r.step_gdb_us),
                step_stub_user_us: of(&|r| r.step_stub_user_us),
                step_stub_system_us: of(&|r| r.step_stub_system_us),
            };
            Row { name, medians }
        })
        .collect()
}

/// A rate for the table; a stub that failed the measurement (0) says so.
fn per_s(rate: f64) -> String {
    if rate > 0.0 {
        format!("{rate:.0}")
    } else if rate < 0.0 {
        "n/a".into()
    } else {
        "failed".into()
    }
}

/// `a / b` for the summary lines, unless either failed.
fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

fn print_table(rows: &[Row]) {
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    print!("{:<34}", "");
    rows.iter().for_each(|r| print!("{:>14}", r.name));
    println!();
    let line = |label: &str, cell: &dyn Fn(&Sample) -> String| {
        print!("{label:<34}");
        rows.iter().for_each(|r| print!("{:>14}", cell(&r.medians)));
        println!();
    };
    line("dump 64 MiB, gdb 13 (m)", &|r| {
        r.dump.map_or("n/a".into(), secs)
    });
    line("  MB/s", &|r| {
        r.dump.map_or("n/a".into(), |d| {
            format!("{:.1}", DUMP_BYTES as f64 / 1e6 / d.as_secs_f64())
        })
    });
    line("dump 64 MiB, gdb 18 (x)", &|r| {
        r.dump_x.map_or("n/a".into(), secs)
    });
    line("stepi/s, symbols, gdb 13", &|r| per_s(r.steps_per_s));
    line("stepi/s, no symbols, gdb 13", &|r| {
        per_s(r.bare_steps_per_s)
    });
    line("stepi/s, no symbols, gdb 18", &|r| {
        r.bare_steps_x_per_s.map_or("n/a".into(), per_s)
    });
    line("cond. breakpoint hits/s", &|r| per_s(r.hits_per_s));
    line("continue->breakpoint /s", &|r| per_s(r.continues_per_s));
    line("continue->watchpoint /s", &|r| per_s(r.watches_per_s));
    let ours = &rows[0].medians;
    let dump_ratios = |other: &Sample| match ours.dump.zip(other.dump) {
        Some((a, b)) => format!(
            "dump {:.2}x the throughput ({:.2}x the time), ",
            b.as_secs_f64() / a.as_secs_f64(),
            a.as_secs_f64() / b.as_secs_f64()
        ),
        None => String::new(),
    };
    for row in &rows[1..] {
        let other = &row.medians;
        println!(
            "ours vs {:<12}: {}stepi {} (no symbols: gdb 13 {}, gdb 18 {}), hits {}, continues {}, watch triggers {}",
            row.name,
            dump_ratios(other),
            ratio(ours.steps_per_s, other.steps_per_s),
            ratio(ours.bare_steps_per_s, other.bare_steps_per_s),
            ours.bare_steps_x_per_s
                .zip(other.bare_steps_x_per_s)
                .map_or("n/a".into(), |(a, b)| ratio(a, b)),
            ratio(ours.hits_per_s, other.hits_per_s),
            ratio(ours.continues_per_s, other.continues_per_s),
            ratio(ours.watches_per_s, other.watches_per_s),
        );
    }
    println!("where a step's time goes (symbols, gdb 13; µs per step, medians):");
    for row in rows {
        let r = &row.medians;
        if r.steps_per_s <= 0.0 {
            continue;
        }
        let wall = 1e6 / r.steps_per_s;
        let stub = r.step_stub_user_us + r.step_stub_system_us;
        println!(
            "  {:<12} wall {wall:>4.0} = gdb CPU {:>4.0} + stub CPU {stub:>4.0} (user {:.0}, system {:.0}) + neither {:.0}",
            row.name,
            r.step_gdb_us,
            r.step_stub_user_us,
            r.step_stub_system_us,
            (wall - r.step_gdb_us - stub).max(0.0),
        );
    }
    if let Some((m, x)) = ours.dump.zip(ours.dump_x) {
        println!(
            "ours, gdb 18 x vs gdb 13 m: {:.2}x faster",
            m.as_secs_f64() / x.as_secs_f64()
        );
    }
}

fn main() {
    let exe = std::env::current_exe().expect("exe");
    let dir = exe.parent().expect("examples dir");
    let tmp = std::env::temp_dir().join(format!("bench-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag] = args.as_slice() {
        if flag == "--linux-scale" {
            let tool = dir.parent().expect("profile dir").join("vmem-gdbstub");
            linux_scale::side_by_side(&tool, &dir.join("null-stub"), &tmp);
            let _ = std::fs::remove_dir_all(&tmp);
            return;
        }
    }
    if let [_, flag, binary] = args.as_slice() {
        if flag == "--firecracker" {
            firecracker::side_by_side(Path::new(binary), &dir.join("demo-vm"), &tmp);
            let _ = std::fs::remove_dir_all(&tmp);
            return;
        }
    }
    let random = random_file(&tmp);
    let gdb_x = gdb_with_x();
    println!(
        "gdb 13 (and gdb 18: {}) with the guest's symbols, against the demo VM (ours), QEMU on the same guest and do-nothing stubs (static, and replaying ours): {} MiB dump of random bytes, {STEPS} steps",
        gdb_x.as_deref().unwrap_or("not found"),
        DUMP_BYTES >> 20
    );
    let ours = Stub::start(
        &dir.join("demo-vm"),
        &["--listen", "127.0.0.1:0", "--mem", "128"],
    );
    fill_random(&ours.target, &random);
    ours.freeze(true);
    let mut qemus = Vec::new();
    for (name, accel) in [("QEMU TCG", "tcg"), ("QEMU KVM", "kvm")] {
        match Stub::qemu(accel) {
            Some(q) => {
                fill_random(&q.target, &random);
                q.freeze(true);
                qemus.push((name, q));
            }
            None => println!("{name}: not available (install qemu-system-x86)"),
        }
    }
    // The floor stops where ours does (in the guest's code, with a
    // stack), so gdb unwinds the same way after each step.
    let pc = format!("{:#x}", symbol(GUEST_ELF, "level2"));
    let floor = Stub::start(
        &dir.join("null-stub"),
        &[
            "--pc",
            &pc,
            "--sp",
            &format!("{DUMP_BASE:#x}"),
            "--exec-file",
            GUEST_ELF,
        ],
    );
    write_scripts(&tmp);
    let mut columns = vec![("ours", Serving::Stub(&ours))];
    // The replaying floor: what ours answered in each run, logged once
    // here and replayed by a do-nothing stub, so gdb does exactly the
    // work it does against ours (the static floor's pc never moves).
    ours.freeze(false);
    let replays = Run::ALL
        .iter()
        .filter_map(|&run| {
            record_and_replay(
                run,
                &columns[0].1,
                gdb_x.as_deref(),
                &tmp,
                &dir.join("null-stub"),
            )
        })
        .collect();
    columns.extend(qemus.iter().map(|(name, q)| (*name, Serving::Stub(q))));
    columns.push(("static floor", Serving::Canned(&floor)));
    columns.push(("replay floor", Serving::Replay(replays)));
    println!("{ROUNDS} rounds, medians:");
    let rows = measure_all(&columns, gdb_x.as_deref(), &tmp);
    drop(columns);
    drop(floor);
    // Latency and idle CPU, each stub alone.
    let mut qemu_extra = Vec::new();
    qemus.iter().for_each(|(_, q)| q.freeze(true));
    ours.freeze(true);
    for (name, q) in &qemus {
        q.freeze(false);
        qemu_extra.push((
            *name,
            ctrl_c_latency(&q.target),
            cpu_over_10s(q, &["shell sleep 11"]),
        ));
        q.freeze(true);
    }
    drop(qemus);
    ours.freeze(false);
    let latency = ctrl_c_latency(&ours.target);
    let stopped = cpu_over_10s(&ours, &["shell sleep 11"]);
    drop(ours);
    print_table(&rows);
    println!(
        "{:<34} {:>9.2} ms",
        "Ctrl-C to stop (median of 5), ours",
        latency.as_secs_f64() * 1e3
    );
    for (name, latency, cpu) in &qemu_extra {
        println!(
            "{:<34} {:>9.2} ms",
            format!("Ctrl-C to stop, {name}"),
            latency.as_secs_f64() * 1e3
        );
        println!(
            "{:<34} {:>10.1} %",
            format!("CPU while stopped, {name}"),
            cpu
        );
    }
    println!(
        "{:<34} {:>10.1} %",
        "CPU while stopped (10 s), ours", stopped
    );
    // The demo guest idle (both vCPUs in `sti; hlt`) with KVM's irqchip
    // and its 100 Hz LAPIC timers, as in a real VMM.
    let idle = Stub::start(&dir.join("demo-vm"), &["--listen", "127.0.0.1:0"]);
    println!(
        "{:<34} {:>10.1} %",
        "CPU, demo idle, irqchip + timer",
        cpu_over_10s(&idle, &["set var guest_idle = 1", "continue"])
    );
    drop(idle);
    // Without an irqchip: with interrupts disabled nothing can wake the
    // guest; enabled, the debugger's 2 ms stand-in for a timer tick does.
    for (label, name, halt) in [
        ("CPU, guest halted with IF=0", "halt", "hlt"),
        ("CPU, guest idle in sti;hlt (2 ms)", "idle", "sti; hlt; cli"),
    ] {
        let halted = Stub::start(
            &dir.join("demo-vm"),
            &[
                "--listen",
                "127.0.0.1:0",
                "--vcpus",
                "1",
                "--no-irqchip",
                "--kernel",
                kernel::halting_kernel(&tmp, name, halt)
                    .to_str()
                    .unwrap_or(""),
            ],
        );
        println!(
            "{label:<34} {:>10.1} %",
            cpu_over_10s(&halted, &["continue"])
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
