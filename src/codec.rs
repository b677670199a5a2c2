//! The one place that turns stored values into bytes and back.
//!
//! Every value starts with a format version byte, so that a later encoding
//! can be introduced by a migration that rewrites records, rather than a
//! guess at what old bytes mean. bincode is pinned at `=2.0.1`: the 3.x
//! release is an empty placeholder.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The encoding of every value this release writes. A later layout of a
/// record gets a byte of its own and a migration that rewrites the
/// records, never a guess at what old bytes mean.
const FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("a stored value is empty")]
    Empty,
    #[error("a stored value has format version {0}, which this build cannot read")]
    UnknownFormat(u8),
    #[error("a stored value cannot be decoded: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("a stored value has {0} bytes left over after decoding")]
    TrailingBytes(usize),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_V1);
    // Writing into a Vec cannot fail, and every stored type is plain data
    // with no custom serializer that could refuse.
    if let Err(error) = bincode::serde::encode_into_std_write(value, &mut out, config()) {
        unreachable!("encoding plain data into memory failed: {error}");
    }
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_V1 {
        return Err(CodecError::UnknownFormat(version));
    }
    decode_body(body)
}

fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(body, config())?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Process, Task};

    #[test]
    fn records_round_trip_and_carry_their_format_byte() {
        let mut process = Process::new("p-1".into(), 1_700_000_000_000);
        process.attributes.insert("tenant".into(), "42".into());
        let bytes = encode(&process);
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<Process>(&bytes).unwrap(), process);
        let task = Task::new("t".into(), 5);
        assert_eq!(decode::<Task>(&encode(&task)).unwrap(), task);
    }

    #[test]
    fn a_borrowed_history_record_encodes_like_the_owned_one() {
        use crate::domain::{Event, EventInput};
        use crate::domain::{Source, StoredResult};
        use crate::store::schema::{HistoryRecord, HistoryRecordRef};
        let input: EventInput = serde_json::from_str(
            r#"{"type":"task.failed","process_id":"p","task_id":"t","event_id":"k","error":{"code":"E","message":"m"},"attributes":{"a":"b"}}"#,
        )
        .unwrap();
        let event: Event = input.validate(None).unwrap();
        let owned = HistoryRecord {
            seq: 7,
            result: StoredResult::Stale,
            received_at: 12,
            event: event.clone(),
            source: Source::Sender,
        };
        let borrowed = HistoryRecordRef {
            seq: 7,
            result: StoredResult::Stale,
            received_at: 12,
            event: &event,
            source: Source::Sender,
        };
        assert_eq!(encode(&borrowed), encode(&owned));
        assert_eq!(decode::<HistoryRecord>(&encode(&borrowed)).unwrap(), owned);
    }

    #[test]
    fn unknown_formats_and_garbage_are_errors_not_panics() {
        let mut bytes = encode(&Process::new("p".into(), 0));
        bytes[0] = 9;
        assert!(matches!(
            decode::<Process>(&bytes),
            Err(CodecError::UnknownFormat(9))
        ));
        assert!(matches!(decode::<Process>(&[]), Err(CodecError::Empty)));
        assert!(decode::<Process>(&[FORMAT_V1, 0xff, 0xff]).is_err());
        let mut long = encode(&7u64);
        long.push(0);
        assert!(matches!(
            decode::<u64>(&long),
            Err(CodecError::TrailingBytes(1))
        ));
    }
}
