//! Memory reads answered in our packet layer: `m` (hex) and gdb's binary
//! `x`. gdbstub 0.7 writes replies one hex digit at a time with run-length
//! bookkeeping per character (~27 ns per byte read); these encoders work on
//! whole buffers, and `x` (gdb ≥ 16, `binary-upload+`) halves the bytes
//! on the wire.

use super::rsp;
/// Largest read answered in one reply (gdb asks for less than this).
pub(crate) const MAX_READ: usize = 1 << 17;

/// A memory read request from gdb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadRequest {
    /// Start address (guest-virtual, or physical in QEMU's phys mode).
    pub(crate) addr: u64,
    /// Bytes wanted (clamped to [`MAX_READ`]; a shorter reply is allowed).
    pub(crate) len: usize,
    /// `x` (binary reply) rather than `m` (hex).
    pub(crate) binary: bool,
}

/// Parse `mADDR,LEN` or `xADDR,LEN` (both hex). Anything else, a zero
/// length, or a number that does not fit is left to gdbstub, which
/// answers it as it always did.
pub(crate) fn parse_read(payload: &[u8]) -> Option<ReadRequest> {
    let (&kind, rest) = payload.split_first()?;
    let binary = match kind {
        b'm' => false,
        b'x' => true,
        _ => return None,
    };
    let comma = rest.iter().position(|&b| b == b',')?;
    let addr = parse_hex(&rest[..comma])?;
    let len = parse_hex(&rest[comma + 1..])?;
    if len == 0 {
        return None;
    }
    Some(ReadRequest {
        addr,
        len: usize::try_from(len).unwrap_or(MAX_READ).min(MAX_READ),
        binary,
    })
}

/// A memory write gdb sent (`M` hex or `X` binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WriteRequest {
    /// Start address (guest-virtual, or physical in QEMU's phys mode).
    pub(crate) addr: u64,
    /// The bytes.
    pub(crate) data: Vec<u8>,
}

/// Parse `MADDR,LEN:HEX` or `XADDR,LEN:BINARY` whose data is exactly LEN
/// bytes. Anything else is left to gdbstub.
pub(crate) fn parse_write(payload: &[u8]) -> Option<WriteRequest> {
    let (&kind, rest) = payload.split_first()?;
    if kind != b'M' && kind != b'X' {
        return None;
    }
    let comma = rest.iter().position(|&b| b == b',')?;
    let colon = rest.iter().position(|&b| b == b':')?;
    let addr = parse_hex(&rest[..comma])?;
    let len = usize::try_from(parse_hex(rest.get(comma + 1..colon)?)?).ok()?;
    let body = &rest[colon + 1..];
    let data = if kind == b'X' {
        rsp::unescape(body)?
    } else {
        parse_hex_bytes(body)?
    };
    (data.len() == len).then_some(WriteRequest { addr, data })
}

/// Bytes given as hex digit pairs (`M`'s data, `qRcmd`'s command).
pub(crate) fn parse_hex_bytes(digits: &[u8]) -> Option<Vec<u8>> {
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::try_from(parse_hex(pair)?).ok())
        .collect()
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc << 4 | u64::from(v))
    })
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [digits[b >> 4], digits[b & 0xf]];
        b += 1;
    }
    pairs
};

/// Longest run one `*` repeat can express: the count character is
/// `repeats + 29` and must stay printable (≤ 126).
const MAX_REPEATS: usize = 126 - 29;

/// Append `data` as hex digits, two per byte, without run-length encoding.
pub(crate) fn push_plain_hex(out: &mut Vec<u8>, data: &[u8]) {
    out.extend(data.iter().flat_map(|&b| HEX_PAIRS[usize::from(b)]));
}

