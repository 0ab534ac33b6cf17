//! The demo VM: boots the bundled C guest (or your own static ELF64) on
//! KVM and serves gdb on 127.0.0.1:9001 — `vmem-gdbstub demo`, and the
//! `demo-vm` example (the same code).
//!
//! ```sh
//! cargo run --release --example demo-vm      # or: vmem-gdbstub demo
//! gdb -ex "target remote :9001"
//! ```

mod kick;
mod layout;
mod loader;
mod vm;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use clap::Parser;
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{error, info, warn};
use vmem_gdbstub::arch::I686;
use vmem_gdbstub::target::{
    Debugger, DebuggerBuilder, Dump, DumpArch, DumpCpu, DumpError, Entry, ExitAction, ExitOwner,
    GdbListener, SymbolFile,
};

/// Where build.rs built the guest from guest/ (gdb is told this name;
/// the bytes below are what it reads, so an installed binary needs no
/// file there).
const DEMO_GUEST: &str = env!("DEMO_GUEST_ELF");
/// The guest, built into this binary.
const DEMO_GUEST_BYTES: &[u8] = include_bytes!(env!("DEMO_GUEST_ELF"));
/// The 32-bit guest built from guest/guest32.c.
const DEMO_GUEST32: &str = env!("DEMO_GUEST32_ELF");
/// The 32-bit guest, built into this binary.
const DEMO_GUEST32_BYTES: &[u8] = include_bytes!(env!("DEMO_GUEST32_ELF"));

#[derive(Parser, Debug)]
#[command(about = "Boot a small KVM guest and debug it with gdb")]
struct Args {
    /// A static ELF64 to boot instead of the bundled guest (entry in long
    /// mode, rdi = vCPU index; segments are mapped at their p_vaddr).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=8))]
    vcpus: u8,
    /// Guest RAM in MiB; over 3 GiB it is split around the 32-bit MMIO
    /// gap (3-4 GiB), as VMMs lay RAM out.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(32..=4096))]
    mem: u64,
    /// TCP address for gdb (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: String,
    /// Serve gdb on a unix socket instead (created with mode 0600).
    #[arg(long)]
    unix: Option<PathBuf>,
    /// Boot the bundled 32-bit guest in protected mode with this paging
    /// (pse: 2-level with 4 MiB pages; pae: 3-level with 2 MiB pages).
    #[arg(long, value_parser = ["pse", "pae"])]
    guest32: Option<String>,
    /// Reserve no guest-physical pool for new page tables (then `monitor
    /// vmem map` can only fill existing tables).
    #[arg(long)]
    no_table_pool: bool,
    /// No in-kernel interrupt controller (then `hlt` exits, and the
    /// debugger's 2 ms tick stands in for a timer interrupt).
    #[arg(long)]
    no_irqchip: bool,
    /// Run the vCPUs through the debugger's turnkey loop instead of this
    /// VMM's own loop with the hooks.
    #[arg(long)]
    turnkey: bool,
    /// Give the debugger this VMM's own kick instead of letting it signal
    /// the vCPU threads itself: a signal whose handler sets the vCPU's
    /// `immediate_exit`, as VMMs like Firecracker have. Ignored with
    /// --turnkey.
    #[arg(long)]
    own_kick: bool,
    /// Do not let the debugger trap watched pages through memslots (then
    /// watchpoints use debug registers, as in a VMM that keeps its slots).
    #[arg(long)]
    no_page_traps: bool,
    /// Let steps take interrupts and run the handlers they enter without
    /// stopping, as on hosts without KVM_GUESTDBG_BLOCKIRQ.
    #[arg(long)]
    skip_irq_handlers: bool,
    /// Serve a memory dump (QEMU's `dump-guest-memory` ELF or kdump file,
    /// makedumpfile's output) instead of booting a VM: registers and memory
    /// from the file; it does not run.
    #[arg(long, conflicts_with = "raw")]
    dump: Option<PathBuf>,
    /// Serve a raw RAM image (another VMM's snapshot) instead: the file is
    /// guest RAM from --ram-base; one vCPU in 64-bit mode with --cr3,
    /// --rip, --rsp, --cr0, --cr4, --efer.
    #[arg(long, requires = "cr3")]
    raw: Option<PathBuf>,
    /// Guest-physical address of the raw image's first byte.
    #[arg(long, default_value = "0", value_parser = parse_u64)]
    ram_base: u64,
    /// CR3 of the raw image's vCPU.
    #[arg(long, value_parser = parse_u64)]
    cr3: Option<u64>,
    /// RIP of the raw image's vCPU.
    #[arg(long, default_value = "0", value_parser = parse_u64)]
    rip: u64,
    /// RSP of the raw image's vCPU.
    #[arg(long, default_value = "0", value_parser = parse_u64)]
    rsp: u64,
    /// CR0 of the raw image's vCPU (default: PE, WP, PG and the usual bits).
    #[arg(long, default_value = "0x80050033", value_parser = parse_u64)]
    cr0: u64,
    /// CR4 of the raw image's vCPU (default: PAE and SSE; add LA57 for
    /// 5-level paging).
    #[arg(long, default_value = "0x6a0", value_parser = parse_u64)]
    cr4: u64,
    /// EFER of the raw image's vCPU (default: SCE, LME, LMA, NXE).
    #[arg(long, default_value = "0xd01", value_parser = parse_u64)]
    efer: u64,
    #[command(flatten)]
    serve: ServeOptions,
    /// Run this monitor command once the guest runs, as the VMM itself
    /// (`Debugger::monitor`), and print what it says before serving gdb;
    /// may be repeated. E.g. --monitor "vmem audit --all"
    #[arg(long = "monitor", value_name = "COMMAND")]
    monitor: Vec<String>,
    /// Name this process (at most 15 bytes) as tools that look for a VMM
    /// by name expect: gdb-pt-dump, behind pwndbg's default
    /// `kernel-vmmap page-tables`, runs `pgrep qemu-system`. E.g.
    /// --process-name qemu-system-vmm
    #[arg(long)]
    process_name: Option<String>,
}

