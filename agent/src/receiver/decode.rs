//! Turns one ring-buffer record into a typed event without copying the payload.

use agent_common::{
    ConnEvent, DataEvent, EventHeader, EventKind, GoProbeEvent, InbandEvent, PyTaskEvent,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for a {what}")]
    TooShort { what: &'static str, len: usize },
    #[error("record has unknown kind {0}")]
    UnknownKind(u32),
    #[error("data record declares {declared} payload bytes but carries {available}")]
    PayloadLength { declared: usize, available: usize },
}

/// A decoded record; `payload` borrows the ring's memory.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Open(ConnEvent),
    Close(ConnEvent),
    Data {
        event: DataEvent,
        payload: &'a [u8],
    },
    GoProbe(GoProbeEvent),
    PyTask(PyTaskEvent),
    Inband(InbandEvent),
    /// A server end the programs shed at its first syscall ([`EventKind::ConnShed`]).
    Shed(ConnEvent),
}

/// Reads a `T` from the front of `bytes`.
fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::TooShort {
            what,
            len: bytes.len(),
        });
    }
    // SAFETY: the length was checked above; `T` is one of the agent_common Pod types, valid for
    // any bit pattern; read_unaligned has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    let header: EventHeader = read(record, "header")?;
    match EventKind::from_u32(header.kind) {
        Some(EventKind::ConnOpen) => Ok(Event::Open(read(record, "connection event")?)),
        Some(EventKind::ConnClose) => Ok(Event::Close(read(record, "connection event")?)),
        Some(EventKind::Data) => {
            let event: DataEvent = read(record, "data event")?;
            let rest = &record[size_of::<DataEvent>()..];
            let declared = event.captured_len as usize;
            let payload = rest.get(..declared).ok_or(DecodeError::PayloadLength {
                declared,
                available: rest.len(),
            })?;
            Ok(Event::Data { event, payload })
        }
        Some(EventKind::GoProbe) => Ok(Event::GoProbe(read(record, "Go probe event")?)),
        Some(EventKind::PyTask) => Ok(Event::PyTask(read(record, "Python task event")?)),
        Some(EventKind::Inband) => Ok(Event::Inband(read(record, "in-band event")?)),
        Some(EventKind::ConnShed) => Ok(Event::Shed(read(record, "connection event")?)),
        None => Err(DecodeError::UnknownKind(header.kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{Direction, Role, Syscall};

    fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] value with explicit padding.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        }
        .to_vec()
    }

    fn data_record(payload: &[u8], declared: u32) -> Vec<u8> {
        let event = DataEvent {
            header: EventHeader {
                kind: EventKind::Data as u32,
                pid: 7,
                tid: 8,
                fd: 3,
                conn_id: 42,
                ts_ns: 1,
            },
            moved_ns: 0,
            ret: payload.len() as i64,
            role: Role::Client as u32,
            direction: Direction::Egress as u32,
            syscall: Syscall::Write as u32,
            captured_len: declared,
            task: 0,
            seq: 0,
            flags: 0,
        };
        let mut record = bytes_of(&event);
        record.extend_from_slice(payload);
        record
    }

    #[test]
    fn decodes_data_with_payload() {
        let record = data_record(b"GET / HTTP/1.1\r\n", 16);
        let Ok(Event::Data { event, payload }) = decode(&record) else {
            panic!("not data");
        };
        assert_eq!(event.header.conn_id, 42);
        assert_eq!(payload, b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn rejects_malformed_records() {
        assert!(matches!(
            decode(&[1, 2, 3]),
            Err(DecodeError::TooShort { .. })
        ));
        let mut record = data_record(b"abc", 3);
        record[0] = 99;
        assert_eq!(
            decode(&record).expect_err("kind").to_string(),
            "record has unknown kind 99"
        );
        let record = data_record(b"abc", 300);
        assert!(matches!(
            decode(&record),
            Err(DecodeError::PayloadLength {
                declared: 300,
                available: 3
            })
        ));
    }
}