/// Append `data` as lowercase hex, run-length encoded. `scratch` holds
/// the plain hex between calls (so no allocation per packet).
pub(crate) fn push_hex(out: &mut Vec<u8>, scratch: &mut Vec<u8>, data: &[u8]) {
    scratch.resize(data.len() * 2, 0);
    let mut digits = scratch.chunks_exact_mut(16);
    let mut bytes = data.chunks_exact(8);
    for (text, group) in (&mut digits).zip(&mut bytes) {
        let mut block = [0u8; 16];
        for (pair, &b) in block.chunks_exact_mut(2).zip(group) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
        }
        text.copy_from_slice(&block);
    }
    let tail = digits.into_remainder();
    for (pair, &b) in tail.chunks_exact_mut(2).zip(bytes.remainder()) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
    let hex = scratch.as_slice();
    // Run-length encoding never makes the text longer.
    let base = out.len();
    out.resize(base + hex.len(), 0);
    let dst = &mut out[base..];
    let (mut i, mut o) = (0, 0);
    // Sixteen digits at a time: where no run of four starts in the first
    // thirteen, copy those thirteen as they are.
    while i + 16 <= hex.len() {
        // Eight bytes none of which has two equal digits: no run of four
        // digits lies inside their sixteen (one may cross an edge: it is
        // then sent partly as it is, which is still correct).
        if i % 2 == 0 {
            let mut group = [0u8; 8];
            group.copy_from_slice(&data[i / 2..i / 2 + 8]);
            if no_double_digit(u64::from_le_bytes(group)) {
                dst[o..o + 16].copy_from_slice(&hex[i..i + 16]);
                i += 16;
                o += 16;
                continue;
            }
        }
        let mut window = [0u8; 16];
        window.copy_from_slice(&hex[i..i + 16]);
        // `o` never passes `i`, so sixteen bytes fit at `o`.
        dst[o..o + 16].copy_from_slice(&window);
        let starts = run_starts(u128::from_le_bytes(window));
        if starts == 0 {
            i += 13;
            o += 13;
            continue;
        }
        let first = (starts.trailing_zeros() / 8) as usize;
        i += first;
        o += first;
        let (used, written) = encode_run(&mut dst[o..], hex, i);
        i += used;
        o += written;
    }
    while i < hex.len() {
        let (used, written) = encode_run(&mut dst[o..], hex, i);
        i += used;
        o += written;
    }
    out.truncate(base + o);
}

/// Bit 7 of byte `j` set where four equal digits start at digit `j` of
/// `window`, for `j` < 13 (the last three cannot be judged here).
fn run_starts(window: u128) -> u128 {
    const LOW7: u128 = u128::from_le_bytes([0x7f; 16]);
    const STARTS: u128 = u128::from_le_bytes([
        0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0, 0, 0,
    ]);
    // Byte j of `same` is zero where digit j equals digit j + 1.
    let same = window ^ (window >> 8);
    // 0x80 in exactly the zero bytes of `same`.
    let zero = !(((same & LOW7) + LOW7) | same | LOW7);
    zero & (zero >> 8) & (zero >> 16) & STARTS
}

