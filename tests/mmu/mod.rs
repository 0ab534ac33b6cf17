//! A KVM guest whose own MMU is the oracle: random 4-level tables in its
//! RAM, and the probe of `probe64.S` making real loads, stores and
//! instruction fetches at CPL 0 and CPL 3 through them.

pub mod assemble;
pub mod rng;
pub mod tables;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use kvm_bindings::{kvm_segment, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmem_gdbstub::arch::{Amd64, X86Cpu};
use vmem_gdbstub::target::{
    flat_segment, vcpu_mmu, Debugger, ExitAction, GdbListener, GuestRam, KvmMemslots,
};

/// Where the harness is seen: HV + its physical address (PML4 slot 510).
pub const HV: u64 = 0xffff_ff00_0000_0000;
pub const RAM: u64 = 8 << 20;
const GDT: u64 = 0x1000;
const IDT: u64 = 0x2000;
const TSS: u64 = 0x3000;
const HARNESS_PDPT: u64 = 0x4000;
const HARNESS_PD: u64 = 0x5000;
const HARNESS_PT: u64 = 0x6000;
const USER_STUBS: u64 = 0xf000;
const CODE: u64 = 0x10000;
const EXCEPTION_STACK: u64 = 0x1c000;
const STACK: u64 = 0x20000;
const N_PROBES: u64 = 0x20000;
const PROBES: u64 = 0x21000;
const RESULTS: u64 = 0x30000;
/// At most this many probes fit below the table pool.
pub const MAX_PROBES: usize = (0x10_0000 - RESULTS as usize) / 96;

use vmem_gdbstub::arch::controls::{
    CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_OSFXSR, CR4_PAE, CR4_SMAP, CR4_SMEP,
    EFER_LMA, EFER_LME, EFER_NXE,
};

/// One access's outcome as the guest saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: u64,
    pub value: u64,
}

/// The six outcomes of one VA: load, store, fetch at CPL 0, then at CPL 3.
pub type Probe = [Outcome; 6];

/// The control registers a run uses.
#[derive(Debug, Clone, Copy)]
pub struct Controls {
    pub wp: bool,
    pub nxe: bool,
    pub smep: bool,
    pub smap: bool,
}

impl Controls {
    fn cr0(&self) -> u64 {
        CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG | if self.wp { CR0_WP } else { 0 }
    }
    fn cr4(&self) -> u64 {
        CR4_PAE
            | CR4_OSFXSR
            | if self.smep { CR4_SMEP } else { 0 }
            | if self.smap { CR4_SMAP } else { 0 }
    }
    fn efer(&self) -> u64 {
        EFER_LME | EFER_LMA | if self.nxe { EFER_NXE } else { 0 }
    }
}

/// Assemble the probe into `dir`.
pub fn build_probe(dir: &Path) -> PathBuf {
    assemble::x86_probe(dir, "probe64", HV + CODE)
}

/// The vCPU model KVM offers guests here, with `controls`.
pub fn vcpu_model(controls: &Controls) -> X86Cpu {
    let kvm = Kvm::new().expect("/dev/kvm");
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_SUPPORTED_CPUID");
    vcpu_mmu(
        cpuid.as_slice(),
        controls.cr0(),
        controls.cr4(),
        controls.efer(),
    )
}

/// Guest RAM: every 8-byte word holds `(its address << 8) | 0xcc`, so a
/// load tells where it read and a fetch meets `int3`.
pub fn fresh_ram() -> GuestRam {
    let ranges = [(GuestAddress(0), RAM as usize)];
    let mem = GuestRam::new(GuestMemoryMmap::<()>::from_ranges(&ranges).expect("guest RAM"));
    let words: Vec<u8> = (0..RAM / 8)
        .flat_map(|i| ((i * 8) << 8 | 0xcc).to_le_bytes())
        .collect();
    mem.write(0, &words).unwrap();
    mem
}

fn write_u64(mem: &GuestRam, pa: u64, value: u64) {
    mem.write(pa, &value.to_le_bytes()).unwrap();
}

