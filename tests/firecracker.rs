//! Firecracker v1.16.1 with vmem-gdbstub embedded
//! (integrations/firecracker: its vCPU loop calls our hooks around its
//! own KVM_RUN, through kvm-ioctls 0.24 where ours is 0.25), booting the
//! demo guest through its PVH note, and the real gdb against it: the
//! session the demo VM's tests make. Skips where Firecracker's source is
//! not at hand (`FIRECRACKER_SRC`, or ../shared/firecracker beside this
//! repository).

mod demo;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use demo::{available, ctrl_c_after, hex_after, number_after, run_with_timeout};

/// The guest every test boots (gdb loads its symbols).
const GUEST: &str = env!("DEMO_GUEST_ELF");

/// Firecracker's source, if this machine has it.
fn firecracker_src() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = match std::env::var_os("FIRECRACKER_SRC") {
        Some(src) => PathBuf::from(src),
        None => root.join("../shared/firecracker/v1.16.1"),
    };
    src.join("Cargo.toml").exists().then_some(src)
}

/// The patched Firecracker, built once per test binary by build.sh.
fn firecracker() -> Option<&'static Path> {
    static BINARY: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if !available() {
                return None;
            }
            let Some(src) = firecracker_src() else {
                eprintln!(
                    "SKIPPED: no Firecracker source (set FIRECRACKER_SRC, or put it in ../shared/firecracker)"
                );
                return None;
            };
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let built = Command::new("sh")
                .arg(root.join("integrations/firecracker/build.sh"))
                .arg(&src)
                .stderr(Stdio::inherit())
                .output()
                .expect("build.sh");
            assert!(built.status.success(), "build.sh failed");
            let path = String::from_utf8_lossy(&built.stdout);
            Some(PathBuf::from(path.lines().last().expect("a path").trim()))
        })
        .as_deref()
}

/// run.sh with the demo guest and `args`, its log on a pipe.
fn run_sh(args: &[&str]) -> Option<Child> {
    let binary = firecracker()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let child = Command::new("sh")
        .arg(root.join("integrations/firecracker/run.sh"))
        .args(["--guest", GUEST])
        .args(args)
        .env("FIRECRACKER", binary)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("run.sh");
    Some(child)
}

/// Firecracker running the demo guest with vmem-gdbstub on a free port.
struct Firecracker {
    child: Child,
    port: u16,
}