/// 0x80 in exactly the zero bytes of `x`.
fn zero_bytes(x: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// Whether no byte of `group` has equal high and low digits (0x00, 0x11 …).
fn no_double_digit(group: u64) -> bool {
    zero_bytes((group ^ (group >> 4)) & 0x0f0f_0f0f_0f0f_0f0f) == 0
}

/// Whether none of the first seven bytes of `window` needs escaping or
/// equals the byte after it.
fn plain_binary(window: u64) -> bool {
    let splat = |b: u8| u64::from_ne_bytes([b; 8]);
    let special = zero_bytes(window ^ splat(b'#'))
        | zero_bytes(window ^ splat(b'$'))
        | zero_bytes(window ^ splat(b'}'))
        | zero_bytes(window ^ splat(b'*'))
        | zero_bytes(window ^ (window >> 8));
    special & 0x0080_8080_8080_8080 == 0
}

/// How many bytes from `data[i]` equal it (at most what one repeat can
/// say).
fn run_length(data: &[u8], i: usize) -> usize {
    let c = data[i];
    let end = data.len().min(i + MAX_REPEATS + 1);
    let splat = u64::from_ne_bytes([c; 8]);
    let mut j = i + 1;
    while j + 8 <= end {
        let mut word = [0u8; 8];
        word.copy_from_slice(&data[j..j + 8]);
        if u64::from_ne_bytes(word) != splat {
            break;
        }
        j += 8;
    }
    while j < end && data[j] == c {
        j += 1;
    }
    j - i
}

/// Write the run of equal bytes starting at `data[i]` into `dst`, as
/// `c*N` when that is shorter; returns (bytes of `data` used, bytes
/// written), the second never larger than the first.
fn encode_run(dst: &mut [u8], data: &[u8], i: usize) -> (usize, usize) {
    let c = data[i];
    let n = run_length(data, i);
    if n < 4 {
        dst[..n].fill(c);
        return (n, n);
    }
    // 6 and 7 repeats would make the count `#` or `$`: say 5, then the rest.
    let repeats = match n - 1 {
        6 | 7 => 5,
        r => r,
    };
    let rest = n - 1 - repeats;
    dst[..3].copy_from_slice(&[c, b'*', (repeats + 29) as u8]);
    dst[3..3 + rest].fill(c);
    (n, 3 + rest)
}

/// Append `data` in RSP binary form: `#`, `$`, `}` and `*` escaped as `}`
/// followed by the byte XOR 0x20; runs of four or more of one unescaped
/// byte are run-length encoded like hex digits.
pub(crate) fn push_binary(out: &mut Vec<u8>, data: &[u8]) {
    // At worst every byte is escaped.
    let base = out.len();
    out.resize(base + 2 * data.len(), 0);
    let dst = &mut out[base..];
    let (mut i, mut o) = (0, 0);
    while i < data.len() {
        // Eight bytes at a time: where none of the first seven needs an
        // escape or starts a run, copy those seven as they are.
        if i + 8 <= data.len() {
            let mut window = [0u8; 8];
            window.copy_from_slice(&data[i..i + 8]);
            if plain_binary(u64::from_le_bytes(window)) {
                dst[o..o + 8].copy_from_slice(&window);
                i += 7;
                o += 7;
                continue;
            }
        }
        let byte = data[i];
        if rsp::needs_escape(byte) {
            dst[o..o + 2].copy_from_slice(&[b'}', byte ^ 0x20]);
            i += 1;
            o += 2;
        } else if data.get(i + 1) == Some(&byte) {
            let (used, written) = encode_run(&mut dst[o..], data, i);
            i += used;
            o += written;
        } else {
            dst[o] = byte;
            i += 1;
            o += 1;
        }
    }
    out.truncate(base + o);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_hex_and_binary() {
        assert_eq!(
            parse_write(b"Mffffffff80400000,3:0a0b0c"),
            Some(WriteRequest {
                addr: 0xffff_ffff_8040_0000,
                data: vec![0x0a, 0x0b, 0x0c]
            })
        );
        // `}` escapes: 0x23 ('#') is sent as `}` 0x03.
        assert_eq!(
            parse_write(b"X1000,2:}\x03a"),
            Some(WriteRequest {
                addr: 0x1000,
                data: vec![b'#', b'a']
            })
        );
        assert_eq!(parse_write(b"M1000,2:0a"), None, "length mismatch");
        assert_eq!(parse_write(b"M1000,1:0g"), None, "not hex");
        assert_eq!(parse_write(b"X1000,1:}"), None, "cut escape");
        assert_eq!(parse_write(b"m1000,1"), None);
        assert_eq!(parse_write(b"M1000:00"), None);
    }

    mod rsp_decode {
        include!("../../../tests/demo/rsp_decode.rs");
    }
    use rsp_decode::{expand_runs as expand, unhex};

    fn unescape(data: &[u8]) -> Vec<u8> {
        rsp::unescape(data).expect("escaped byte")
    }

    fn samples() -> Vec<Vec<u8>> {
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut random = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cases: Vec<Vec<u8>> = (0..200).map(|n| vec![0u8; n]).collect();
        cases.extend((0..300).map(|n| vec![b'}'; n % 9]));
        for _ in 0..50 {
            // Full-range bytes: the word-at-a-time paths.
            let len = (random() % 5000) as usize;
            cases.push((0..len).map(|_| random() as u8).collect());
        }
        for _ in 0..2000 {
            let len = (random() % 600) as usize;
            // Few distinct values, so runs of every length occur.
            let alphabet = [0u8, 0xff, b'#', b'$', b'*', b'}', 0x11, 0x2a];
            cases.push(
                (0..len)
                    .map(|_| alphabet[(random() % 8) as usize])
                    .collect(),
            );
        }
        cases
    }

    #[test]
    fn hex_round_trips_and_never_emits_framing_bytes() {
        for data in samples() {
            let mut wire = Vec::new();
            push_hex(&mut wire, &mut Vec::new(), &data);
            assert!(!wire.iter().any(|b| matches!(b, b'#' | b'$')), "{wire:?}");
            assert_eq!(unhex(&expand(&wire)), data);
        }
        let mut wire = Vec::new();
        push_hex(&mut wire, &mut Vec::new(), &[0u8; 64]);
        assert!(wire.len() < 10, "zeros are run-length encoded: {wire:?}");
    }

    #[test]
    fn binary_round_trips_and_never_emits_framing_bytes() {
        for data in samples() {
            let mut wire = Vec::new();
            push_binary(&mut wire, &data);
            let mut i = 0;
            while i < wire.len() {
                match wire[i] {
                    b'}' => i += 2,
                    b'*' => i += 2,
                    b => {
                        assert!(!matches!(b, b'#' | b'$'), "{wire:?}");
                        i += 1;
                    }
                }
            }
            assert_eq!(unescape(&expand(&wire)), data);
        }
    }

    #[test]
    fn parses_reads_and_leaves_odd_ones_to_gdbstub() {
        assert_eq!(
            parse_read(b"mffffffff80404fc0,40"),
            Some(ReadRequest {
                addr: 0xffff_ffff_8040_4fc0,
                len: 0x40,
                binary: false
            })
        );
        assert_eq!(
            parse_read(b"x1000,ffffffffffffffff"),
            Some(ReadRequest {
                addr: 0x1000,
                len: MAX_READ,
                binary: true
            })
        );
        for odd in [
            &b"m1000,0"[..],
            b"m1000",
            b"m,4",
            b"m1000,",
            b"m 1000,4",
            b"m10000000000000000,4",
            b"m1000,4:",
            b"M1000,4:00",
            b"",
        ] {
            assert_eq!(parse_read(odd), None, "{}", String::from_utf8_lossy(odd));
        }
    }
}
