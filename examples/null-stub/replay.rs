//! Replies replayed from a session gdb logged against another stub (`set
//! remotelogfile`): the do-nothing stub then says exactly what that stub
//! said, so gdb does the same work against both — same stops, same pcs,
//! same memory to unwind through — and only the stub's own cost differs.

/// The packets of a logged session, in order: each request gdb sent and
/// the framed packets the stub answered with (acks left out: the replaying
/// stub acks for itself).
pub struct Transcript {
    exchanges: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Where a replay stands, and how often gdb asked something else.
#[derive(Default)]
pub struct Cursor {
    next: usize,
    pub misses: usize,
}

impl Transcript {
    /// Parse gdb's remote log: lines `w DATA` (gdb wrote), `r DATA` (gdb
    /// read), `c COMMAND`; DATA escapes `\\`, `\n` and friends, and
    /// `\xNN`, and may hold `<Timeout: N seconds>` marks of gdb's own.
    pub fn parse(log: &str) -> Transcript {
        let mut exchanges: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let (mut wrote, mut read) = (Framer::default(), Framer::default());
        for line in log.lines() {
            let (kind, data) = line.split_at(line.len().min(2));
            match kind {
                "w " => {
                    for frame in wrote.push(&unescape(data)) {
                        exchanges.push((payload(&frame).to_vec(), Vec::new()));
                    }
                }
                "r " => {
                    for frame in read.push(&unescape(data)) {
                        if let Some((_, replies)) = exchanges.last_mut() {
                            replies.extend_from_slice(&frame);
                        }
                    }
                }
                _ => {}
            }
        }
        Transcript { exchanges }
    }

    /// How many requests the log holds.
    pub fn len(&self) -> usize {
        self.exchanges.len()
    }

    /// The logged replies to `request`, if it is the next one logged (or,
    /// after gdb strayed, the next logged anywhere later) and was answered.
    pub fn answer(&self, cursor: &mut Cursor, request: &[u8]) -> Option<&[u8]> {
        let at = self.exchanges[cursor.next.min(self.exchanges.len())..]
            .iter()
            .position(|(logged, _)| logged == request)?
            + cursor.next;
        if at != cursor.next {
            cursor.misses += 1;
        }
        cursor.next = at + 1;
        // A request the log ends before answering gets the canned reply.
        Some(self.exchanges[at].1.as_slice()).filter(|replies| !replies.is_empty())
    }
}

/// The logged text back to bytes.
fn unescape(data: &str) -> Vec<u8> {
    let mut text = data.to_string();
    while let Some(start) = text.find("<Timeout: ") {
        match text[start..].find(" seconds>") {
            Some(end) => text.replace_range(start..start + end + " seconds>".len(), ""),
            None => break,
        }
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        if b != b'\\' || i == bytes.len() {
            out.push(b);
            continue;
        }
        let code = bytes[i];
        i += 1;
        out.push(match code {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            b'e' => 0x1b,
            b'x' => {
                let hex = text.get(i..i + 2).unwrap_or("");
                i += 2;
                u8::from_str_radix(hex, 16).unwrap_or(0)
            }
            other => other,
        });
    }
    out
}

/// The payload of a `$…#cc` frame.
fn payload(frame: &[u8]) -> &[u8] {
    &frame[1..frame.len() - 3]
}

/// Cuts a byte stream into whole `$…#cc` frames, dropping what lies
/// between them (acks).
#[derive(Default)]
struct Framer {
    partial: Vec<u8>,
}

impl Framer {
    fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for &b in data {
            if self.partial.is_empty() && b != b'$' {
                continue;
            }
            self.partial.push(b);
            let n = self.partial.len();
            if n >= 4 && self.partial[n - 3] == b'#' {
                frames.push(std::mem::take(&mut self.partial));
            }
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log as gdb 13 writes it: acks, an escaped binary reply, one of
    /// gdb's timeout marks, a command line, a request answered twice.
    const LOG: &str = r#"
w +$qSupported:multiprocess+#c6
r +$PacketSize=20000#75
w +$QStartNoAckMode#b0
r +$OK#9a
c stepi
w $vCont;s:p1.1#f2
r <Timeout: 0 seconds>$T05thread:p01.01;#06
w $xffffffff80400341,1#99
r $b\\x\xfa\n#5c
w $qRcmd,00#00
r $O4142#00$OK#9a
End of log
"#;

    #[test]
    fn gdbs_log_becomes_requests_and_framed_replies() {
        let t = Transcript::parse(LOG);
        assert_eq!(t.len(), 5);
        let mut cursor = Cursor::default();
        let logged: [(&[u8], &[u8]); 5] = [
            (b"qSupported:multiprocess+", b"$PacketSize=20000#75"),
            (b"QStartNoAckMode", b"$OK#9a"),
            (b"vCont;s:p1.1", b"$T05thread:p01.01;#06"),
            (b"xffffffff80400341,1", b"$b\\x\xfa\n#5c"),
            (b"qRcmd,00", b"$O4142#00$OK#9a"),
        ];
        for (request, replies) in logged {
            assert_eq!(t.answer(&mut cursor, request), Some(replies));
        }
        assert_eq!(cursor.misses, 0);
    }

    #[test]
    fn a_request_out_of_turn_skips_ahead_and_an_unknown_one_gets_none() {
        let t = Transcript::parse(LOG);
        let mut cursor = Cursor::default();
        assert!(t.answer(&mut cursor, b"vCont;s:p1.1").is_some());
        assert_eq!(cursor.misses, 1);
        assert!(t.answer(&mut cursor, b"QStartNoAckMode").is_none());
        assert!(t.answer(&mut cursor, b"D;1").is_none());
        assert!(t.answer(&mut cursor, b"xffffffff80400341,1").is_some());
        assert_eq!(cursor.misses, 1);
    }

    #[test]
    fn a_truncated_log_keeps_the_whole_packets() {
        let t = Transcript::parse("w $g#67\nr $0011#c2\nw $m0,1#fa\nr $0");
        assert_eq!(t.len(), 2);
        let mut cursor = Cursor::default();
        assert_eq!(t.answer(&mut cursor, b"g"), Some(&b"$0011#c2"[..]));
        assert_eq!(t.answer(&mut cursor, b"m0,1"), None);
    }
}