/// How a debugger serves: a dump's symbols, and whether gdb may name host
/// files (shared by `demo --dump` and `vmem-gdbstub serve`).
#[derive(clap::Args, Debug)]
pub struct ServeOptions {
    /// With a dump: the kernel's System.map or /proc/kallsyms of that boot;
    /// gdb loads the symbol file made of it by itself (as the exec-file,
    /// read through the stub), so addresses get names. Without it, the
    /// kernel's own kallsyms tables in the dump are used where its
    /// VMCOREINFO names them (Linux 6.x).
    #[arg(long)]
    symbols: Option<PathBuf>,
    /// Also write the symbol file to FILE (a new file; an existing one or a
    /// link is refused), for debuggers that need a local copy: `lldb FILE
    /// -o "gdb-remote 9001"`.
    #[arg(long, value_name = "FILE")]
    save_symbols: Option<PathBuf>,
    /// Refuse gdb's monitor commands that name host files
    /// (`chardev-add file,…`, `vmem diff --dump`).
    #[arg(long)]
    no_host_files: bool,
}

/// A dump's debugger, and what to tell the user about its symbols.
pub struct Served {
    /// The debugger, to build.
    pub builder: DebuggerBuilder,
    /// Where the symbols come from and how lldb gets them (`None`: no
    /// symbols).
    pub symbols_note: Option<String>,
}

/// Whether gdb and the monitor commands can serve `dump`: an arm64 one
/// needs its kernel's table (from VMCOREINFO, else found in RAM).
pub fn servable(dump: &Dump) -> Result<(), String> {
    match dump.arch() {
        DumpArch::Aarch64 => dump
            .aarch64_kernel()
            .map(|kernel| {
                info!(
                    "the kernel's table (TTBR1): {:#x}, {}",
                    kernel.root, kernel.how
                )
            })
            .map_err(|why| format!("an arm64 dump whose kernel cannot be read: {why}")),
        _ => Ok(()),
    }
}

