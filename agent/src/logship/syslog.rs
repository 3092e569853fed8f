//! RFC 5424 messages, written by hand (a few dozen lines; no crate formats the
//! structured data as we need):
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID PARAM="value"...] MSG`,
//! and RFC 6587's octet-counting frame (`LEN SP MESSAGE`) for TCP and TLS.

/// The SD-ID of Berth's structured data. 32473 is the private enterprise number
/// RFC 5612 reserves for documentation and examples: Berth has none of its own.
pub const SD_ID: &str = "berth@32473";
/// A datagram past this size may be dropped on the way (RFC 5426 asks receivers for
/// 2048 bytes at least); a UDP message is cut to it.
pub const MAX_DATAGRAM: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facility {
    Kernel = 0,
    User = 1,
    Daemon = 3,
}

/// One line to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub facility: Facility,
    /// 0 (emergency) to 7 (debug).
    pub severity: u8,
    /// RFC 3339; `-` when unknown.
    pub timestamp: &'a str,
    pub hostname: &'a str,
    pub app: &'a str,
    /// stdout, stderr, kernel...
    pub msgid: &'a str,
    /// Structured data parameters under [`SD_ID`].
    pub params: &'a [(&'a str, &'a str)],
    pub text: &'a str,
}

/// A header field: printable US-ASCII without blanks, at most `max` characters, `-`
/// when empty (RFC 5424 section 6).
fn field(out: &mut Vec<u8>, value: &str, max: usize) {
    let start = out.len();
    for b in value.bytes().filter(|b| (33..=126).contains(b)).take(max) {
        out.push(b);
    }
    if out.len() == start {
        out.push(b'-');
    }
}

impl Message<'_> {
    /// The message, without framing.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 128);
        let pri = (self.facility as u8) * 8 + self.severity.min(7);
        out.extend_from_slice(format!("<{pri}>1 ").as_bytes());
        field(&mut out, self.timestamp, 48);
        out.push(b' ');
        field(&mut out, self.hostname, 255);
        out.push(b' ');
        field(&mut out, self.app, 48);
        out.extend_from_slice(b" - ");
        field(&mut out, self.msgid, 32);
        out.push(b' ');
        if self.params.is_empty() {
            out.push(b'-');
        } else {
            out.push(b'[');
            out.extend_from_slice(SD_ID.as_bytes());
            for (name, value) in self.params {
                out.push(b' ');
                field(&mut out, name, 32);
                out.extend_from_slice(b"=\"");
                // PARAM-VALUE escapes `"`, `\` and `]` (section 6.3.3).
                for c in value.chars() {
                    if matches!(c, '"' | '\\' | ']') {
                        out.push(b'\\');
                    }
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                out.push(b'"');
            }
            out.push(b']');
        }
        if !self.text.is_empty() {
            out.push(b' ');
            out.extend_from_slice(self.text.trim_end_matches(['\n', '\r']).as_bytes());
        }
        out
    }
}

/// RFC 6587 octet counting: `LEN SP MESSAGE`.
pub fn frame(message: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{} ", message.len()).as_bytes());
    out.extend_from_slice(message);
}

/// A message cut to fit one datagram, on a character boundary.
pub fn datagram(mut message: Vec<u8>) -> Vec<u8> {
    if message.len() > MAX_DATAGRAM {
        let mut end = MAX_DATAGRAM;
        while end > 0 && (message[end] & 0xC0) == 0x80 {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_line_as_rfc5424() {
        let m = Message {
            facility: Facility::User,
            severity: 6,
            timestamp: "2026-12-01T01:14:05.123Z",
            hostname: "web-1",
            app: "web",
            msgid: "stdout",
            params: &[("image", "busybox:latest"), ("odd", "a\"b]c\\")],
            text: "hello world\n",
        };
        assert_eq!(
            String::from_utf8(m.encode()).unwrap(),
            "<14>1 2026-12-01T01:14:05.123Z web-1 web - stdout \
             [berth@32473 image=\"busybox:latest\" odd=\"a\\\"b\\]c\\\\\"] hello world"
        );
        let mut framed = Vec::new();
        frame(b"<14>1 - - - - - -", &mut framed);
        assert_eq!(framed, b"17 <14>1 - - - - - -");
    }

    #[test]
    fn header_fields_are_printable_and_bounded() {
        let m = Message {
            facility: Facility::Kernel,
            severity: 9,
            timestamp: "",
            hostname: "a b",
            app: &"x".repeat(60),
            msgid: "",
            params: &[],
            text: "",
        };
        let text = String::from_utf8(m.encode()).unwrap();
        assert_eq!(text, format!("<7>1 - ab {} - - -", "x".repeat(48)));
        let long = datagram("é".repeat(2000).into_bytes());
        assert!(long.len() <= MAX_DATAGRAM && std::str::from_utf8(&long).is_ok());
    }
}
