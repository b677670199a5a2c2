//! The attribute index: which attribute keys it holds follows
//! `index.attributes`, brought up to date at each start before the store
//! is served.
//!
//! `META_INDEXED_ATTRIBUTES` lists every key the index may hold entries
//! for; `META_ATTRIBUTE_INDEX_BUILDING` those of them still being built.
//! A key is listed before its first entry is written and unlisted after
//! its last is removed, so a start interrupted at any point leaves nothing
//! that the next start does not find: it finishes the keys still being
//! built and removes those no longer wanted.

use super::schema::{
    self, decode_or_corrupt, Kind, BY_ATTRIBUTE, BY_CORRELATION, BY_CORRELATION_PREFIX, BY_CREATED,
    META, META_INDEXED_ATTRIBUTES, RECORDS,
};
use super::StoreError;
use crate::codec;
use crate::progress::{Progress, Show, Unit};
use redb::{Database, ReadableDatabase, ReadableTable};
use std::collections::{BTreeMap, BTreeSet};

/// The keys among `META_INDEXED_ATTRIBUTES` whose entries are not all
/// written yet.
const META_ATTRIBUTE_INDEX_BUILDING: &str = "attribute_index_building";

/// Entries written or removed per transaction while the index is rebuilt.
const CHUNK: usize = 20_000;

/// Brings the attribute index to hold exactly the keys in `wanted`:
/// entries of keys no longer wanted are removed, keys newly wanted are
/// indexed over every process, in transactions of a few thousand entries,
/// with progress in the log. Returns how many processes were read.
pub fn sync_attribute_index(db: &Database, wanted: &[String]) -> Result<u64, StoreError> {
    let wanted: BTreeSet<String> = wanted.iter().cloned().collect();
    let (listed, building) = {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let listed: BTreeSet<String> = schema::indexed_attributes(&meta)?.into_iter().collect();
        let building: BTreeSet<String> = match meta.get(META_ATTRIBUTE_INDEX_BUILDING)? {
            Some(bytes) => {
                decode_or_corrupt::<Vec<String>>("attribute keys being indexed", bytes.value())?
                    .into_iter()
                    .collect()
            }
            None => BTreeSet::new(),
        };
        (listed, building)
    };
    let complete: BTreeSet<&String> = listed.difference(&building).collect();
    let to_remove: Vec<String> = listed.difference(&wanted).cloned().collect();
    let to_add: Vec<String> = wanted
        .iter()
        .filter(|key| !complete.contains(key))
        .cloned()
        .collect();
    // Nothing to remove or add: every listed key is wanted and built.
    if to_remove.is_empty() && to_add.is_empty() {
        return Ok(0);
    }
    // Listed first: whatever happens next, the next start knows these
    // keys may have entries.
    let all: BTreeSet<&String> = listed.iter().chain(&to_add).collect();
    write_lists(db, &all.into_iter().cloned().collect::<Vec<_>>(), &to_add)?;
    for key in &to_remove {
        let removed = remove_key(db, key)?;
        tracing::info!(key = %key, removed, "attribute key dropped from the index (no longer in index.attributes)");
    }
    let mut read = 0;
    if !to_add.is_empty() {
        read = add_keys(db, &to_add)?;
    }
    write_lists(db, &wanted.into_iter().collect::<Vec<_>>(), &[])?;
    Ok(read)
}

