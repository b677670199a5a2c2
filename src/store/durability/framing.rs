//! How the write log (and an earlier build's page journal) frame records:
//! a 32-byte header (a magic number, the CRC-32 of everything after it, a
//! number the file orders its records by, the store file's inode, the
//! payload's length), then the payload. A record counts only when it is
//! whole, its checksum matches, and it belongs to the store file it is
//! read for.

use super::LogFile;
use std::io;

pub const HEADER_BYTES: usize = 32;

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub number: u64,
    pub payload: Vec<u8>,
}

/// Fills in the header of the record in `record`, whose payload follows
/// the `HEADER_BYTES` left for it.
pub fn seal(record: &mut [u8], magic: u32, number: u64, ino: u64) {
    let payload_len = (record.len() - HEADER_BYTES) as u32;
    record[0..4].copy_from_slice(&magic.to_le_bytes());
    record[8..16].copy_from_slice(&number.to_le_bytes());
    record[16..24].copy_from_slice(&ino.to_le_bytes());
    record[24..28].copy_from_slice(&payload_len.to_le_bytes());
    record[28..32].fill(0);
    let checksum = crc32fast::hash(&record[8..]);
    record[4..8].copy_from_slice(&checksum.to_le_bytes());
}

/// The record at `pos`, if a whole and intact one with this magic number,
/// of the store file with inode `ino`, ends before `end`.
pub fn read(
    file: &(impl LogFile + ?Sized),
    magic: u32,
    ino: u64,
    pos: u64,
    end: u64,
) -> io::Result<Option<Record>> {
    if pos + HEADER_BYTES as u64 > end {
        return Ok(None);
    }
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut header, pos)?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
    let long = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
    let payload_len = u64::from(word(24));
    if word(0) != magic || long(16) != ino || pos + HEADER_BYTES as u64 + payload_len > end {
        return Ok(None);
    }
    let mut payload = vec![0u8; payload_len as usize];
    file.read_exact_at(&mut payload, pos + HEADER_BYTES as u64)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..]);
    hasher.update(&payload);
    if hasher.finalize() != word(4) {
        return Ok(None);
    }
    Ok(Some(Record {
        number: long(8),
        payload,
    }))
}