/// The harness: its own tables (root slot 510), GDT, IDT, TSS, user
/// stubs, code, the probe list. Returns the entry point.
fn install_harness(mem: &GuestRam, elf_path: &Path, root: u64, probes: &[u64]) -> u64 {
    use elf::endian::AnyEndian;
    let bytes = std::fs::read(elf_path).unwrap();
    let file = elf::ElfBytes::<AnyEndian>::minimal_parse(&bytes).unwrap();
    for ph in file
        .segments()
        .unwrap()
        .iter()
        .filter(|p| p.p_type == elf::abi::PT_LOAD)
    {
        let data = &bytes[ph.p_offset as usize..(ph.p_offset + ph.p_filesz) as usize];
        mem.write(ph.p_vaddr - HV, data).unwrap();
    }
    let (symtab, strtab) = file.symbol_table().unwrap().unwrap();
    let symbol = |name: &str| {
        symtab
            .iter()
            .find(|s| strtab.get(s.st_name as usize).ok() == Some(name))
            .unwrap_or_else(|| panic!("no symbol {name}"))
            .st_value
    };
    // Tables: root[510] -> PDPT -> PD -> PT, 4 KiB pages of the first
    // 1 MiB; the user stub page (and the path to it) user-accessible.
    write_u64(mem, root + 510 * 8, HARNESS_PDPT | 0x7);
    write_u64(mem, HARNESS_PDPT, HARNESS_PD | 0x7);
    write_u64(mem, HARNESS_PD, HARNESS_PT | 0x7);
    for page in 0..256u64 {
        let user = if page * 0x1000 == USER_STUBS { 4 } else { 0 };
        write_u64(mem, HARNESS_PT + page * 8, (page * 0x1000) | 0x3 | user);
    }
    for page in (HARNESS_PDPT..HARNESS_PT + 0x1000).step_by(0x1000) {
        // Clear what fresh_ram wrote besides the entries above; entry 511
        // stays absent with 0xcc low (the root reaches these tables as
        // pages through its self-maps, and the probe fetches there).
        for i in 0..511 {
            if read_u64(mem, page + i * 8) & 1 == 0 {
                write_u64(mem, page + i * 8, 0);
            }
        }
        write_u64(mem, page + 511 * 8, 0xcc);
    }
    // GDT: null, kernel code, kernel data, user code, user data.
    for (i, d) in [
        0,
        0x00af_9a00_0000_ffffu64,
        0x00cf_9200_0000_ffff,
        0x00af_fa00_0000_ffff,
        0x00cf_f200_0000_ffff,
    ]
    .iter()
    .enumerate()
    {
        write_u64(mem, GDT + i as u64 * 8, *d);
    }
    // IDT: interrupt gates to the probe's handlers; #BP callable from CPL 3.
    let mut gates: Vec<(u64, u64)> = [0, 1, 2, 4, 5, 7, 8, 10, 11, 12, 13, 16, 17, 18, 19]
        .iter()
        .map(|&v| (v, symbol(&format!("vec_{v}"))))
        .collect();
    gates.extend([
        (3, symbol("bp_handler")),
        (6, symbol("ud_handler")),
        (14, symbol("pf_handler")),
    ]);
    for v in 0..256u64 {
        write_u64(mem, IDT + v * 16, 0);
        write_u64(mem, IDT + v * 16 + 8, 0);
    }
    for (vector, handler) in gates {
        let dpl: u64 = if vector == 3 { 3 } else { 0 };
        let low = (handler & 0xffff)
            | 0x08 << 16
            | (0x8e | dpl << 5) << 40
            | ((handler >> 16) & 0xffff) << 48;
        write_u64(mem, IDT + vector * 16, low);
        write_u64(mem, IDT + vector * 16 + 8, handler >> 32);
    }
    // TSS: rsp0 for exceptions from CPL 3.
    mem.write(TSS, &[0u8; 104]).unwrap();
    mem.write(TSS + 4, &(HV + EXCEPTION_STACK).to_le_bytes())
        .unwrap();
    // User stubs: load (mov (%rdi),%rax; ud2), store (lock addq $0,(%rdi); ud2).
    mem.write(USER_STUBS, &[0x48, 0x8b, 0x07, 0x0f, 0x0b])
        .unwrap();
    mem.write(
        USER_STUBS + 0x10,
        &[0xf0, 0x48, 0x83, 0x07, 0x00, 0x0f, 0x0b],
    )
    .unwrap();
    // The probe list, and an empty result array.
    mem.write(RESULTS, &vec![0u8; probes.len() * 96]).unwrap();
    write_u64(mem, N_PROBES, probes.len() as u64);
    for (i, va) in probes.iter().enumerate() {
        write_u64(mem, PROBES + i as u64 * 8, *va);
    }
    symbol("_start")
}

pub fn read_u64(mem: &GuestRam, pa: u64) -> u64 {
    mem.read_u64(pa).unwrap()
}

/// What a run gives back: the guest's outcomes and gdb's `gva2gpa` answers.
pub struct Run {
    pub probes: Vec<Probe>,
    pub gva2gpa: Vec<String>,
}

