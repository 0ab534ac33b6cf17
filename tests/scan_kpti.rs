//! `vmem spaces --scan shared` when the vCPU was stopped in user mode
//! under KPTI, holding a process's user copy (whose kernel half is the
//! entry code only): the other processes are found by the kernel copy's
//! half all the same, each with its user copy, on a raw RAM image built
//! here with the vmem core.

use std::path::PathBuf;

use vmem_gdbstub::arch::Amd64;
use vmem_gdbstub::target::{Debugger, Dump, DumpCpu};
use vmem_gdbstub::vmem::{
    self, BasicMapping, BufferTables, MapRequest, MappingKind, PageSize, TableOps, TableReadOps,
};

const RW: MappingKind = MappingKind::Basic(BasicMapping {
    readable: true,
    writable: true,
    executable: false,
});
const RX: MappingKind = MappingKind::Basic(BasicMapping {
    readable: true,
    writable: false,
    executable: true,
});
const RAM: usize = 16 << 20;
const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
const ENTRY_TEXT: u64 = 0xffff_ffff_8100_0000;
const NX: u64 = 1 << 63;

/// A process as Linux builds it with KPTI: the kernel copy (2-page
/// aligned) with the kernel half and user pages marked NX at the top,
/// the user copy on the next page with the same user half and only the
/// entry text above. Returns the kernel copy's root.
fn process(t: &BufferTables<Vec<u8>>, kernel: u64, entry: u64, n: u64) -> u64 {
    let fmt = Amd64::FOUR_LEVEL;
    // Two neighbouring tables, the lower 8 KiB aligned.
    let mut root = t.alloc_table().unwrap();
    if !root.is_multiple_of(0x2000) {
        root = t.alloc_table().unwrap();
    }
    let user = t.alloc_table().unwrap();
    assert_eq!((root % 0x2000, user), (0, root + 0x1000));
    t.set_root(root);
    let user_page = MapRequest::new(0x40_0000, 0x80_0000 + n * 0x1000, 0x1000, RW).user();
    vmem::map(&fmt, t, user_page).unwrap();
    for index in 0..512 {
        let raw = t.read_entry(root + index * 8).unwrap();
        if index < 256 {
            t.write_entry(root + index * 8, raw | if raw & 1 != 0 { NX } else { 0 })
                .unwrap();
            t.write_entry(user + index * 8, raw).unwrap();
        } else {
            let kernel_raw = t.read_entry(kernel + index * 8).unwrap();
            t.write_entry(root + index * 8, kernel_raw).unwrap();
            let entry_raw = t.read_entry(entry + index * 8).unwrap();
            t.write_entry(user + index * 8, entry_raw).unwrap();
        }
    }
    root
}

#[test]
fn a_vcpu_on_a_user_copy_still_finds_every_process() {
    let fmt = Amd64::FOUR_LEVEL;
    let t = BufferTables::new(vec![0u8; RAM], 0, 0..(1 << 20)).unwrap();
    let kernel = t.root_table();
    vmem::map(
        &fmt,
        &t,
        MapRequest::new(DIRECT_MAP, 0, RAM as u64, RW).max_page_size(PageSize::SIZE_2M),
    )
    .unwrap();
    vmem::map(&fmt, &t, MapRequest::new(ENTRY_TEXT, 0x20_0000, 0x1000, RX)).unwrap();
    // The entry text alone, as the user copies' kernel half.
    let entry = t.alloc_table().unwrap();
    t.set_root(entry);
    vmem::map(&fmt, &t, MapRequest::new(ENTRY_TEXT, 0x20_0000, 0x1000, RX)).unwrap();
    let roots: Vec<u64> = (0..3).map(|n| process(&t, kernel, entry, n)).collect();
    let ram = t.into_inner();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scan-kpti.ram");
    std::fs::write(&path, &ram).unwrap();

    // The vCPU is in the second process's user code: CR3 is its user copy.
    let cr3 = roots[1] + 0x1000;
    let cpu = DumpCpu::long_mode(0x40_0000, 0, [0x8005_0033, cr3, 0x20, 0xd00]);
    let dbg = Debugger::from_dump(Dump::raw(&path, 0, cpu).unwrap()).build();
    let out = dbg.monitor("vmem spaces --scan shared").unwrap();
    for &root in &roots {
        let reported = |line: &str| line.starts_with(&format!("space {root:#x}: 1 mappings"));
        assert!(out.lines().any(reported), "{root:#x} in\n{out}");
        if root + 0x1000 != cr3 {
            let copy = format!("space {:#x}: KPTI user copy of {root:#x}", root + 0x1000);
            assert!(out.contains(&copy), "{copy} in\n{out}");
        }
    }
    // The three processes, two user copies (the third is the vCPU's) and
    // the kernel's own root (no user half).
    assert!(out.contains("6 new address spaces"), "{out}");
}
