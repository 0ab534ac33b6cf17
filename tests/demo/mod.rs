//! Harness for tests that drive the real gdb against the real demo VM on
//! /dev/kvm. Without /dev/kvm (or gdb) they skip with a message, unless
//! VMEM_GDBSTUB_REQUIRE_KVM=1, where they fail.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod kernel;
pub mod rsp;
pub mod rsp_decode;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running demo VM with its gdb port.
pub struct DemoVm {
    child: Child,
    pub port: u16,
    pub elf: String,
    /// CR3 of the demo's two address spaces (empty for `--kernel`).
    pub spaces: Vec<u64>,
    /// What the demo printed before it served gdb.
    pub startup: String,
    /// What the demo has logged so far (its stderr).
    log: Arc<Mutex<String>>,
}

fn demo_binary() -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/examples/demo-vm
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("examples/demo-vm")
}

/// Whether the machine can run these tests; prints why not.
/// The CPUID leaf `function` KVM offers guests here (the demo gives its
/// vCPUs exactly that), as (eax, edx).
fn supported_cpuid(function: u32) -> Option<(u32, u32)> {
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .ok()?;
    let leaf = cpuid.as_slice().iter().find(|e| e.function == function)?;
    Some((leaf.eax, leaf.edx))
}

/// The demo's direct-map page size: 1 GiB where KVM offers the guest
/// 1 GiB pages (CPUID Page1GB), 2 MiB elsewhere (kvm_pvm has none).
pub fn direct_map_page() -> &'static str {
    match supported_cpuid(0x8000_0001) {
        Some((_, edx)) if edx & (1 << 26) != 0 => "1G",
        _ => "2M",
    }
}

/// The highest page the demo's vCPUs can address (MAXPHYADDR).
pub fn highest_page() -> u64 {
    let bits = supported_cpuid(0x8000_0008).map_or(36, |(eax, _)| eax & 0xff);
    (1u64 << bits) - 0x1000
}

pub fn available() -> bool {
    let required = std::env::var("VMEM_GDBSTUB_REQUIRE_KVM").is_ok_and(|v| v == "1");
    let missing = if !Path::new("/dev/kvm").exists() {
        Some("/dev/kvm is missing")
    } else if Command::new("gdb").arg("--version").output().is_err() {
        Some("gdb is not installed")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if required => panic!("{why}, and VMEM_GDBSTUB_REQUIRE_KVM=1"),
        Some(why) => {
            eprintln!("SKIPPED: {why} (set VMEM_GDBSTUB_REQUIRE_KVM=1 to make this a failure)");
            false
        }
    }
}

impl DemoVm {
    /// Boot the demo VM on a free port; `None` when the machine cannot.
    pub fn start() -> Option<DemoVm> {
        Self::start_with(&[])
    }