/// Run the probe over `probes` through the tables rooted at `root` in
/// `mem` (which must come from [`fresh_ram`] with the tables written),
/// then ask the stub, through gdb, `monitor gva2gpa` for each VA.
pub fn run(elf: &Path, mem: GuestRam, root: u64, probes: &[u64], controls: &Controls) -> Run {
    assert!(probes.len() <= MAX_PROBES);
    let entry = install_harness(&mem, elf, root, probes);
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let _ = vm.set_tss_address(0xfffb_d000);
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let fd = vm.create_vcpu(0).unwrap();
    fd.set_cpuid2(&cpuid).unwrap();
    let mut sregs = fd.get_sregs().unwrap();
    sregs.cs = flat_segment(0x08, true, true);
    let data = flat_segment(0x10, false, true);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = kvm_segment {
        base: HV + TSS,
        limit: 0x67,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    sregs.gdt.base = HV + GDT;
    sregs.gdt.limit = 0x27;
    sregs.idt.base = HV + IDT;
    sregs.idt.limit = 0xfff;
    (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer) =
        (controls.cr0(), root, controls.cr4(), controls.efer());
    fd.set_sregs(&sregs).unwrap();
    let back = fd.get_sregs().unwrap();
    assert_eq!(
        (back.cr0, back.cr4, back.efer),
        (sregs.cr0, sregs.cr4, sregs.efer),
        "KVM keeps the control registers"
    );
    let mut regs = fd.get_regs().unwrap();
    (regs.rip, regs.rsp, regs.rflags) = (entry, HV + STACK, 2);
    fd.set_regs(&regs).unwrap();

    let vm = Arc::new(vm);
    let memslots = KvmMemslots::new(&vm, &mem, 0).expect("memslots");
    let dbg = Arc::new(
        Debugger::builder(&vm, 1, mem)
            .expect("debugger")
            .page_traps(memslots)
            .build(),
    );
    let (done_tx, done_rx) = mpsc::channel();
    let vcpu = {
        let dbg = Arc::clone(&dbg);
        let mut fd = fd;
        thread::spawn(move || {
            dbg.run_vcpu(0, &mut fd, |_, exit| match exit {
                VcpuExit::IoOut(0xf4, _) => {
                    let _ = done_tx.send(Ok(()));
                    ExitAction::Continue
                }
                VcpuExit::MmioRead(_, data) => {
                    data.fill(0xff);
                    ExitAction::Continue
                }
                VcpuExit::MmioWrite(..) | VcpuExit::IoOut(..) => ExitAction::Continue,
                other => {
                    let _ = done_tx.send(Err(format!("{other:?}")));
                    ExitAction::Shutdown
                }
            })
        })
    };
    let outcome = done_rx.recv_timeout(Duration::from_secs(30));
    let finished = matches!(outcome, Ok(Ok(())));
    let gva2gpa = if finished {
        ask_gdb(&dbg, probes)
    } else {
        Vec::new()
    };
    let results: Vec<Probe> = (0..probes.len() as u64)
        .map(|i| {
            std::array::from_fn(|k| Outcome {
                status: read_u64(dbg.memory(), RESULTS + i * 96 + k as u64 * 16),
                value: read_u64(dbg.memory(), RESULTS + i * 96 + k as u64 * 16 + 8),
            })
        })
        .collect();
    let stuck_at = results
        .iter()
        .position(|p| {
            p[0] == Outcome {
                status: 0,
                value: 0,
            } || p[5]
                == Outcome {
                    status: 0,
                    value: 0,
                }
        })
        .map(|i| (i, probes[i], results[i]));
    dbg.shut_down();
    let _ = vcpu.join();
    assert!(
        finished,
        "the probe did not finish: {outcome:?}; first probe without a result: {stuck_at:x?}"
    );
    Run {
        probes: results,
        gva2gpa,
    }
}

/// `monitor gva2gpa VA` for every VA, through the real gdb and the stub.
fn ask_gdb(dbg: &Arc<Debugger>, probes: &[u64]) -> Vec<String> {
    let listener = GdbListener::tcp("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = {
        let dbg = Arc::clone(dbg);
        thread::spawn(move || {
            let _ = dbg.serve(listener);
        })
    };
    let script =
        std::env::temp_dir().join(format!("mmu-gva2gpa-{}-{port}.gdb", std::process::id()));
    let mut text = format!("set architecture i386:x86-64\ntarget remote 127.0.0.1:{port}\n");
    for va in probes {
        text.push_str(&format!("monitor gva2gpa {va:#x}\n"));
    }
    text.push_str("detach\n");
    std::fs::write(&script, text).unwrap();
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-x"])
        .arg(&script)
        .output()
        .expect("gdb");
    let _ = std::fs::remove_file(&script);
    dbg.stop_serving();
    server.join().expect("serve returns once stopped");
    // gdb prints monitor output on stderr in batch mode.
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .filter(|l| l.starts_with("gpa: ") || *l == "Unmapped")
        .map(String::from)
        .collect()
}

pub use tables::{sample_vas, RandomTables};

/// The format our walker uses for a run.
pub fn format_for(controls: &Controls) -> Amd64 {
    Amd64::with_cpu(false, vcpu_model(controls))
}