impl ServeOptions {
    /// A debugger for `dump` with these options: its symbols (from
    /// `--symbols`, else the dump's own kallsyms) made, saved and handed to
    /// gdb; host files allowed or not.
    pub fn apply(&self, dump: Dump) -> Result<Served, String> {
        servable(&dump)?;
        let (symbols, from) = match &self.symbols {
            Some(listing) => (
                Some(SymbolFile::from_listing(listing, dump.arch())?),
                listing.display().to_string(),
            ),
            None => match SymbolFile::from_dump(&dump) {
                Ok(symbols) => (
                    Some(symbols),
                    "the kernel in the dump (its kallsyms)".into(),
                ),
                Err(why) => {
                    info!("no symbols: {why}");
                    (None, String::new())
                }
            },
        };
        let mut builder = Debugger::from_dump(dump).host_files(!self.no_host_files);
        let Some(symbols) = symbols else {
            if self.save_symbols.is_some() {
                return Err(
                    "--save-symbols: the dump has no kallsyms to save (give --symbols)".into(),
                );
            }
            return Ok(Served {
                builder,
                symbols_note: None,
            });
        };
        if let Some(path) = &self.save_symbols {
            symbols
                .save(path)
                .map_err(|e| format!("--save-symbols {}: {e}", path.display()))?;
            info!("symbols written to {}", path.display());
        }
        builder = builder.exec_file_bytes(symbols.name, symbols.elf);
        let note = format!(
            "symbols of {from}: gdb loads them by itself; lldb needs a local copy: {}",
            match &self.save_symbols {
                Some(path) => format!("lldb {} -o \"gdb-remote PORT\"", path.display()),
                None => "write one with --save-symbols FILE".into(),
            }
        );
        Ok(Served {
            builder,
            symbols_note: Some(note),
        })
    }
}

/// A number in hex (0x…) or decimal.
fn parse_u64(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text}: {e}"))
}

/// Run the demo VM with the command line `args` (the first is the
/// program's name); the logger must be set up. Exits the process on an
/// error.
pub fn main_with(args: impl IntoIterator<Item = std::ffi::OsString>) {
    let args = Args::parse_from(args);
    if let Some(name) = &args.process_name {
        set_process_name(name);
    }
    if let Err(e) = run(args) {
        error!("{e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    if let Some(path) = &args.dump {
        return serve_dump(&args, path, || Dump::open(path));
    }
    if let (Some(path), Some(cr3)) = (&args.raw, args.cr3) {
        let cpu = DumpCpu::long_mode(args.rip, args.rsp, [args.cr0, cr3, args.cr4, args.efer]);
        return serve_dump(&args, path, || Dump::raw(path, args.ram_base, cpu));
    }
    let mode = match args.guest32.as_deref() {
        Some("pae") => vm::GuestMode::Protected(I686::PAE),
        Some(_) => vm::GuestMode::Protected(I686::PSE),
        None => vm::GuestMode::Long,
    };
    let (elf_path, elf) = match &args.kernel {
        Some(path) => {
            let elf = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            (std::fs::canonicalize(path).unwrap_or(path.clone()), elf)
        }
        None if args.guest32.is_some() => {
            (PathBuf::from(DEMO_GUEST32), DEMO_GUEST32_BYTES.to_vec())
        }
        None => (PathBuf::from(DEMO_GUEST), DEMO_GUEST_BYTES.to_vec()),
    };
    // Ctrl-C and SIGTERM are taken by a signal thread (blocked elsewhere).
    let signals = block_termination_signals();
    let vm = vm::create(&vm::Config {
        elf: &elf,
        elf_path: &elf_path.display().to_string(),
        vcpus: usize::from(args.vcpus),
        mem_mib: args.mem,
        table_pool: !args.no_table_pool,
        mode,
        irqchip: !args.no_irqchip,
        page_traps: !args.no_page_traps,
        skip_irq_handlers: args.skip_irq_handlers,
        own_kick: args.own_kick && !args.turnkey,
        host_files: !args.serve.no_host_files,
    })?;
    let listener = listener(&args)?;
    let spaces: Vec<String> = vm.spaces.iter().map(|s| format!("{s:#x}")).collect();
    println!(
        "demo VM: {} vCPUs, {} MiB, {mode:?}, address spaces {}",
        args.vcpus,
        args.mem,
        spaces.join(" ")
    );
    println!("guest ELF: {}", elf_path.display());

    let debugger = vm.debugger;
    let mut vcpu_threads = Vec::new();
    for (index, fd) in vm.vcpus.into_iter().enumerate() {
        let dbg = Arc::clone(&debugger);
        let turnkey = args.turnkey;
        let kicker = vm.kicker.clone();
        let handle = thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let mut fd = fd;
                let ended = match &kicker {
                    None if turnkey => dbg.run_vcpu(index, &mut fd, handle_exit),
                    Some(kicker) => kicker.serve(index, &mut fd, |fd| vcpu_loop(&dbg, index, fd)),
                    None => vcpu_loop(&dbg, index, &mut fd),
                };
                if let Err(e) = ended {
                    error!("vcpu {index}: {e}");
                }
            })
            .map_err(|e| e.to_string())?;
        vcpu_threads.push(handle);
    }
    run_monitor_commands(&debugger, &args.monitor);
    println!("gdb stub listening on {}", listener.describe());
    let _ = std::io::stdout().flush();
    spawn_gdb_server(&debugger, listener)?;
    wait_for_termination(&signals, &debugger);
    for t in vcpu_threads {
        let _ = t.join();
    }
    if let Some(path) = &args.unix {
        let _ = std::fs::remove_file(path);
    }
    info!("demo VM stopped");
    Ok(())
}