impl Firecracker {
    fn start() -> Option<Firecracker> {
        let mut child = run_sh(&["--listen", "127.0.0.1:0"])?;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
            eprintln!("{line}");
            let (_, addr) = line.split_once("vmem-gdbstub listening on 127.0.0.1:")?;
            addr.trim().parse().ok()
        });
        // Keep draining Firecracker's log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Some(Firecracker {
            child,
            port: port.expect("Firecracker said where vmem-gdbstub listens"),
        })
    }

    fn gdb_command(&self, commands: &[&str]) -> Command {
        let mut gdb = Command::new("gdb");
        gdb.args(["-batch", "-nx", "-ex", "set pagination off", "-ex"])
            .arg(format!("file {GUEST}"))
            .arg("-ex")
            .arg(format!("target remote 127.0.0.1:{}", self.port));
        for c in commands {
            gdb.arg("-ex").arg(c);
        }
        gdb.stdin(Stdio::null());
        gdb
    }

    fn gdb(&self, commands: &[&str]) -> String {
        let out = run_with_timeout(self.gdb_command(commands), Duration::from_secs(60));
        eprintln!("---- gdb {commands:?}\n{out}");
        out
    }

    /// The guest's `counter`, read by a short gdb session.
    fn counter(&self) -> u64 {
        let out = self.gdb(&["print counter"]);
        number_after(&out, "$1 = ").expect("counter")
    }

    /// Whether Firecracker is still running.
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Firecracker {
    fn drop(&mut self) {
        // run.sh and Firecracker are one process group.
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Attach to the running guest: every vCPU listed at once, kernel frames
/// named, the page tables shown (`vmem walk/translate/spaces`), software
/// and hardware breakpoints hit, `stepi` moves, a watchpoint (memslots
/// re-laid in slot numbers reserved from Firecracker's allocator) stops at
/// the write, `detach` lets the guest run on.
#[test]
fn firecracker_serves_the_demo_session() {
    let Some(fc) = Firecracker::start() else {
        return;
    };
    let out = fc.gdb(&[
        "info threads",
        "bt",
        "monitor vmem walk --limit 4",
        "monitor vmem translate $pc",
        "monitor vmem spaces",
        "break level3",
        "continue",
        "bt 3",
        "delete",
        "hbreak level2",
        "continue",
        "print/x $pc",
        "stepi",
        "print/x $pc",
        "delete",
        "watch last_result",
        "continue",
        "delete",
        "print counter",
        "detach",
    ]);
    assert!(out.contains("Thread 1.1 (CPU#0"), "{out}");
    assert!(out.contains("Thread 1.2 (CPU#1"), "{out}");
    assert!(out.contains("in vcpu0_main ()"), "{out}");
    assert!(out.contains("9 mappings; 3G in 2M pages"), "{out}");
    assert!(out.contains("rwx"), "{out}");
    let current = regex::Regex::new(r"(?m)^space 0x[0-9a-f]+ \(current on vcpu 0").unwrap();
    assert!(current.is_match(&out), "{out}");
    assert!(out.contains("Breakpoint 1, level3"), "{out}");
    assert!(out.contains("in level2 (x="), "{out}");
    assert!(
        out.contains("Hardware assisted breakpoint 2 at 0x"),
        "{out}"
    );
    assert!(out.contains("hit Breakpoint 2, level2"), "{out}");
    let (at, stepped) = (hex_after(&out, "$1 = 0x"), hex_after(&out, "$2 = 0x"));
    assert!(at.is_some() && stepped > at, "stepi moved on: {out}");
    assert!(out.contains("Hardware watchpoint 3: last_result"), "{out}");
    assert!(out.contains("New value"), "{out}");
    assert!(out.contains("[Inferior 1 (process 1) detached]"), "{out}");
    let first = fc.counter();
    std::thread::sleep(Duration::from_millis(300));
    let second = fc.counter();
    assert!(
        second > first,
        "the guest ran on after detach: {first} -> {second}"
    );
}

/// Ctrl-C stops the running guest at once; gdb killed with SIGKILL while
/// breakpoints are planted leaves the guest running and the stub ready
/// for the next gdb; Firecracker stays up throughout.
#[test]
fn firecracker_survives_ctrl_c_and_a_killed_gdb() {
    let Some(mut fc) = Firecracker::start() else {
        return;
    };
    let gdb = fc.gdb_command(&["continue", "info threads", "print counter"]);
    let (out, clean, took) = ctrl_c_after(gdb, Duration::from_millis(1500));
    assert!(clean, "{out}");
    assert!(out.contains("received signal SIGINT"), "{out}");
    assert!(out.contains("Thread 1.2"), "{out}");
    assert!(took < Duration::from_secs(5));

    let mut commands = vec!["break level3", "hbreak level1", "watch counter"];
    commands.extend(std::iter::repeat_n("continue", 300));
    let mut gdb = fc
        .gdb_command(&commands)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gdb");
    std::thread::sleep(Duration::from_millis(1500));
    gdb.kill().expect("SIGKILL gdb");
    let _ = gdb.wait();
    let first = fc.counter();
    std::thread::sleep(Duration::from_millis(300));
    let second = fc.counter();
    assert!(second > first, "the guest runs on: {first} -> {second}");
    let out = fc.gdb(&["info breakpoints", "x/i level3"]);
    assert!(out.contains("No breakpoints or watchpoints."), "{out}");
    assert!(!out.contains("int3"), "no int3 left in level3: {out}");
    assert!(fc.alive());
}

/// Firecracker's own gdb stub (its `gdb` feature, on a unix socket) still
/// works in the same binary, chosen by the machine config instead of ours
/// (two debuggers cannot share a vCPU's guest-debug state): it holds the
/// guest at its first instruction until gdb comes, then a hardware
/// breakpoint at kmain is hit.
#[test]
fn firecrackers_own_stub_still_works_beside_ours() {
    let socket = std::env::temp_dir().join(format!("fc-own-gdb-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let Some(child) = run_sh(&["--vcpus", "1", "--fc-socket", socket.to_str().unwrap()]) else {
        return;
    };
    let fc = Firecracker { child, port: 0 };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx", "-ex"])
        .arg(format!("file {GUEST}"))
        .arg("-ex")
        .arg(format!("target remote {}", socket.display()))
        .args(["-ex", "hbreak kmain", "-ex", "continue", "-ex", "bt 1"])
        .stdin(Stdio::null());
    let out = run_with_timeout(gdb, Duration::from_secs(60));
    eprintln!("{out}");
    assert!(out.contains("kmain (vcpu=0)"), "{out}");
    drop(fc);
    let _ = std::fs::remove_file(&socket);
}
