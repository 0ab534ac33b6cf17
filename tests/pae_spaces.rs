//! A PAE guest's address spaces: its CR3 names a 32-byte aligned PDPT
//! (several share a page), so a space registered by CR3
//! (`DebuggerBuilder::space`, `Debugger::add_space`) must keep bits 11:5.
//! Two spaces whose PDPTs share a page, on a raw RAM image built with the
//! core, served with a vCPU in 32-bit PAE paging.

use std::path::PathBuf;

use vmem_gdbstub::arch::I686;
use vmem_gdbstub::target::{flat_segment, Debugger, Dump, DumpCpu};
use vmem_gdbstub::vmem::{self, BasicMapping, BufferTables, MapRequest, MappingKind};

const RW: MappingKind = MappingKind::Basic(BasicMapping {
    readable: true,
    writable: true,
    executable: true,
});
const RAM: usize = 4 << 20;
/// The page holding both PDPTs, and the two within it.
const PDPTS: u64 = 0x10_0000;
const FIRST: u64 = PDPTS;
const SECOND: u64 = PDPTS + 0x20;
const VA: u64 = 0x40_0000;

#[test]
fn pae_roots_keep_their_32_byte_alignment() {
    let fmt = I686::PAE;
    let t = BufferTables::with_root(vec![0u8; RAM], 0, 0x20_0000..0x40_0000, FIRST).unwrap();
    // One VA, two frames: which one a space maps says which PDPT was walked.
    vmem::map(&fmt, &t, MapRequest::new(VA, 0x30_0000, 0x1000, RW)).unwrap();
    t.set_root(SECOND);
    vmem::map(&fmt, &t, MapRequest::new(VA, 0x38_0000, 0x1000, RW)).unwrap();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pae-spaces.ram");
    std::fs::write(&path, t.into_inner()).unwrap();

    // 32-bit code, CR0.PG|WP|PE, CR4.PAE, the first PDPT current (CR3's
    // low bits 4:3 are PWT/PCD: set, they must be dropped).
    let mut cpu = DumpCpu::long_mode(VA, 0, [0x8001_0001, FIRST | 0x18, 0x20, 0]);
    cpu.sregs.cs = flat_segment(0x8, true, false);
    let dbg = Debugger::from_dump(Dump::raw(&path, 0, cpu).unwrap())
        .space(SECOND | 0x18)
        .build();
    let out = dbg.monitor("vmem spaces").unwrap();
    let expect = [
        format!("space {FIRST:#x} (current on vcpu 0"),
        format!("space {SECOND:#x} (registered"),
    ];
    for header in &expect {
        assert!(out.contains(header.as_str()), "{header} in\n{out}");
    }
    let walk = dbg
        .monitor(&format!("vmem walk --space {:#x}", SECOND | 0x18))
        .unwrap();
    assert!(walk.contains("0000000000380000-0000000000380fff"), "{walk}");

    // Added at run time: the same rule.
    let dbg = Debugger::from_dump(Dump::raw(&path, 0, cpu).unwrap()).build();
    dbg.add_space(SECOND | 0x18);
    let out = dbg.monitor("vmem spaces").unwrap();
    assert!(out.contains(&expect[1]), "{out}");
}
