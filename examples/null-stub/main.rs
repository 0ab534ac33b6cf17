//! A gdb stub that does no work: canned registers and memory, steps that
//! finish at once. It measures gdb's own floor for the end-to-end
//! benchmark (`examples/bench-e2e`), which passes a `--pc` inside the
//! guest's code so gdb unwinds as it does against the real stubs. With
//! `--replay LOG` it answers as a real stub did in a session gdb logged
//! (see `replay.rs`). Prints its port and serves one client at a time.

mod replay;

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;

use vmem_gdbstub::target::{rsp, X86_64Kvm};

/// Where the canned registers point (hex, with or without `0x`).
#[derive(clap::Parser)]
struct Args {
    /// rip in every stop reply.
    #[arg(long, value_parser = parse_hex, default_value = "0")]
    pc: u64,
    /// rsp and rbp in every stop reply.
    #[arg(long, value_parser = parse_hex, default_value = "0")]
    sp: u64,
    /// The file to name in `qXfer:exec-file` (gdb then loads its symbols,
    /// as it does from ours).
    #[arg(long)]
    exec_file: Option<String>,
    /// A gdb remote log (`set remotelogfile`) whose replies to give, in
    /// order, each connection from its start; requests it lacks get the
    /// canned replies.
    #[arg(long)]
    replay: Option<std::path::PathBuf>,
}

fn parse_hex(text: &str) -> Result<u64, std::num::ParseIntError> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
}

/// A stop reply that carries rbp, rsp and rip, as ours does, so gdb need
/// not ask for all registers after each step.
fn stop_reply(pc: u64, sp: u64) -> String {
    let le = |v: u64| -> String { v.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect() };
    format!("T05thread:01;06:{};07:{};10:{};", le(sp), le(sp), le(pc))
}

/// What memory reads return: the same pseudo-random bytes the benchmark
/// dumps from the real stubs (so gdb decodes the same kind of data), made
/// once, as hex for `m` and as unescaped-safe binary for `x`.
struct Canned {
    hex: Vec<u8>,
    binary: Vec<u8>,
    stop: String,
    sp: u64,
    exec_file: Option<String>,
}

impl Canned {
    fn new(args: &Args) -> Canned {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..1 << 17)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Canned {
            stop: stop_reply(args.pc, args.sp),
            sp: args.sp,
            exec_file: args.exec_file.clone(),
            hex: bytes
                .iter()
                .flat_map(|b| format!("{b:02x}").into_bytes())
                .collect(),
            // No byte that would need escaping in a binary reply.
            binary: bytes
                .iter()
                .map(|&b| if rsp::needs_escape(b) { b'a' } else { b })
                .collect(),
        }
    }
}

fn read_len(request: &str) -> usize {
    request
        .split(',')
        .nth(1)
        .and_then(|l| usize::from_str_radix(l, 16).ok())
        .unwrap_or(0)
        .min(1 << 17)
}

/// A `qXfer:…:read:ANNEX:OFF,LEN` reply for `data`.
fn xfer(range: &str, data: &str) -> String {
    let mut parts = range
        .rsplit(':')
        .next()
        .unwrap_or("")
        .split(',')
        .map(|n| usize::from_str_radix(n, 16).unwrap_or(0));
    let (off, len) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let rest = data.get(off.min(data.len())..).unwrap_or("");
    if rest.len() > len {
        format!("m{}", &rest[..len])
    } else {
        format!("l{rest}")
    }
}

