//! `bench-e2e --firecracker BINARY`: the side-by-side of this project's
//! stub embedded in Firecracker (integrations/firecracker), Firecracker's
//! own gdb stub (its `gdb` feature) and the demo VM, all on the demo guest
//! with one vCPU and 128 MiB (Firecracker's own stub stalls on `info
//! threads` with two), in one run: attach time, `stepi` rate,
//! conditional-breakpoint hits, a 64 MiB `dump binary memory`, Ctrl-C
//! latency and the stub's CPU while gdb holds the VM stopped. Firecracker's
//! own stub stops the VM when gdb detaches, so each of its sessions gets a
//! fresh Firecracker (started before the clock runs), and it holds the
//! guest at its first instruction, so every session first runs the guest
//! to `level1` (that part measured alone and taken off).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{
    cpu_over_10s, gdb, median, symbol, Stub, DUMP_BASE, DUMP_BYTES, GDB, GDB_LIMIT, GUEST_ELF,
};

/// Steps per `stepi` measurement.
const STEPS: u32 = 2_000;
/// Conditional-breakpoint hits per measurement.
const HITS: u32 = 300;
/// Rounds; the medians are printed.
const ROUNDS: usize = 3;

/// One column: how to get a stub for a gdb session.
enum Column {
    /// One stub serves every session (ours).
    Shared(Stub),
    /// A fresh Firecracker with its own stub per session.
    FreshOwn { firecracker: PathBuf, dir: PathBuf },
}

impl Column {
    /// Freeze (or thaw) a shared stub, so it takes no CPU while another
    /// column is measured.
    fn freeze(&self, frozen: bool) {
        if let Column::Shared(stub) = self {
            stub.freeze(frozen);
        }
    }

    /// A stub to run one gdb session against.
    fn session(&self) -> Session<'_> {
        match self {
            Column::Shared(stub) => Session::Shared(stub),
            Column::FreshOwn { firecracker, dir } => {
                Session::Own(own_stub(firecracker, dir).expect("Firecracker with its own stub"))
            }
        }
    }
}

/// A stub for one session.
enum Session<'a> {
    Shared(&'a Stub),
    Own(Stub),
}

impl Session<'_> {
    fn stub(&self) -> &Stub {
        match self {
            Session::Shared(stub) => stub,
            Session::Own(stub) => stub,
        }
    }
}

/// Firecracker's config for the demo guest, 1 vCPU, 128 MiB, with `stub`
/// (a machine-config field) choosing the debugger.
fn config(dir: &Path, name: &str, stub: &str) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    let json = format!(
        r#"{{ "boot-source": {{ "kernel_image_path": "{GUEST_ELF}" }}, "drives": [],
  "machine-config": {{ "vcpu_count": 1, "mem_size_mib": 128, {stub} }} }}"#
    );
    std::fs::write(&path, json).expect("config");
    path
}

fn firecracker_args(config: &Path) -> Vec<String> {
    vec![
        "--no-api".into(),
        "--no-seccomp".into(),
        "--level".into(),
        "Info".into(),
        "--config-file".into(),
        config.display().to_string(),
    ]
}

