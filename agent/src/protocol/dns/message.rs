//! The parts of a DNS message (RFC 1035 §4.1) a span needs: the header and the first question.
//!
//! Strict on purpose: detection relies on it to tell DNS from other bytes, so every field must
//! be in range and the question must end inside the message.

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    /// QR: the message is a response.
    pub response: bool,
    pub opcode: u8,
    pub rcode: u8,
    pub questions: u16,
    pub answers: u16,
    pub authorities: u16,
    pub additionals: u16,
}

pub const HEADER_LEN: usize = 12;

/// The longest name on the wire (RFC 1035 §2.3.4).
const MAX_NAME: usize = 255;

impl Header {
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..HEADER_LEN)?;
        let word = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let flags = word(2);
        Some(Self {
            id: word(0),
            response: flags & 0x8000 != 0,
            opcode: ((flags >> 11) & 0xf) as u8,
            rcode: (flags & 0xf) as u8,
            questions: word(4),
            answers: word(6),
            authorities: word(8),
            additionals: word(10),
        })
    }
}

/// The first question: its name in dotted form (lowercase as sent), type and class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: Box<str>,
    pub qtype: u16,
    pub qclass: u16,
    /// Bytes from the message's start to the question's end.
    pub end: usize,
}

impl Question {
    /// The question right after the header. Only uncompressed names: the first name of a
    /// message has nothing before it to point at (a pointer there is malformed).
    #[must_use]
    pub fn parse(message: &[u8]) -> Option<Self> {
        let mut pos = HEADER_LEN;
        let mut name = String::new();
        loop {
            let len = usize::from(*message.get(pos)?);
            pos += 1;
            if len == 0 {
                break;
            }
            // Labels are at most 63 bytes; 0xc0 (a pointer) and 0x40/0x80 (reserved) are not
            // labels here.
            if len > 63 {
                return None;
            }
            let label = message.get(pos..pos + len)?;
            if !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            {
                return None;
            }
            if !name.is_empty() {
                name.push('.');
            }
            // All ASCII (checked above).
            name.extend(label.iter().map(|&b| char::from(b)));
            if name.len() > MAX_NAME {
                return None;
            }
            pos += len;
        }
        let fixed = message.get(pos..pos + 4)?;
        Some(Self {
            name: if name.is_empty() {
                ".".into()
            } else {
                name.into_boxed_str()
            },
            qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
            qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
            end: pos + 4,
        })
    }
}

/// A standard query as a client sends it: opcode 0, one question of class IN (or ANY), no
/// answers, at most one additional record (EDNS's OPT), and nothing after the question when
/// there is none. `message` is the whole message.
#[must_use]
pub fn query(message: &[u8]) -> Option<(Header, Question)> {
    let header = Header::parse(message)?;
    if header.response
        || header.opcode != 0
        || header.questions != 1
        || header.answers != 0
        || header.authorities != 0
        || header.additionals > 1
    {
        return None;
    }
    let question = Question::parse(message)?;
    if !matches!(question.qclass, 1 | 255) || question.qtype == 0 {
        return None;
    }
    let exact = if header.additionals == 0 {
        question.end == message.len()
    } else {
        // An OPT record: root name, type 41, then 8 bytes and its data length.
        message.get(question.end..question.end + 3) == Some(&[0, 0, 41][..])
    };
    exact.then_some((header, question))
}

/// The name of a question type for `dns.question.type`.
#[must_use]
pub fn type_name(qtype: u16) -> std::borrow::Cow<'static, str> {
    let name = match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        other => return std::borrow::Cow::Owned(format!("TYPE{other}")),
    };
    std::borrow::Cow::Borrowed(name)
}

/// The name of a response code (RFC 1035 §4.1.1, RFC 6895).
#[must_use]
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => "RCODE_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The A query glibc 2.36 sent for `api.model.internal` (captured with `sockspan events`).
    pub const A_QUERY: &[u8] =
        b"\xd4\x7b\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03api\x05model\x08internal\x00\x00\x01\x00\x01";

    #[test]
    fn a_glibc_query_parses() {
        let (header, question) = query(A_QUERY).expect("a query");
        assert_eq!(header.id, 0xd47b);
        assert_eq!(&*question.name, "api.model.internal");
        assert_eq!(question.qtype, 1);
        assert_eq!(question.end, A_QUERY.len());
    }

    #[test]
    fn what_is_not_a_query_is_refused() {
        // A trailing byte, a response, a compressed first name, two questions.
        let mut longer = A_QUERY.to_vec();
        longer.push(0);
        assert!(query(&longer).is_none());
        let mut response = A_QUERY.to_vec();
        response[2] |= 0x80;
        assert!(query(&response).is_none());
        let mut pointer = A_QUERY.to_vec();
        pointer[12] = 0xc0;
        assert!(query(&pointer).is_none());
        let mut two = A_QUERY.to_vec();
        two[5] = 2;
        assert!(query(&two).is_none());
        assert!(query(b"GET / HTTP/1.1\r\n\r\n").is_none());
        assert!(query(&A_QUERY[..20]).is_none());
    }
}