fn reply(payload: &[u8], memory: &Canned) -> Vec<u8> {
    let text = String::from_utf8_lossy(payload);
    let regs_bytes = vmem_gdbstub::target::X86_64Regs::default().to_bytes().len();
    let xml = <X86_64Kvm as gdbstub::arch::Arch>::target_description_xml().unwrap_or_default();
    let out: String = match text.as_ref() {
        t if t.starts_with("qSupported") => {
            "PacketSize=20000;QStartNoAckMode+;qXfer:features:read+;qXfer:exec-file:read+;binary-upload+;swbreak+".into()
        }
        t if t.starts_with("qXfer:exec-file:read:") => match &memory.exec_file {
            Some(path) => xfer(t, path),
            None => "E01".into(),
        },
        "?" => memory.stop.clone(),
        "g" => "00".repeat(regs_bytes),
        "vCont?" => "vCont;c;C;s;S".into(),
        t if t.starts_with("vCont;s") || t == "s" => memory.stop.clone(),
        t if t.starts_with('m') => {
            return rsp::frame(&memory.hex[..2 * read_len(t)]);
        }
        t if t.starts_with('x') => {
            return rsp::frame(&[b"b", &memory.binary[..read_len(t)]].concat());
        }
        t if t.starts_with("qXfer:features:read:target.xml:") => xfer(t, xml),
        "qfThreadInfo" => "m01".into(),
        "qsThreadInfo" => "l".into(),
        "qC" => "QC01".into(),
        "qAttached" => "1".into(),
        t if t.starts_with('H') || t == "QStartNoAckMode" || t.starts_with('D') => "OK".into(),
        t if t.starts_with('T') => "OK".into(),
        _ => String::new(),
    };
    rsp::frame(out.as_bytes())
}

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("gdb stub listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let args = <Args as clap::Parser>::parse();
    let memory = Canned::new(&args);
    let transcript = match &args.replay {
        Some(log) => Some(replay::Transcript::parse(&std::fs::read_to_string(log)?)),
        None => None,
    };
    if let Some(t) = &transcript {
        eprintln!("replaying {} requests", t.len());
    }
    loop {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut no_ack = false;
        // The breakpoint gdb inserted last: a continue "hits" it at once.
        let mut breakpoint: Option<u64> = None;
        let mut cursor = replay::Cursor::default();
        let mut byte = [0u8];
        'session: loop {
            // Skip to a packet start; an interrupt while "running" stops.
            loop {
                if reader.read(&mut byte)? == 0 {
                    break 'session;
                }
                match byte[0] {
                    b'$' => break,
                    0x03 => writer.write_all(&reply(b"?", &memory))?,
                    _ => {}
                }
            }
            let mut payload = Vec::new();
            loop {
                if reader.read(&mut byte)? == 0 {
                    break 'session;
                }
                if byte[0] == b'#' {
                    break;
                }
                payload.push(byte[0]);
            }
            let mut sum = [0u8; 2];
            reader.read_exact(&mut sum)?;
            if !no_ack {
                writer.write_all(b"+")?;
            }
            match transcript
                .as_ref()
                .and_then(|t| t.answer(&mut cursor, &payload))
            {
                Some(replies) => writer.write_all(replies)?,
                None => answer_canned(&payload, &memory, &mut breakpoint, &mut writer)?,
            }
            no_ack |= payload == b"QStartNoAckMode";
            if payload.starts_with(b"D") {
                break;
            }
        }
        if cursor.misses > 0 {
            eprintln!("{} requests were not next in the log", cursor.misses);
        }
    }
}

/// The canned answer to `payload`: breakpoints remembered, a continue that
/// "hits" the last one at once (or "runs" until 0x03 without one).
fn answer_canned(
    payload: &[u8],
    memory: &Canned,
    breakpoint: &mut Option<u64>,
    writer: &mut impl Write,
) -> std::io::Result<()> {
    let text = String::from_utf8_lossy(payload);
    let address = |t: &str| {
        t.split(',')
            .nth(1)
            .and_then(|a| u64::from_str_radix(a, 16).ok())
    };
    // Software or hardware breakpoints alike.
    if text.starts_with("Z0,") || text.starts_with("Z1,") {
        *breakpoint = address(&text);
        return writer.write_all(&rsp::frame(b"OK"));
    }
    if text.starts_with("z0,") || text.starts_with("z1,") {
        if *breakpoint == address(&text) {
            *breakpoint = None;
        }
        return writer.write_all(&rsp::frame(b"OK"));
    }
    if text.starts_with("vCont;c") || text == "c" {
        return match breakpoint {
            Some(pc) => {
                let stop = format!("{}swbreak:;", stop_reply(*pc, memory.sp));
                writer.write_all(&rsp::frame(stop.as_bytes()))
            }
            None => Ok(()),
        };
    }
    writer.write_all(&reply(payload, memory))
}