/// Firecracker with vmem-gdbstub on a free port.
fn with_ours(firecracker: &Path, dir: &Path) -> Stub {
    let config = config(dir, "ours", r#""vmem_gdb_listen": "127.0.0.1:0""#);
    let args = firecracker_args(&config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Stub::start(firecracker, &args)
}

/// Firecracker with its own stub on a fresh unix socket, once it listens.
fn own_stub(firecracker: &Path, dir: &Path) -> Option<Stub> {
    let socket = dir.join("own.sock");
    let _ = std::fs::remove_file(&socket);
    let config = config(
        dir,
        "own",
        &format!(r#""gdb_socket_path": "{}""#, socket.display()),
    );
    let child = Command::new(firecracker)
        .args(firecracker_args(&config))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(Stub {
        child,
        target: socket.display().to_string(),
    })
}

/// gdb's wall time for `commands` against a fresh session of `column`,
/// and what it printed; `None` if it failed or passed [`GDB_LIMIT`].
fn run(column: &Column, commands: &[String]) -> Option<(Duration, String)> {
    let session = column.session();
    let start = Instant::now();
    let child = gdb(GDB, &session.stub().target, commands)
        .spawn()
        .expect("gdb");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(GDB_LIMIT).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().expect("gdb");
    let wall = start.elapsed();
    let _ = done.send(());
    let _ = watchdog.join();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    out.status.success().then_some((wall, printed))
}

/// The numbers of one column in one round (`None`: failed).
#[derive(Debug, Clone, Copy, Default)]
struct Numbers {
    attach: Option<f64>,
    steps_per_s: Option<f64>,
    hits_per_s: Option<f64>,
    /// Whether the guest made as many calls as gdb counted hits.
    hits_real: bool,
    dump_s: Option<f64>,
    ctrl_c_ms: Option<f64>,
}

/// One number of [`Numbers`], for the table.
type Pick = fn(&Numbers) -> Option<f64>;

/// The first number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn measure(column: &Column) -> Numbers {
    let to_level1 = vec![
        format!("hbreak *{:#x}", symbol(GUEST_ELF, "level1")),
        "continue".to_string(),
        "delete".to_string(),
    ];
    let attach = run(column, &["info registers rip".into()]).map(|(d, _)| d);
    let base = run(column, &to_level1).map(|(d, _)| d);
    let mut stepping = to_level1.clone();
    stepping.push(format!("stepi {STEPS}"));
    let stepped = run(column, &stepping).map(|(d, _)| d);
    let steps_per_s = base
        .zip(stepped)
        .filter(|(b, s)| s > b)
        .map(|(b, s)| f64::from(STEPS) / (s - b).as_secs_f64());
    // Every session starts where the guest enters level1 (Firecracker's
    // own stub holds the guest at its first instruction, before it has set
    // up its tables); the cost of getting there is measured and taken off.
    let mut spinning = to_level1.clone();
    spinning.extend([
        "set var bench_spin = 1".to_string(),
        "hbreak bump".to_string(),
        "continue".to_string(),
        "delete".to_string(),
        "print bumps".to_string(),
    ]);
    let mut hitting = spinning.clone();
    hitting.extend([
        "set $n = 0".to_string(),
        format!("hbreak bump if ++$n == {HITS}"),
        "continue".to_string(),
        "print $n".to_string(),
        "print bumps".to_string(),
        "delete".to_string(),
        "set var bench_spin = 0".to_string(),
    ]);
    spinning.push("set var bench_spin = 0".to_string());
    let spun = run(column, &spinning).map(|(d, _)| d);
    let hit = run(column, &hitting);
    let hits_per_s = spun
        .zip(hit.as_ref().map(|(d, _)| *d))
        .filter(|(b, h)| h > b)
        .map(|(b, h)| f64::from(HITS) / (h - b).as_secs_f64());
    let hits_real = hit.as_ref().is_some_and(|(_, out)| {
        let before = number_after(out, "$1 = ");
        let after = number_after(out, "$3 = ");
        number_after(out, "$2 = ") == Some(u64::from(HITS))
            && before
                .zip(after)
                .is_some_and(|(b, a)| a >= b + u64::from(HITS) - 1)
    });
    let mut dumping = to_level1.clone();
    dumping.push(format!(
        "dump binary memory /dev/null {DUMP_BASE:#x} {:#x}",
        DUMP_BASE + DUMP_BYTES
    ));
    let dump = run(column, &dumping).map(|(d, _)| d);
    Numbers {
        attach: attach.map(|d| d.as_secs_f64() * 1e3),
        steps_per_s,
        hits_per_s,
        hits_real,
        dump_s: dump
            .zip(base)
            .map(|(d, b)| d.saturating_sub(b).as_secs_f64()),
        ctrl_c_ms: ctrl_c(column).map(|d| d.as_secs_f64() * 1e3),
    }
}

/// Ctrl-C to gdb's "SIGINT" line, on a running guest.
fn ctrl_c(column: &Column) -> Option<Duration> {
    use std::io::Read;
    let session = column.session();
    let mut child = gdb(GDB, &session.stub().target, &["continue".into()])
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(800));
    let start = Instant::now();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let mut out = child.stdout.take()?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = start + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("SIGINT") && Instant::now() < deadline {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let took = start.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&seen)
        .contains("SIGINT")
        .then_some(took)
}

/// Run the side-by-side and print it.
pub(super) fn side_by_side(firecracker: &Path, demo: &Path, dir: &Path) {
    println!(
        "Firecracker + vmem-gdbstub vs Firecracker's own stub vs the demo VM: demo guest, 1 vCPU, 128 MiB, gdb 13, {ROUNDS} rounds (medians)"
    );
    let columns = [
        (
            "demo VM (ours)",
            Column::Shared(Stub::start(
                demo,
                &["--listen", "127.0.0.1:0", "--mem", "128", "--vcpus", "1"],
            )),
        ),
        (
            "Firecracker + ours",
            Column::Shared(with_ours(firecracker, dir)),
        ),
        (
            "Firecracker's own",
            Column::FreshOwn {
                firecracker: firecracker.to_path_buf(),
                dir: dir.to_path_buf(),
            },
        ),
    ];
    let mut rounds: Vec<Vec<Numbers>> = vec![Vec::new(); columns.len()];
    columns.iter().for_each(|(_, c)| c.freeze(true));
    for round in 0..ROUNDS {
        for (i, (name, column)) in columns.iter().enumerate() {
            column.freeze(false);
            let numbers = measure(column);
            column.freeze(true);
            println!("  round {round} {name:<20} {numbers:.2?}");
            rounds[i].push(numbers);
        }
    }
    let idle: Vec<Option<f64>> = columns
        .iter()
        .map(|(_, column)| {
            column.freeze(false);
            let session = column.session();
            let cpu = cpu_over_10s(session.stub(), &["shell sleep 11"]);
            column.freeze(true);
            Some(cpu)
        })
        .collect();
    columns.iter().for_each(|(_, c)| c.freeze(false));
    let med = |i: usize, f: &dyn Fn(&Numbers) -> Option<f64>| {
        let values: Vec<f64> = rounds[i].iter().filter_map(f).collect();
        (!values.is_empty()).then(|| median(values))
    };
    let show = |v: Option<f64>, unit: &str| match v {
        Some(v) => format!("{v:.1}{unit}"),
        None => "failed".into(),
    };
    print!("{:<38}", "");
    for (name, _) in &columns {
        print!(" {name:>20}");
    }
    println!();
    let rows: [(&str, Pick, &str); 5] = [
        ("attach + one register read", |n| n.attach, " ms"),
        ("stepi per second", |n| n.steps_per_s, ""),
        ("conditional hbreak hits per second", |n| n.hits_per_s, ""),
        ("dump binary memory 64 MiB", |n| n.dump_s, " s"),
        ("Ctrl-C to stop", |n| n.ctrl_c_ms, " ms"),
    ];
    for (label, f, unit) in rows {
        print!("{label:<38}");
        for i in 0..columns.len() {
            print!(" {:>20}", show(med(i, &f), unit));
        }
        println!();
    }
    print!("{:<38}", "hits were the guest's calls");
    for column in &rounds {
        let real = column.iter().all(|n| n.hits_real);
        print!(" {:>20}", if real { "yes" } else { "no" });
    }
    println!();
    print!("{:<38}", "stub CPU while stopped (10 s)");
    for value in &idle {
        print!(" {:>20}", show(*value, " %"));
    }
    println!();
    let ratio = |f: &dyn Fn(&Numbers) -> Option<f64>, a: usize, b: usize| {
        med(a, f)
            .zip(med(b, f))
            .map_or("n/a".to_string(), |(a, b)| format!("{:.2}x", a / b))
    };
    println!(
        "ratios, Firecracker + ours / Firecracker's own: stepi {}, hits {}; dump time own / ours {}",
        ratio(&|n| n.steps_per_s, 1, 2),
        ratio(&|n| n.hits_per_s, 1, 2),
        ratio(&|n| n.dump_s, 2, 1),
    );
    println!(
        "ratios, Firecracker + ours / demo VM: stepi {}, hits {}",
        ratio(&|n| n.steps_per_s, 1, 0),
        ratio(&|n| n.hits_per_s, 1, 0),
    );
}
