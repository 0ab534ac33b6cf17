//! Creating the VM: RAM, guest image, page tables, interrupt controller,
//! vCPUs in long mode, and the debugger over them.

use std::sync::Arc;

use kvm_bindings::{kvm_mp_state, kvm_segment, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use log::info;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmem_gdbstub::arch::{Amd64, PageTableFormat, I686};
use vmem_gdbstub::target::{flat_segment, vcpu_mmu, Debugger, GuestRam, KvmMemslots, StepIrqs};

use super::kick::VcpuKicker;
use super::layout::{self, GDT_ADDR};
use super::loader;

use vmem_gdbstub::arch::controls::{
    CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_PAE, CR4_PSE,
    EFER_LMA, EFER_LME, EFER_NXE,
};

/// The CPU mode the guest starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    /// 64-bit long mode, 4-level paging.
    Long,
    /// 32-bit protected mode with this paging mode.
    Protected(I686),
}

/// LAPIC timer interrupts per second and vCPU, with an irqchip.
pub const TIMER_HZ: u64 = 100;

/// What the VMM needs after setup. It keeps its VM and vCPU fds; the
/// debugger only borrows them.
pub struct Vm {
    pub debugger: Arc<Debugger>,
    pub spaces: Vec<u64>,
    pub vcpus: Vec<VcpuFd>,
    /// This VMM's own kick (`--own-kick`), given to the debugger too.
    pub kicker: Option<Arc<VcpuKicker>>,
    /// Kept alive as long as the vCPUs run.
    pub _vm: Arc<VmFd>,
}

/// What to boot and how.
pub struct Config<'a> {
    pub elf: &'a [u8],
    pub elf_path: &'a str,
    pub vcpus: usize,
    pub mem_mib: u64,
    pub table_pool: bool,
    pub mode: GuestMode,
    /// KVM's in-kernel interrupt controller and a LAPIC timer (else `hlt`
    /// exits and the debugger's 2 ms tick stands in for a timer).
    pub irqchip: bool,
    /// Let the debugger lay out RAM memslots to trap watched pages (else
    /// this VMM registers RAM itself and watchpoints use debug registers).
    pub page_traps: bool,
    /// Steps run interrupt handlers they enter instead of holding
    /// interrupts back.
    pub skip_irq_handlers: bool,
    /// This VMM runs `KVM_RUN` itself and gives the debugger its own kick.
    pub own_kick: bool,
    /// gdb's monitor commands may open host files the client names.
    pub host_files: bool,
}

/// Where RAM stops below 4 GiB and where it goes on: the 32-bit MMIO gap
/// VMMs leave for devices (RAM over 3 GiB is split around it).
const MMIO_GAP: std::ops::Range<u64> = 0xc000_0000..0x1_0000_0000;

/// `size` bytes of RAM from address 0, split around [`MMIO_GAP`]: the
/// ranges, and the end of the last.
fn ram_layout(size: u64) -> (Vec<(GuestAddress, usize)>, u64) {
    if size <= MMIO_GAP.start {
        return (vec![(GuestAddress(0), size as usize)], size);
    }
    let above = size - MMIO_GAP.start;
    let ranges = vec![
        (GuestAddress(0), MMIO_GAP.start as usize),
        (GuestAddress(MMIO_GAP.end), above as usize),
    ];
    (ranges, MMIO_GAP.end + above)
}