/// `--process-name`: this thread's name, which is the process's name
/// (`/proc/PID/comm`) when called from the main thread.
fn set_process_name(name: &str) {
    let Ok(name) = std::ffi::CString::new(name) else {
        error!("--process-name: no NUL bytes, please");
        return;
    };
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (the kernel takes
    // at most 16 bytes of it); `name` lives across the call.
    let done = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
    if done != 0 {
        error!("--process-name: {}", std::io::Error::last_os_error());
    }
}

/// `--monitor`: the VMM asks the debugger itself, as from its own console.
fn run_monitor_commands(debugger: &Debugger, commands: &[String]) {
    for command in commands {
        println!("(vmm) monitor {command}");
        match debugger.monitor(command) {
            Ok(text) => print!("{text}"),
            Err(e) => println!("error: {e}"),
        }
    }
}

/// Serve gdb from a thread of its own.
fn spawn_gdb_server(debugger: &Arc<Debugger>, listener: GdbListener) -> Result<(), String> {
    let gdb = Arc::clone(debugger);
    thread::Builder::new()
        .name("gdb".into())
        .spawn(move || {
            if let Err(e) = gdb.serve(listener) {
                error!("gdb server stopped: {e}");
            }
        })
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The listener `--listen` / `--unix` ask for.
fn listener(args: &Args) -> Result<GdbListener, String> {
    match &args.unix {
        Some(path) => GdbListener::unix(path),
        None => GdbListener::tcp(&args.listen),
    }
    .map_err(|e| format!("cannot listen for gdb: {e}"))
}

/// Serve a memory dump until SIGINT or SIGTERM.
fn serve_dump(
    args: &Args,
    path: &Path,
    open: impl FnOnce() -> Result<Dump, DumpError>,
) -> Result<(), String> {
    let signals = block_termination_signals();
    let started = Instant::now();
    let dump = open().map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let spaces: Vec<String> = dump
        .cpus()
        .iter()
        .map(|c| format!("{:#x}", c.sregs.cr3))
        .collect();
    let ram_mib = dump.ram().total_size() >> 20;
    let vcpus = dump.cpus().len();
    let served = args.serve.apply(dump)?;
    let debugger = Arc::new(served.builder.build());
    let listener = listener(args)?;
    println!(
        "dump {}: {vcpus} vCPUs, {ram_mib} MiB, CR3 {}, opened in {:.1} ms",
        path.display(),
        spaces.join(" "),
        took.as_secs_f64() * 1e3
    );
    run_monitor_commands(&debugger, &args.monitor);
    if let Some(note) = served.symbols_note {
        println!("{note}");
    }
    // The last line: whoever starts the demo may stop reading here.
    println!("gdb stub listening on {}", listener.describe());
    let _ = std::io::stdout().flush();
    spawn_gdb_server(&debugger, listener)?;
    wait_for_termination(&signals, &debugger);
    debugger.stop_serving();
    Ok(())
}

/// This VMM's vCPU loop: its own `KVM_RUN` loop with the debugger's hooks
/// around each run, as any VMM would embed the stub (the debugger kicks
/// the run itself, or through this VMM's kick with `--own-kick`).
fn vcpu_loop(
    debugger: &Debugger,
    index: usize,
    fd: &mut VcpuFd,
) -> Result<(), vmem_gdbstub::target::StubError> {
    let mut hooks = debugger.vcpu(index, fd)?;
    while hooks.before_run() == Entry::Run {
        let exit = fd.run();
        let owner = hooks.after_run(exit.as_ref().map(|_| ()).map_err(|e| e.errno()));
        let action = match (owner, exit) {
            (ExitOwner::Debugger, _) => ExitAction::Continue,
            (ExitOwner::Vmm, Ok(exit)) => handle_exit(index, exit),
            (ExitOwner::Vmm, Err(e)) if e.errno() == libc::EINTR => ExitAction::Continue,
            (ExitOwner::Vmm, Err(e)) => {
                error!("vcpu {index}: KVM_RUN failed: {e}");
                ExitAction::Shutdown
            }
        };
        if action == ExitAction::Shutdown {
            debugger.shut_down();
        }
    }
    Ok(())
}

/// The demo device's port: each 4-byte read gives 0xfeed_0000 + the
/// number of reads before it.
const DEVICE_PORT: u16 = 0x511;
/// Reads of the device's MMIO page give 0xcafe_0000 + the number of reads
/// before it.
const DEVICE_MMIO: u64 = layout::DEVICE_PA;

static DEVICE_PORT_READS: AtomicU32 = AtomicU32::new(0);
static DEVICE_MMIO_READS: AtomicU32 = AtomicU32::new(0);

/// Port I/O and MMIO the guest does outside the debugger's traps: a serial
/// port for output, and the demo device whose reads count themselves (the
/// tests check that every such exit reaches this VMM exactly once, also
/// while gdb steps over it).
fn handle_exit(vcpu: usize, exit: VcpuExit<'_>) -> ExitAction {
    match exit {
        VcpuExit::IoOut(port, data) => {
            if port == 0x3f8 {
                let _ = std::io::stderr().write_all(data);
            }
            ExitAction::Continue
        }
        VcpuExit::IoIn(DEVICE_PORT, data) if data.len() == 4 => {
            let n = DEVICE_PORT_READS.fetch_add(1, Ordering::Relaxed);
            data.copy_from_slice(&(0xfeed_0000 | (n & 0xffff)).to_le_bytes());
            ExitAction::Continue
        }
        VcpuExit::IoIn(_, data) => {
            data.fill(0xff);
            ExitAction::Continue
        }
        VcpuExit::MmioRead(DEVICE_MMIO, data) if data.len() == 4 => {
            let n = DEVICE_MMIO_READS.fetch_add(1, Ordering::Relaxed);
            data.copy_from_slice(&(0xcafe_0000 | (n & 0xffff)).to_le_bytes());
            ExitAction::Continue
        }
        VcpuExit::MmioRead(_, data) => {
            data.fill(0);
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(..) => ExitAction::Continue,
        other => {
            warn!("vcpu {vcpu}: unexpected exit {other:?}; shutting down");
            ExitAction::Shutdown
        }
    }
}

fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set, then masking SIGINT and
    // SIGTERM for this thread (inherited by the threads it spawns).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_termination(signals: &libc::sigset_t, debugger: &Debugger) {
    let mut signal = 0;
    // SAFETY: `signals` is a valid set blocked in every thread.
    unsafe { libc::sigwait(signals, &mut signal) };
    info!("signal {signal}: shutting down");
    debugger.shut_down();
}