    /// Boot with extra command-line arguments.
    pub fn start_with(args: &[&str]) -> Option<DemoVm> {
        if !available() {
            return None;
        }
        Some(Self::try_start_with(args).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Boot with `args` and the stub's log at `filter` (RUST_LOG), kept
    /// for [`DemoVm::log`].
    pub fn start_logging(filter: &str, args: &[&str]) -> Option<DemoVm> {
        if !available() {
            return None;
        }
        Some(Self::spawn(args, Some(filter)).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Boot, or say why the demo VM exited instead (its error message).
    pub fn try_start_with(args: &[&str]) -> Result<DemoVm, String> {
        Self::spawn(args, None)
    }

    fn spawn(args: &[&str], log_filter: Option<&str>) -> Result<DemoVm, String> {
        // VMEM_GDBSTUB_DEMO_ARGS: e.g. "--turnkey" or "--no-irqchip", to
        // run every gdb test through the other vCPU loop or without an
        // interrupt controller.
        let extra = std::env::var("VMEM_GDBSTUB_DEMO_ARGS").unwrap_or_default();
        let mut demo = Command::new(demo_binary());
        if let Some(filter) = log_filter {
            demo.env("RUST_LOG", filter);
        }
        let mut child = demo
            .args(["--listen", "127.0.0.1:0"])
            .args(extra.split_whitespace().filter(|e| !args.contains(e)))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the demo VM (built by cargo test as an example)");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Keep draining stderr so the VM never blocks on a full pipe.
        let log = Arc::new(Mutex::new(String::new()));
        let errors = std::thread::spawn({
            let log = Arc::clone(&log);
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
                log.lock().unwrap_or_else(|e| e.into_inner()).clone()
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let (mut port, mut elf, mut spaces) = (None, None, Vec::new());
        let mut startup = String::new();
        while port.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.wait();
                return Err(format!(
                    "demo VM exited early: {}",
                    errors.join().unwrap_or_default()
                ));
            };
            startup.push_str(&line);
            startup.push('\n');
            if let Some(list) = line.split("address spaces ").nth(1) {
                spaces = list
                    .split_whitespace()
                    .filter_map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
                    .collect();
            }
            if let Some(path) = line.strip_prefix("guest ELF: ") {
                elf = Some(path.to_string());
            }
            if let Some(addr) = line.strip_prefix("gdb stub listening on ") {
                port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            }
        }
        Ok(DemoVm {
            child,
            port: port.expect("port"),
            elf: elf.expect("guest ELF line"),
            spaces,
            startup,
            log,
        })
    }

    /// What the demo has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The memslot layouts the stub logged (`memslots: …`, at debug level
    /// for `vmem_gdbstub::target::kvm::watch::memslots`), once there are `count` of them
    /// or after 10 s.
    pub fn memslot_layouts(&self, count: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<String> = self
                .log()
                .lines()
                .filter_map(|l| l.split("memslots: ").nth(1))
                .map(String::from)
                .collect();
            if found.len() >= count || std::time::Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The demo VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gdb command line that loads the guest's symbols and connects.
    pub fn gdb_command(&self, commands: &[&str]) -> Command {
        let mut gdb = Command::new("gdb");
        gdb.args(["-batch", "-nx", "-ex", "set pagination off", "-ex"])
            .arg(format!("file {}", self.elf))
            .arg("-ex")
            .arg(format!("target remote 127.0.0.1:{}", self.port));
        for c in commands {
            gdb.arg("-ex").arg(c);
        }
        gdb
    }

    /// Run gdb with `commands` and return everything it printed.
    pub fn gdb(&self, commands: &[&str]) -> String {
        let mut gdb = self.gdb_command(commands);
        gdb.stdin(Stdio::null());
        let output = run_with_timeout(gdb, Duration::from_secs(60));
        eprintln!("---- gdb {commands:?}\n{output}");
        output
    }

    /// CPU time (user + system, in clock ticks of 10 ms) the VM process
    /// has used so far.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("/proc/PID/stat");
        // Fields after the command name, which ends with ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// Freeze the VM process (SIGSTOP) for `pause`, then let it go on.
    pub fn freeze_for(&self, pause: Duration) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(pause);
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }

    /// The VM process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Run a gdb script (`while` loops and all) after connecting.
    pub fn gdb_script(&self, name: &str, script: &str, limit: Duration) -> String {
        let path =
            std::env::temp_dir().join(format!("{name}-{}-{}.gdb", std::process::id(), self.port));
        std::fs::write(&path, script).unwrap();
        let mut gdb = self.gdb_command(&[&format!("source {}", path.display())]);
        gdb.stdin(Stdio::null());
        let output = run_with_timeout(gdb, limit);
        let _ = std::fs::remove_file(&path);
        output
    }

    /// Whether the VM process is still alive.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

impl Drop for DemoVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run gdb as `cmd` (which should `continue` first), press Ctrl-C after
/// `wait` (SIGINT to gdb), and return what gdb printed, whether it
/// exited cleanly, and the time from Ctrl-C to its exit.
pub fn ctrl_c_after(mut cmd: Command, wait: Duration) -> (String, bool, Duration) {
    use std::io::Read;
    let mut gdb = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb");
    std::thread::sleep(wait);
    let sent = std::time::Instant::now();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(gdb.id() as i32, libc::SIGINT) };
    let mut out = String::new();
    gdb.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let clean = gdb.wait().unwrap().success();
    let took = sent.elapsed();
    eprintln!("{out}\nCtrl-C to gdb exit: {took:?}");
    (out, clean, took)
}

/// Run `cmd`, killing it after `limit`; stdout and stderr together.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> String {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().expect("output");
    let _ = done.send(());
    let _ = watchdog.join();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The first hex number after `prefix` in `text`.
pub fn hex_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let rest = rest.trim_start();
    let digits: String = rest
        .trim_start_matches("0x")
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    u64::from_str_radix(&digits, 16).ok()
}

/// The decimal number after `prefix` in `text`.
pub fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The replies gdb printed for `maint packet` commands, in order.
pub fn packet_replies(out: &str) -> Vec<&str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("received: "))
        .collect()
}
