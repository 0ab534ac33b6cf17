//! `--json`: the walk's and the audit's answers for scripts, one JSON
//! object per command (schema in docs/monitor.md). Addresses and lengths
//! are hex strings (`"0xffffffff80000000"`): exact in every JSON reader.

use std::fmt::Write;

use super::listing::mapping_flags;
use crate::vmem::{HumanBytes, Mapping};

/// `text` as a JSON string literal.
pub(crate) fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A number as a hex string.
pub(crate) fn hex(value: u64) -> String {
    format!("\"{value:#x}\"")
}

/// One mapping: `{"va", "pa", "len", "size", "page", "attributes"}`
/// (`attributes` as the text's `rwxugadcs` column).
pub(crate) fn mapping(m: &Mapping) -> String {
    format!(
        "{{\"va\":{},\"pa\":{},\"len\":{},\"size\":{},\"page\":{},\"attributes\":{}}}",
        hex(m.virt_base),
        hex(m.phys_base),
        hex(m.len),
        string(&HumanBytes(m.len).to_string()),
        string(&m.page_size.to_string()),
        string(&mapping_flags(m))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        assert_eq!(hex(0xffff_ffff_8000_0000), "\"0xffffffff80000000\"");
    }
}
