// gdb's side of RSP reply decoding, to check our encoders: run-length
// expansion and hex (binary unescaping is `rsp::unescape`). Shared by the packet layer's unit
// tests (through `include!`, hence no inner doc comment) and
// tests/gdb_memory.rs.

/// Expand `c*N` runs (N is the count character, repeats + 29).
pub fn expand_runs(wire: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < wire.len() {
        if wire[i] == b'*' && i + 1 < wire.len() {
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

/// Hex text to bytes.
pub fn unhex(text: &[u8]) -> Vec<u8> {
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}
