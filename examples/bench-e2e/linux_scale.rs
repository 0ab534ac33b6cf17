//! `bench-e2e --linux-scale`: what pwndbg and GEF do on every stop —
//! `gdb.execute("monitor info mem", to_string=True)`, and `info tlb` — on
//! a Linux guest at scale, against QEMU's own gdbstub with the guest live
//! and against ours serving a dump QEMU wrote of that very moment.
//!
//! The guest is tests/linux/make-scale-fixture.sh's (4 GiB, 13 processes
//! of 65,536 scattered 4 KiB mappings, the CPUs in their spaces), booted
//! again under QEMU TCG with its gdbstub; once it says SPRAYED it is
//! stopped and dumped, and ours (`vmem-gdbstub serve`) serves the dump.
//! gdb 13 runs each command ROUNDS times per session; sessions alternate
//! between the stubs (QEMU stopped again before each of its sessions, as a
//! gdb detach resumes it). The first QEMU session's text is compared with
//! ours line by line. gdb's own floor: a session against ours logged
//! (`set remotelogfile`) and replayed by `null-stub --replay`, which gives
//! the same bytes at no cost (checked: gdb prints the same text).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{median, Stub};

/// Repetitions of each command in one gdb session.
const ROUNDS: usize = 3;
/// gdb sessions per stub.
const SESSIONS: usize = 2;
const COMMANDS: [&str; 2] = ["info mem", "info tlb"];

/// gdb's timings of each command (seconds) and the text of the last one.
struct Session {
    times: Vec<Vec<f64>>,
    texts: Vec<String>,
}

/// One gdb session against `target`: each command ROUNDS times; the
/// remote protocol logged to `log` if given.
fn session(target: &str, scratch: &Path, log: Option<&Path>) -> Session {
    let script = scratch.join("timed.py");
    let mut py = String::from("import gdb, time\n");
    for (i, command) in COMMANDS.iter().enumerate() {
        py.push_str(&format!(
            "for r in range({ROUNDS}):\n    t = time.perf_counter()\n    out = gdb.execute('monitor {command}', to_string=True)\n    print('TIME {i} %.6f' % (time.perf_counter() - t))\nopen('{}', 'w').write(out)\n",
            scratch.join(format!("text{i}")).display()
        ));
    }
    std::fs::write(&script, py).expect("script");
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "set pagination off"])
        // QEMU takes longer than gdb's 2 s to answer `info mem` here.
        .args(["-ex", "set remotetimeout 300", "-ex"])
        .arg(log.map_or(String::new(), |l| {
            format!("set remotelogfile {}", l.display())
        }))
        .arg("-ex")
        .arg(format!("target remote {target}"))
        .arg("-x")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .expect("gdb");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut times = vec![Vec::new(); COMMANDS.len()];
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        if let (Some("TIME"), Some(i), Some(t)) = (words.next(), words.next(), words.next()) {
            if let (Ok(i), Ok(t)) = (i.parse::<usize>(), t.parse::<f64>()) {
                times[i].push(t);
            }
        }
    }
    assert!(
        times.iter().all(|t| t.len() == ROUNDS),
        "gdb against {target}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let texts = (0..COMMANDS.len())
        .map(|i| std::fs::read_to_string(scratch.join(format!("text{i}"))).unwrap_or_default())
        .collect();
    Session { times, texts }
}

/// Send `commands` to QEMU's human monitor (tests/linux/hmp.py).
fn hmp(root: &Path, socket: &Path, commands: &[&str]) {
    let ok = Command::new("python3")
        .arg(root.join("tests/linux/hmp.py"))
        .arg(socket)
        .args(commands)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "QEMU's monitor: {commands:?}");
}

pub(crate) fn side_by_side(tool: &Path, null_stub: &Path, scratch: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = root.join("target/linux-scale");
    let script = root.join("tests/linux/make-scale-fixture.sh");
    let built = Command::new("sh").arg(&script).arg(&fixture).status();
    assert!(built.is_ok_and(|s| s.success()), "the scale fixture");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let monitor = scratch.join("monitor.sock");
    let console = fixture.join("console.log");
    let _ = std::fs::remove_file(&console);
    let booted = Instant::now();
    let child = Command::new("sh")
        .arg(&script)
        .args(["boot"])
        .arg(&fixture)
        .args(["-serial", "null", "-gdb"])
        .arg(format!("tcp:127.0.0.1:{port}"))
        .arg("-monitor")
        .arg(format!("unix:{},server,nowait", monitor.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu");
    let qemu = Stub {
        child,
        target: format!("127.0.0.1:{port}"),
    };
    while !std::fs::read_to_string(&console).is_ok_and(|c| c.contains("SPRAYED")) {
        assert!(
            booted.elapsed() < Duration::from_secs(600),
            "the guest never said SPRAYED"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("guest ready in {:.0} s", booted.elapsed().as_secs_f64());
    let dump = scratch.join("live.elf");
    let dumped = Instant::now();
    hmp(
        root,
        &monitor,
        &["stop", &format!("dump-guest-memory {}", dump.display())],
    );
    println!("dumped in {:.0} s", dumped.elapsed().as_secs_f64());
    let dump_arg = dump.to_string_lossy().into_owned();
    let ours = Stub::start(tool, &["serve", &dump_arg, "--listen", "127.0.0.1:0"]);

    let log = scratch.join("ours.log");
    let logged = session(&ours.target, scratch, Some(&log));
    let floor = Stub::start(null_stub, &["--replay", &log.display().to_string()]);
    let replayed = session(&floor.target, scratch, None);
    assert_eq!(
        replayed.texts, logged.texts,
        "the replay gives gdb what ours gave"
    );

    let stubs = [&qemu, &ours, &floor];
    let mut all: [Vec<Session>; 3] = Default::default();
    for _ in 0..SESSIONS {
        hmp(root, &monitor, &["stop"]);
        for (stub, sessions) in stubs.iter().zip(all.iter_mut()) {
            sessions.push(session(&stub.target, scratch, None));
        }
    }
    println!(
        "gdb 13, `gdb.execute(\"monitor …\", to_string=True)`, {SESSIONS} sessions x {ROUNDS} rounds each, medians:"
    );
    println!("| | QEMU 7.2 gdbstub (live, TCG) | ours (its dump) | gdb's floor (replaying ours) | ours vs QEMU |");
    println!("|---|---|---|---|---|");
    for (i, command) in COMMANDS.iter().enumerate() {
        let [theirs, mine, least] = all
            .each_ref()
            .map(|sessions| median(sessions.iter().flat_map(|s| s.times[i].clone()).collect()));
        let (qemu_text, our_text) = (&all[0][0].texts[i], &all[1][0].texts[i]);
        let differing = qemu_text
            .lines()
            .zip(our_text.lines())
            .filter(|(a, b)| a != b)
            .count()
            + qemu_text.lines().count().abs_diff(our_text.lines().count());
        if let Some((a, b)) = qemu_text
            .lines()
            .zip(our_text.lines())
            .find(|(a, b)| a != b)
        {
            println!("first difference in `{command}`:\n  QEMU: {a}\n  ours: {b}");
        }
        println!(
            "| `monitor {command}` (ours: {} lines, QEMU: {}; {differing} differ) | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}x |",
            our_text.lines().count(),
            qemu_text.lines().count(),
            theirs * 1e3,
            mine * 1e3,
            least * 1e3,
            theirs / mine
        );
    }
    drop(floor);
    drop(ours);
    drop(qemu);
    let _ = std::fs::remove_file(&dump);
}
