//! gdb's Remote Serial Protocol framing, written once: the checksum,
//! `$payload#xx` packets, and the escaping of binary data. Used by the
//! stub's connection layer, the null stub of the benchmarks and the tests'
//! RSP client.

/// The checksum of `payload`: the sum of its bytes, modulo 256.
pub fn checksum(payload: &[u8]) -> u8 {
    payload.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
}

/// Append `payload` framed as a packet: `$payload#xx`.
pub fn frame_into(out: &mut Vec<u8>, payload: &[u8]) {
    out.reserve(payload.len() + 4);
    out.push(b'$');
    out.extend_from_slice(payload);
    close_frame(out, checksum(payload));
}

/// `payload` framed as a packet: `$payload#xx`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_into(&mut out, payload);
    out
}

/// End a packet whose payload (with checksum `sum`) is already in `out`.
pub fn close_frame(out: &mut Vec<u8>, sum: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[
        b'#',
        HEX[usize::from(sum >> 4)],
        HEX[usize::from(sum & 0xf)],
    ]);
}

/// The checksum two hex digits give, if they are hex.
pub fn parse_checksum(digits: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(digits).ok()?;
    (text.len() == 2).then(|| u8::from_str_radix(text, 16).ok())?
}

/// Whether `byte` must be escaped in binary data (`}` then `byte ^ 0x20`).
pub fn needs_escape(byte: u8) -> bool {
    matches!(byte, b'#' | b'$' | b'}' | b'*')
}

/// Undo the `}` escapes of binary data; `None` if it ends inside one.
pub fn unescape(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    let mut bytes = data.iter();
    while let Some(&b) = bytes.next() {
        out.push(if b == b'}' { bytes.next()? ^ 0x20 } else { b });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_escapes_as_gdb_does() {
        assert_eq!(checksum(b"OK"), 0x9a);
        assert_eq!(frame(b"OK"), b"$OK#9a");
        assert_eq!(frame(b""), b"$#00");
        assert_eq!(parse_checksum(b"9a"), Some(0x9a));
        assert_eq!(parse_checksum(b"9"), None);
        assert_eq!(parse_checksum(b"zz"), None);
        assert!(needs_escape(b'*') && !needs_escape(b'a'));
        assert_eq!(unescape(b"a}\x03}]").unwrap(), b"a#}");
        assert_eq!(unescape(b"a}"), None);
    }
}
