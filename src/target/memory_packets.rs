//! Memory reads answered in our packet layer: `m` (hex) and gdb's binary
//! `x`. gdbstub 0.7 writes replies one hex digit at a time with run-length
//! bookkeeping per character (~27 ns per byte read); these encoders work on
//! whole buffers, and `x` (gdb ≥ 16, `binary-upload+`) halves the bytes
//! on the wire.

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

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc << 4 | u64::from(v))
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Longest run one `*` repeat can express: the count character is
/// `repeats + 29` and must stay printable (≤ 126).
const MAX_REPEATS: usize = 126 - 29;

/// Append `data` as lowercase hex, run-length encoded.
pub(crate) fn push_hex(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len() * 2);
    let mut pending: Option<(u8, usize)> = None;
    for &byte in data {
        for digit in [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]] {
            pending = match pending {
                Some((c, n)) if c == digit && n <= MAX_REPEATS => Some((c, n + 1)),
                Some((c, n)) => {
                    push_run(out, c, n);
                    Some((digit, 1))
                }
                None => Some((digit, 1)),
            };
        }
    }
    if let Some((c, n)) = pending {
        push_run(out, c, n);
    }
}

/// Append `data` in RSP binary form: `#`, `$`, `}` and `*` escaped as `}`
/// followed by the byte XOR 0x20; runs of one unescaped byte are
/// run-length encoded like hex digits.
pub(crate) fn push_binary(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len() + data.len() / 16);
    let mut i = 0;
    while i < data.len() {
        let byte = data[i];
        if matches!(byte, b'#' | b'$' | b'}' | b'*') {
            out.extend_from_slice(&[b'}', byte ^ 0x20]);
            i += 1;
            continue;
        }
        let run = data[i..]
            .iter()
            .take(MAX_REPEATS + 1)
            .take_while(|&&b| b == byte)
            .count();
        push_run(out, byte, run);
        i += run;
    }
}

/// `n` copies of `c` (which needs no escaping), as `c*N` when shorter.
fn push_run(out: &mut Vec<u8>, c: u8, n: usize) {
    if n < 4 {
        out.extend(std::iter::repeat_n(c, n));
        return;
    }
    // 6 and 7 repeats would make the count `#` or `$`: say 5, then the rest.
    let repeats = match n - 1 {
        6 | 7 => 5,
        r => r,
    };
    out.extend_from_slice(&[c, b'*', (repeats + 29) as u8]);
    out.extend(std::iter::repeat_n(c, n - 1 - repeats));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gdb's side: expand runs, then undo binary escapes.
    fn expand(wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < wire.len() {
            if wire[i] == b'*' {
                let last = *out.last().expect("a run follows a character");
                out.extend(std::iter::repeat_n(last, usize::from(wire[i + 1]) - 29));
                i += 2;
            } else {
                out.push(wire[i]);
                i += 1;
            }
        }
        out
    }

    fn unescape(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut it = data.iter();
        while let Some(&b) = it.next() {
            out.push(if b == b'}' {
                it.next().expect("escaped") ^ 0x20
            } else {
                b
            });
        }
        out
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
            push_hex(&mut wire, &data);
            assert!(!wire.iter().any(|b| matches!(b, b'#' | b'$')), "{wire:?}");
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(expand(&wire), hex.as_bytes());
        }
        let mut wire = Vec::new();
        push_hex(&mut wire, &[0u8; 64]);
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