/// Build the VM with `vcpus` vCPUs and `mem_mib` MiB of RAM, running `elf`.
pub fn create(config: &Config<'_>) -> Result<Vm, String> {
    let Config {
        elf,
        elf_path,
        vcpus,
        mem_mib,
        table_pool,
        mode,
        irqchip,
        page_traps,
        skip_irq_handlers,
        own_kick,
        host_files,
    } = *config;
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let vm = Arc::new(kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?);
    let _ = vm.set_tss_address(0xfffb_d000);
    if irqchip {
        vm.create_irq_chip()
            .map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
        info!("in-kernel irqchip; LAPIC timer at {TIMER_HZ} Hz per vCPU");
    }
    let (ranges, ram_end) = ram_layout(mem_mib << 20);
    let guest_memory =
        GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|e| format!("guest RAM: {e}"))?;
    let memory = GuestRam::new(guest_memory);

    let image = loader::load(elf, &memory)?;
    layout::write_gdt(&memory, mode != GuestMode::Long).map_err(|e| e.to_string())?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    // The tables use only page sizes the vCPU has (its CPUID decides).
    let long = Amd64::with_cpu(false, vcpu_mmu(cpuid.as_slice(), CR0_WP, 0, EFER_NXE));
    if long.leaf_allowed(1) {
        info!("direct map in 1 GiB pages");
    } else {
        info!("direct map in 2 MiB pages: this vCPU has no 1 GiB pages (CPUID Page1GB clear)");
    }
    let spaces = match mode {
        // The third space is left for `monitor vmem spaces --scan` to find:
        // neither registered nor given to the guest.
        GuestMode::Long => layout::build_spaces(&long, &memory, ram_end, &image.segments)
            .map(|[a, b, _hidden]| vec![a, b]),
        GuestMode::Protected(paging) => {
            layout::build_space_32(&memory, ram_end, &image.segments, paging).map(|root| vec![root])
        }
    }
    .map_err(|e| format!("page tables: {e}"))?;
    if mode == GuestMode::Long {
        layout::write_decoys(&memory, spaces[0]).map_err(|e| format!("decoy pages: {e}"))?;
    }
    if let Some(roots) = loader::symbol(elf, "space_roots") {
        // The guest finds both CR3 values here (it switches between them).
        let paddr = roots.wrapping_sub(layout::KERNEL_BASE);
        let bytes: Vec<u8> = spaces.iter().flat_map(|r| r.to_le_bytes()).collect();
        memory
            .write(paddr, &bytes)
            .map_err(|e| format!("space_roots: {e}"))?;
    }
    if let Some(hz) = loader::symbol(elf, "timer_hz") {
        // The guest starts its LAPIC timer only if there is an irqchip.
        let rate = if irqchip { TIMER_HZ } else { 0 };
        memory
            .write(hz.wrapping_sub(layout::KERNEL_BASE), &rate.to_le_bytes())
            .map_err(|e| format!("timer_hz: {e}"))?;
    }

    let mut fds = Vec::with_capacity(vcpus);
    for index in 0..vcpus {
        let fd = vm
            .create_vcpu(index as u64)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        fd.set_cpuid2(&cpuid)
            .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
        setup_vcpu(&fd, mode, spaces[0], image.entry, index as u64)?;
        if irqchip {
            // With an in-kernel LAPIC, application processors start
            // waiting for a SIPI: start them at the entry point instead.
            fd.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(|e| format!("KVM_SET_MP_STATE: {e}"))?;
        }
        fds.push(fd);
    }
    // RAM memslots are laid out by the debugger's ready PageTraps (this
    // VMM has no other slots), so watched pages can trap.
    let memslots = KvmMemslots::new(&vm, &memory, 0).map_err(|e| format!("memslots: {e}"))?;
    let mut builder =
        Debugger::builder(&vm, vcpus, memory).map_err(|e| format!("the debugger: {e}"))?;
    if page_traps {
        builder = builder.page_traps(memslots);
    }
    if skip_irq_handlers {
        builder = builder.step_irqs(StepIrqs::SkipHandlers);
    }
    let kicker = own_kick.then(|| Arc::new(VcpuKicker::new(vcpus)));
    if let Some(kicker) = &kicker {
        let kicker = Arc::clone(kicker);
        builder = builder.kick(move |index| kicker.kick(index));
    }
    if mode == GuestMode::Long {
        // gdb would take a 32-bit ELF's architecture over our x86-64 one.
        builder = builder.exec_file_bytes(elf_path, elf.to_vec());
    }
    if table_pool {
        builder = builder.table_pool(layout::SPARE_TABLES);
    }
    builder = builder.host_files(host_files);
    for &space in &spaces {
        builder = builder.space(space);
    }
    Ok(Vm {
        debugger: Arc::new(builder.build()),
        spaces,
        vcpus: fds,
        kicker,
        _vm: vm,
    })
}

fn setup_vcpu(
    fd: &VcpuFd,
    mode: GuestMode,
    cr3: u64,
    entry: u64,
    index: u64,
) -> Result<(), String> {
    let long = mode == GuestMode::Long;
    let kernel_base = if long {
        layout::KERNEL_BASE
    } else {
        layout::KERNEL_BASE_32
    };
    let mut sregs = fd.get_sregs().map_err(|e| e.to_string())?;
    sregs.cs = flat_segment(0x08, true, long);
    let data = flat_segment(0x10, false, long);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        limit: 0xffff,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    // GDTR is linear: use the kernel-window alias of the GDT page.
    sregs.gdt.base = kernel_base + GDT_ADDR;
    sregs.gdt.limit = 23;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = cr3;
    (sregs.cr4, sregs.efer) = match mode {
        GuestMode::Long => (
            CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT,
            EFER_LME | EFER_LMA | EFER_NXE,
        ),
        GuestMode::Protected(paging) if paging == I686::PAE => (CR4_PAE | CR4_OSFXSR, EFER_NXE),
        GuestMode::Protected(_) => (CR4_PSE | CR4_OSFXSR, 0),
    };
    fd.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let back = fd.get_sregs().map_err(|e| e.to_string())?;
    if back.cr0 & CR0_PG == 0 {
        // Seen on kvm_pvm: it keeps CR0.PG only in long mode.
        return Err(format!(
            "this KVM host cannot run {mode:?} guests: it cleared CR0.PG (set {:#x}, read back {:#x})",
            sregs.cr0, back.cr0
        ));
    }
    let mut regs = fd.get_regs().map_err(|e| e.to_string())?;
    regs.rip = entry;
    regs.rdi = index;
    regs.rflags = 0x2;
    fd.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    let mut fpu = fd.get_fpu().map_err(|e| e.to_string())?;
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    fd.set_fpu(&fpu).map_err(|e| format!("KVM_SET_FPU: {e}"))
}
