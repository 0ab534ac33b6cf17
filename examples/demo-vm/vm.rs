//! Creating the VM: RAM, guest image, page tables, vCPUs in long mode.

use std::sync::Arc;

use kvm_bindings::{kvm_segment, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use vmem_gdbstub::target::{Debugger, GuestMemory, GuestRam, RamRegion};

use crate::layout::{self, GDT_ADDR};
use crate::loader;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// What the VMM needs after setup.
pub struct Vm {
    pub debugger: Arc<Debugger>,
    pub spaces: [u64; 2],
}

/// Build the VM with `vcpus` vCPUs and `mem_mib` MiB of RAM, running `elf`.
pub fn create(
    elf: &[u8],
    elf_path: &str,
    vcpus: usize,
    mem_mib: u64,
    table_pool: bool,
) -> Result<Vm, String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let _ = vm.set_tss_address(0xfffb_d000);
    let ram_size = mem_mib << 20;
    let ram = Arc::new(GuestRam::new(ram_size as usize).map_err(|e| format!("guest RAM: {e}"))?);
    let memory = GuestMemory::new(vec![RamRegion::new(0, ram)]).map_err(|e| e.to_string())?;

    let image = loader::load(elf, &memory)?;
    layout::write_gdt(&memory).map_err(|e| e.to_string())?;
    let spaces = layout::build_spaces(&memory, ram_size, &image.segments)
        .map_err(|e| format!("page tables: {e}"))?;
    if let Some(roots) = loader::symbol(elf, "space_roots") {
        // The guest finds both CR3 values here (it switches between them).
        let paddr = roots.wrapping_sub(layout::KERNEL_BASE);
        let bytes: Vec<u8> = spaces.iter().flat_map(|r| r.to_le_bytes()).collect();
        memory
            .write(paddr, &bytes)
            .map_err(|e| format!("space_roots: {e}"))?;
    }

    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    let mut fds = Vec::with_capacity(vcpus);
    for index in 0..vcpus {
        let fd = vm
            .create_vcpu(index as u64)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        fd.set_cpuid2(&cpuid)
            .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
        setup_long_mode(&fd, spaces[0], image.entry, index as u64)?;
        fds.push(fd);
    }
    let mut debugger = Debugger::new(vm, fds, memory).map_err(|e| format!("memslots: {e}"))?;
    debugger.set_exec_file(elf_path);
    if table_pool {
        debugger.set_table_pool(layout::SPARE_TABLES);
    }
    for space in spaces {
        debugger.add_space(space);
    }
    Ok(Vm {
        debugger: Arc::new(debugger),
        spaces,
    })
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn setup_long_mode(fd: &VcpuFd, cr3: u64, entry: u64, index: u64) -> Result<(), String> {
    let mut sregs = fd.get_sregs().map_err(|e| e.to_string())?;
    sregs.cs = segment(0x08, true);
    let data = segment(0x10, false);
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
    sregs.gdt.base = layout::KERNEL_BASE + GDT_ADDR;
    sregs.gdt.limit = 23;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
    fd.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
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
