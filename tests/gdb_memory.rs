//! Memory reads answered by our own packet layer: `m` (hex, run-length
//! encoded) and gdb's binary `x`. Checked byte for byte against what was
//! written, through a raw RSP client and through the real gdb (gdb 18's
//! `x` too, when one is installed).

mod demo;

use demo::rsp::{Reply, Rsp};
use demo::rsp_decode::{expand_runs, unhex};

fn unescape(data: &[u8]) -> Vec<u8> {
    vmem_gdbstub::target::rsp::unescape(data).expect("escaped byte")
}
use demo::DemoVm;

/// 32 MiB into the demo's direct map: RAM the guest does not use.
const SCRATCH: u64 = 0xffff_8880_0200_0000;

/// Bytes that exercise every encoding case: long runs, framing bytes that
/// must be escaped, runs of escaped bytes, and noise.
fn pattern() -> Vec<u8> {
    let mut data = vec![0u8; 300];
    data.extend(b"#$}*".iter().cycle().take(64));
    data.extend(std::iter::repeat_n(b'}', 20));
    data.extend(std::iter::repeat_n(0x5du8, 7));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    data.extend((0..3000).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    data.extend(std::iter::repeat_n(0xffu8, 729));
    data
}

fn packet(reply: Reply) -> Vec<u8> {
    match reply {
        Reply::Packet(p) => p,
        other => panic!("no reply: {other:?}"),
    }
}

#[test]
fn hex_and_binary_reads_return_what_was_written() {
    let Some(vm) = DemoVm::start() else { return };
    let data = pattern();
    let mut rsp = Rsp::connect(vm.port);
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let write = format!("M{SCRATCH:x},{:x}:{hex}", data.len());
    assert_eq!(packet(rsp.request(write.as_bytes())), b"OK");

    let m = packet(rsp.request(format!("m{SCRATCH:x},{:x}", data.len()).as_bytes()));
    assert!(m.len() < hex.len(), "runs are encoded: {} bytes", m.len());
    assert_eq!(unhex(&expand_runs(&m)), data);

    let x = packet(rsp.request(format!("x{SCRATCH:x},{:x}", data.len()).as_bytes()));
    assert_eq!(x.first(), Some(&b'b'), "binary replies start with 'b'");
    assert!(x.len() < data.len(), "runs are encoded: {} bytes", x.len());
    assert_eq!(unescape(&expand_runs(&x[1..])), data);

    // Unaligned pieces of it, both ways.
    for (offset, len) in [(1usize, 1usize), (299, 3), (301, 90), (777, 2000)] {
        let addr = SCRATCH + offset as u64;
        let m = packet(rsp.request(format!("m{addr:x},{len:x}").as_bytes()));
        assert_eq!(unhex(&expand_runs(&m)), data[offset..offset + len]);
        let x = packet(rsp.request(format!("x{addr:x},{len:x}").as_bytes()));
        assert_eq!(unescape(&expand_runs(&x[1..])), data[offset..offset + len]);
    }
}

#[test]
fn read_ahead_never_serves_stale_bytes() {
    let Some(vm) = DemoVm::start() else { return };
    let mut rsp = Rsp::connect(vm.port);
    let chunk = 0x1000u64;
    let read = |rsp: &mut Rsp, kind: char, addr: u64| {
        let reply = packet(rsp.request(format!("{kind}{addr:x},{chunk:x}").as_bytes()));
        match kind {
            'm' => unhex(&expand_runs(&reply)),
            _ => unescape(&expand_runs(&reply[1..])),
        }
    };
    for kind in ['m', 'x'] {
        for value in [0x11u8, 0x22] {
            let fill = format!("{value:02x}").repeat(chunk as usize);
            let write = format!("M{:x},{chunk:x}:{fill}", SCRATCH + chunk);
            // The first read prepares the second; the write in between
            // must make that preparation void.
            read(&mut rsp, kind, SCRATCH);
            assert_eq!(packet(rsp.request(write.as_bytes())), b"OK");
            assert_eq!(
                read(&mut rsp, kind, SCRATCH + chunk),
                vec![value; chunk as usize]
            );
            // And in sequence with nothing between, the prepared reply.
            assert_eq!(
                read(&mut rsp, kind, SCRATCH + 2 * chunk).len(),
                chunk as usize
            );
        }
    }
}

#[test]
fn reads_follow_the_selected_thread_and_fail_cleanly() {
    let Some(vm) = DemoVm::start() else { return };
    let mut rsp = Rsp::connect(vm.port);
    let greeting = |rsp: &mut Rsp, kind: char| {
        packet(rsp.request(format!("{kind}ffffffff80400000,4").as_bytes()))
    };
    let good = greeting(&mut rsp, 'm');
    assert_eq!(good.len(), 8, "{}", String::from_utf8_lossy(&good));
    // A thread that does not exist: an error, as gdbstub would answer.
    assert_eq!(packet(rsp.request(b"Hg5")), b"OK");
    assert_eq!(greeting(&mut rsp, 'm'), b"E01");
    assert_eq!(greeting(&mut rsp, 'x'), b"E01");
    // Hg0 ("any") is the first thread again.
    assert_eq!(packet(rsp.request(b"Hg0")), b"OK");
    assert_eq!(greeting(&mut rsp, 'm'), good);
    assert_eq!(packet(rsp.request(b"Hgp1.2")), b"OK");
    assert_eq!(
        greeting(&mut rsp, 'm'),
        good,
        "the kernel is mapped for vcpu 1 too"
    );
    // Unmapped: EFAULT. Straddling the end of the mapping: the mapped part.
    assert_eq!(packet(rsp.request(b"m1000,10")), b"E0e");
    assert_eq!(packet(rsp.request(b"x1000,10")), b"E0e");
    let end_of_ram = 0xffff_8880_0400_0000u64; // 64 MiB of RAM in the direct map
    let part = packet(rsp.request(format!("m{:x},20", end_of_ram - 8).as_bytes()));
    assert_eq!(unhex(&expand_runs(&part)).len(), 8, "{part:?}");
    // Zero length and malformed reads are gdbstub's: answered, not fatal.
    assert!(matches!(rsp.request(b"m1000,0"), Reply::Packet(_)));
    assert!(matches!(rsp.request(b"x0,0"), Reply::Packet(p) if p.is_empty()));
    assert!(matches!(rsp.request(b"mzz,4"), Reply::Packet(_)));
    assert_eq!(greeting(&mut rsp, 'm'), good);
}

/// A gdb that speaks the binary `x` read (gdb ≥ 16), if installed:
/// `VMEM_GDBSTUB_GDB_X`, else gdb-for-pwndbg's venv made by `.ci/run`.
fn gdb_with_x() -> Option<String> {
    let candidates = [
        std::env::var("VMEM_GDBSTUB_GDB_X").unwrap_or_default(),
        "/opt/gdb18/bin/gdb".to_string(),
    ];
    candidates.into_iter().find(|path| {
        std::process::Command::new(path)
            .args(["-batch", "-nx", "-ex", "show remote binary-upload-packet"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("'x' packet"))
    })
}

#[test]
fn gdb_dumps_the_same_bytes_with_m_and_with_x() {
    let Some(vm) = DemoVm::start() else { return };
    let dir = std::env::temp_dir().join(format!("vmem-gdb-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data: Vec<u8> = pattern().into_iter().cycle().take(3 << 20).collect();
    let input = dir.join("in.bin");
    std::fs::write(&input, &data).unwrap();
    let end = SCRATCH + data.len() as u64;
    let restore = format!("restore {} binary {SCRATCH:#x}", input.display());
    let dump = |file: &std::path::Path| {
        format!(
            "dump binary memory {} {SCRATCH:#x} {end:#x}",
            file.display()
        )
    };
    let with_m = dir.join("m.bin");
    let out = vm.gdb(&[&restore, &dump(&with_m)]);
    assert!(out.contains("Restoring binary file"), "{out}");
    assert_eq!(std::fs::read(&with_m).unwrap(), data, "gdb 13 `m` dump");

    match gdb_with_x() {
        None => eprintln!(
            "SKIP (gdb x part): no gdb with the binary `x` read found (set VMEM_GDBSTUB_GDB_X)"
        ),
        Some(gdb) => {
            let with_x = dir.join("x.bin");
            let mut cmd = std::process::Command::new(gdb);
            cmd.args(["-batch", "-nx", "-ex", "set debug remote 1", "-ex"])
                .arg(format!("target remote 127.0.0.1:{}", vm.port))
                .arg("-ex")
                .arg(dump(&with_x))
                .stdin(std::process::Stdio::null());
            let out = demo::run_with_timeout(cmd, std::time::Duration::from_secs(60));
            let tail: String = out.lines().rev().take(30).collect::<Vec<_>>().join("\n");
            assert!(out.contains("binary-upload+"), "advertised: {tail}");
            assert!(
                out.contains("Sending packet: $xffff888002"),
                "x used: {tail}"
            );
            assert_eq!(std::fs::read(&with_x).unwrap(), data, "gdb `x` dump");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