fn write_lists(db: &Database, listed: &[String], building: &[String]) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(META_INDEXED_ATTRIBUTES, codec::encode(&listed).as_slice())?;
        if building.is_empty() {
            meta.remove(META_ATTRIBUTE_INDEX_BUILDING)?;
        } else {
            meta.insert(
                META_ATTRIBUTE_INDEX_BUILDING,
                codec::encode(&building).as_slice(),
            )?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Removes every entry of `key`. Returns how many there were.
fn remove_key(db: &Database, key: &str) -> Result<u64, StoreError> {
    let mut removed = 0;
    loop {
        let txn = db.begin_write()?;
        let done = {
            let mut table = txn.open_table(BY_ATTRIBUTE)?;
            let mut doomed: Vec<(String, u64)> = Vec::new();
            for entry in table.range((key, "", 0u64)..)? {
                let (entry_key, _) = entry?;
                let (found, value, ordinal) = entry_key.value();
                if found != key || doomed.len() == CHUNK {
                    break;
                }
                doomed.push((value.to_owned(), ordinal));
            }
            for (value, ordinal) in &doomed {
                table.remove((key, value.as_str(), *ordinal))?;
            }
            removed += doomed.len() as u64;
            doomed.len() < CHUNK
        };
        txn.commit()?;
        if done {
            return Ok(removed);
        }
    }
}

/// Indexes `keys` over every process, oldest first. Returns how many
/// processes were read.
fn add_keys(db: &Database, keys: &[String]) -> Result<u64, StoreError> {
    let total = {
        use redb::ReadableTableMetadata;
        db.begin_read()?.open_table(BY_CREATED)?.len()?
    };
    tracing::info!(
        keys = ?keys,
        processes = total,
        "indexing attribute keys newly named in index.attributes; readyz answers 503 until done"
    );
    let started = std::time::Instant::now();
    let progress = Progress::new("indexing attributes", Unit::Records, total, Show::Log);
    let mut after: Option<(i64, u64)> = None;
    let mut read: u64 = 0;
    loop {
        let read_before = read;
        let txn = db.begin_write()?;
        let mut last = None;
        {
            let by_created = txn.open_table(BY_CREATED)?;
            let records = txn.open_table(RECORDS)?;
            let mut index = txn.open_table(BY_ATTRIBUTE)?;
            let range = match after {
                Some(after) => by_created.range((after.0, after.1.saturating_add(1))..)?,
                None => by_created.range::<(i64, u64)>(..)?,
            };
            for entry in range.take(CHUNK) {
                let (key, _) = entry?;
                let (created_at, ordinal) = key.value();
                last = Some((created_at, ordinal));
                let attributes = process_attributes(&records, ordinal)?;
                for (key, value) in super::write::indexed_values(keys, &attributes) {
                    index.insert((key.as_str(), value.as_str(), ordinal), ())?;
                }
                read += 1;
            }
        }
        txn.commit()?;
        match last {
            Some(last) => after = Some(last),
            None => break,
        }
        progress.add(read - read_before);
    }
    progress.finish();
    tracing::info!(
        read,
        seconds = started.elapsed().as_secs_f64(),
        "attribute keys indexed"
    );
    Ok(read)
}

/// A process's attributes, from their own record.
fn process_attributes(
    records: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ordinal: u64,
) -> Result<BTreeMap<String, String>, StoreError> {
    let key = schema::record_key(ordinal, Kind::Process, schema::PROCESS_ATTRIBUTES);
    match records.get(key.as_slice())? {
        Some(bytes) => decode_or_corrupt("process attributes", bytes.value()),
        None => Ok(BTreeMap::new()),
    }
}

/// Builds the correlation prefix index from the correlation index, for a
/// store from before it existed. Returns how many ids were indexed.
pub fn build_correlation_prefixes(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let by_correlation = txn.open_table(BY_CORRELATION)?;
    let mut prefixes = txn.open_table(BY_CORRELATION_PREFIX)?;
    let mut indexed = 0;
    for entry in by_correlation.iter()? {
        let (key, _) = entry?;
        let (correlation_id, ordinal) = key.value();
        for (prefix, rest) in schema::correlation_prefixes(correlation_id) {
            prefixes.insert((prefix, ordinal), rest)?;
        }
        indexed += 1;
    }
    Ok(indexed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IncomingEvent;
    use crate::domain::{model::bare_event, EventType};

    fn store_with_teams(dir: &std::path::Path, processes: usize) -> Database {
        let db = crate::store::open_writable(&crate::store::store_path(dir), 1 << 20).unwrap();
        crate::store::write::offline(&db, |batch| {
            for n in 0..processes {
                let mut event = bare_event(EventType::ProcessStarted, None);
                event.process_id = format!("p{n}");
                event.attributes = [("team".to_owned(), format!("team{}", n % 2))].into();
                batch.apply(
                    &IncomingEvent::new(event, 1_795_600_800_000),
                    1_795_600_800_000,
                )?;
            }
            Ok(())
        })
        .unwrap();
        db
    }

    fn entries(db: &Database) -> Vec<(String, String, u64)> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(BY_ATTRIBUTE).unwrap();
        table
            .iter()
            .unwrap()
            .map(|entry| {
                let (key, _) = entry.unwrap();
                let (attribute, value, ordinal) = key.value();
                (attribute.to_owned(), value.to_owned(), ordinal)
            })
            .collect()
    }

    fn listed(db: &Database) -> Vec<String> {
        let txn = db.begin_read().unwrap();
        schema::indexed_attributes(&txn.open_table(META).unwrap()).unwrap()
    }

    /// A start that stopped while indexing a key, with some of its entries
    /// written: the key is listed as being built.
    fn interrupted(db: &Database) {
        write_lists(db, &["team".to_owned()], &["team".to_owned()]).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(BY_ATTRIBUTE)
            .unwrap()
            .insert(("team", "team0", 0), ())
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn an_interrupted_build_is_finished_or_dropped_by_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = store_with_teams(dir.path(), 10);
        let wanted = ["team".to_owned()];

        // Still wanted: the next start indexes every process.
        interrupted(&db);
        assert_eq!(sync_attribute_index(&db, &wanted).unwrap(), 10);
        assert_eq!(entries(&db).len(), 10);
        assert_eq!(listed(&db), wanted);
        // Nothing to do once built.
        assert_eq!(sync_attribute_index(&db, &wanted).unwrap(), 0);

        // No longer wanted: the partial entries go, and the listing.
        let txn = db.begin_write().unwrap();
        txn.open_table(BY_ATTRIBUTE)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
        txn.commit().unwrap();
        interrupted(&db);
        sync_attribute_index(&db, &[]).unwrap();
        assert!(entries(&db).is_empty());
        assert!(listed(&db).is_empty());
    }
}
