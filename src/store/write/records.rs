//! Process and task records: the id map (`PROCESS_IDS`) and, under each
//! process's ordinal in `RECORDS`, its record, its attributes, its tasks
//! and its task-id map.
//!
//! A batch of webhooks often carries several events of one process. The
//! records a request changes are kept here and written once, by `changed`
//! after the request, with the index entries the apply step derives from
//! them.

use super::indexes::IndexedFields;
use crate::codec;
use crate::domain::{Millis, Process, Task};
use crate::store::layers::{Applied, WriteTable, Writing};
use crate::store::schema::{
    self, decode_or_corrupt, record_key, task_ordinal_bytes, task_ordinal_from, Kind,
    PROCESS_ATTRIBUTES,
};
use crate::store::StoreError;
use std::collections::{BTreeMap, HashMap};

/// A process read since the last write-back, as it stands now.
pub struct CachedProcess {
    pub process: Process,
    /// What its index entries in the tables were made from; `None` for a
    /// process created since the last write-back, which has none yet.
    pub indexed: Option<IndexedFields>,
    /// Its values of the indexed attribute keys as the attribute index
    /// holds them, once its attributes are loaded.
    pub indexed_attributes: Vec<(String, String)>,
    /// Changed since it was read: the write-back writes it.
    pub changed: bool,
    /// Whether `process.attributes` holds its attributes yet.
    pub attributes: Attributes,
}

/// A cached process's attributes: read only for an event that brings some
/// (the others leave them alone), written only when one changed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attributes {
    /// Still in their record; `process.attributes` is empty.
    InStore,
    /// In `process.attributes`; `changed` when they must be written.
    Loaded { changed: bool },
}

impl CachedProcess {
    /// A process seen for the first time.
    pub fn new(process: Process) -> CachedProcess {
        CachedProcess {
            process,
            indexed: None,
            indexed_attributes: Vec::new(),
            changed: false,
            attributes: Attributes::Loaded { changed: false },
        }
    }
}

/// A process changed since the last write-back, to be written with its
/// index entries.
pub struct Changed {
    pub ordinal: u64,
    pub cached: CachedProcess,
}

pub struct Records<'a> {
    process_ids: WriteTable<'a, &'static str, u64>,
    records: WriteTable<'a, &'static [u8], &'static [u8]>,
    /// The attribute keys the attribute index holds.
    attribute_keys: Vec<String>,
    /// By ordinal.
    processes: HashMap<u64, CachedProcess>,
    /// Changed tasks, by process ordinal and task ordinal.
    tasks: HashMap<(u64, u32), Task>,
}

impl<'a> Records<'a> {
    pub fn open(writing: &'a Writing, applied: &'a Applied, attribute_keys: Vec<String>) -> Self {
        Records {
            process_ids: writing.process_ids(applied),
            records: writing.records(applied),
            attribute_keys,
            processes: HashMap::new(),
            tasks: HashMap::new(),
        }
    }

    pub fn ordinal_of(&self, process_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .process_ids
            .get(process_id)?
            .map(|ordinal| ordinal.value()))
    }

    /// Later events, in this group and after, find the process by its id.
    pub fn name(&mut self, process_id: &str, ordinal: u64) -> Result<(), StoreError> {
        self.process_ids.insert(process_id, ordinal)
    }

    /// The process at `ordinal` as the group left it, taken out of the
    /// cache (`put_back` it when done) or read from the tables.
    pub fn take(&mut self, ordinal: u64) -> Result<CachedProcess, StoreError> {
        if let Some(cached) = self.processes.remove(&ordinal) {
            return Ok(cached);
        }
        let process: Process =
            schema::process_record(&*self.records, ordinal)?.ok_or_else(|| {
                StoreError::Corrupt {
                    what: format!("process record of ordinal {ordinal}"),
                    source: codec::CodecError::Empty,
                }
            })?;
        Ok(CachedProcess {
            indexed: Some(IndexedFields::of(&process)),
            process,
            indexed_attributes: Vec::new(),
            changed: false,
            attributes: Attributes::InStore,
        })
    }

    /// The process record at `ordinal` as last written back.
    pub fn stored(&self, ordinal: u64) -> Result<Option<Process>, StoreError> {
        schema::process_record(&*self.records, ordinal)
    }

    pub fn put_back(&mut self, ordinal: u64, cached: CachedProcess) {
        self.processes.insert(ordinal, cached);
    }

    /// Whether a process of this ordinal exists (ordinals are never
    /// reused: a removed process's leftovers find nothing).
    pub fn exists(&self, ordinal: u64) -> Result<bool, StoreError> {
        Ok(self.processes.contains_key(&ordinal)
            || self
                .records
                .get(record_key(ordinal, Kind::Process, &[]).as_slice())?
                .is_some())
    }

    /// Reads a cached process's attributes, if they are still in the store.
    pub fn load_attributes(
        &self,
        ordinal: u64,
        cached: &mut CachedProcess,
    ) -> Result<(), StoreError> {
        if cached.attributes == Attributes::InStore {
            let key = record_key(ordinal, Kind::Process, PROCESS_ATTRIBUTES);
            if let Some(bytes) = self.records.get(key.as_slice())? {
                cached.process.attributes = decode_or_corrupt("process attributes", bytes.bytes())?;
            }
            cached.attributes = Attributes::Loaded { changed: false };
            cached.indexed_attributes =
                indexed_values(&self.attribute_keys, &cached.process.attributes);
        }
        Ok(())
    }

    /// The task `task_id` of the process at `ordinal`: its ordinal, the
    /// task as the group left it, and whether it is new (not yet stored).
    pub fn task(
        &self,
        ordinal: u64,
        process: &Process,
        task_id: &str,
        now: Millis,
    ) -> Result<(u32, Task, bool), StoreError> {
        let map_key = record_key(ordinal, Kind::TaskId, task_id.as_bytes());
        let task_ordinal = match self.records.get(map_key.as_slice())? {
            Some(bytes) => task_ordinal_from(bytes.bytes()),
            None => None,
        };
        let Some(task_ordinal) = task_ordinal else {
            return Ok((process.task_total, Task::new(task_id.to_owned(), now), true));
        };
        let task = self
            .task_at(ordinal, task_ordinal)?
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("task record {task_id} of process {}", process.id),
                source: codec::CodecError::Empty,
            })?;
        Ok((task_ordinal, task, false))
    }

    /// A task by its ordinal, as the group left it.
    pub fn task_at(&self, ordinal: u64, task_ordinal: u32) -> Result<Option<Task>, StoreError> {
        if let Some(task) = self.tasks.get(&(ordinal, task_ordinal)) {
            return Ok(Some(task.clone()));
        }
        let key = record_key(ordinal, Kind::Task, &task_ordinal_bytes(task_ordinal));
        match self.records.get(key.as_slice())? {
            Some(bytes) => decode_or_corrupt("task record", bytes.bytes()).map(Some),
            None => Ok(None),
        }
    }

    /// Keeps a changed task, to be written back.
    pub fn put_task(&mut self, ordinal: u64, task_ordinal: u32, task: Task) {
        self.tasks.insert((ordinal, task_ordinal), task);
    }

    /// Maps a new task's id to its ordinal.
    pub fn name_task(
        &mut self,
        ordinal: u64,
        task_id: &str,
        task_ordinal: u32,
    ) -> Result<(), StoreError> {
        let key = record_key(ordinal, Kind::TaskId, task_id.as_bytes());
        self.records
            .insert(key.as_slice(), task_ordinal_bytes(task_ordinal).as_slice())
    }

    /// The processes changed since the last call, in ordinal order, their
    /// records and changed tasks written; the caller writes their index
    /// entries. Forgets what it read.
    pub fn write_back(&mut self) -> Result<Vec<Changed>, StoreError> {
        let mut changed: Vec<Changed> = self
            .processes
            .drain()
            .filter(|(_, cached)| cached.changed)
            .map(|(ordinal, cached)| Changed { ordinal, cached })
            .collect();
        // In key order: neighbours in the tree are written one after another.
        changed.sort_unstable_by_key(|changed| changed.ordinal);
        for Changed { ordinal, cached } in &mut changed {
            // The attributes go to their own record, and only when changed.
            let attributes = std::mem::take(&mut cached.process.attributes);
            self.records.insert(
                record_key(*ordinal, Kind::Process, &[]).as_slice(),
                codec::encode(&cached.process).as_slice(),
            )?;
            if cached.attributes == (Attributes::Loaded { changed: true }) {
                let key = record_key(*ordinal, Kind::Process, PROCESS_ATTRIBUTES);
                if attributes.is_empty() {
                    self.records.remove(key.as_slice())?;
                } else {
                    self.records
                        .insert(key.as_slice(), codec::encode(&attributes).as_slice())?;
                }
            }
            cached.process.attributes = attributes;
        }
        let mut tasks: Vec<_> = self.tasks.drain().collect();
        tasks.sort_unstable_by_key(|&(key, _)| key);
        for ((ordinal, task_ordinal), task) in tasks {
            self.records.insert(
                record_key(ordinal, Kind::Task, &task_ordinal_bytes(task_ordinal)).as_slice(),
                codec::encode(&task).as_slice(),
            )?;
        }
        Ok(changed)
    }

    /// Removes a process's id and every record under its ordinal; returns
    /// the process as the group left it (its attributes loaded when the
    /// attribute index may hold entries of them), or `None` when there is
    /// no such process.
    pub fn remove(&mut self, process_id: &str) -> Result<Option<(u64, CachedProcess)>, StoreError> {
        let Some(ordinal) = self.ordinal_of(process_id)? else {
            return Ok(None);
        };
        self.process_ids.remove(process_id)?;
        // What was changed of it and not yet written goes too.
        let mut cached = self.take(ordinal)?;
        if !self.attribute_keys.is_empty() && cached.indexed.is_some() {
            // Its entries in the attribute index are made of them.
            self.load_attributes(ordinal, &mut cached)?;
        }
        self.tasks.retain(|&(task_of, _), _| task_of != ordinal);
        let (start, end) = schema::process_range(ordinal);
        self.records
            .remove_range(start.as_slice()..end.as_slice())?;
        Ok(Some((ordinal, cached)))
    }

    /// The attribute keys the attribute index holds.
    pub fn attribute_keys(&self) -> &[String] {
        &self.attribute_keys
    }
}

/// The values of `keys` among `attributes`, in the order of `keys`.
pub fn indexed_values(
    keys: &[String],
    attributes: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    keys.iter()
        .filter_map(|key| Some((key.clone(), attributes.get(key)?.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::write::scratch::Scratch;

    fn process(id: &str, attributes: &[(&str, &str)]) -> Process {
        let mut process = Process::new(id.into(), 1_000);
        process.attributes = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        process
    }

    #[test]
    fn a_process_is_written_once_a_write_back_with_its_attributes_apart() {
        let mut scratch = Scratch::new();
        let keys = vec!["team".to_owned()];
        scratch.group(|writing, applied| {
            let mut records = Records::open(writing, applied, keys.clone());
            let mut cached = CachedProcess::new(process("p", &[("team", "a"), ("x", "1")]));
            cached.changed = true;
            cached.attributes = Attributes::Loaded { changed: true };
            records.name("p", 0).unwrap();
            records.put_back(0, cached);
            let changed = records.write_back().unwrap();
            assert_eq!(changed.len(), 1);
            assert_eq!(
                changed[0].cached.process.attributes.len(),
                2,
                "handed back whole"
            );
            // Written back, the process is read from the tables again.
            assert!(records.write_back().unwrap().is_empty());
        });
        scratch.apply();
        scratch.group(|writing, applied| {
            let mut records = Records::open(writing, applied, keys.clone());
            assert_eq!(records.ordinal_of("p").unwrap(), Some(0));
            let stored = records.stored(0).unwrap().unwrap();
            assert!(stored.attributes.is_empty(), "the record holds none");
            let mut cached = records.take(0).unwrap();
            assert_eq!(cached.attributes, Attributes::InStore);
            records.load_attributes(0, &mut cached).unwrap();
            assert_eq!(cached.process.attributes.len(), 2);
            assert_eq!(cached.indexed_attributes, vec![("team".into(), "a".into())]);
            records.put_back(0, cached);
            // A change that leaves the attributes in their record (never
            // loaded) does not write them: an empty map there is no
            // removal.
            let mut untouched = records.take(0).unwrap();
            assert_eq!(untouched.attributes, Attributes::Loaded { changed: false });
            untouched.attributes = Attributes::InStore;
            untouched.process.attributes.clear();
            untouched.changed = true;
            records.put_back(0, untouched);
            records.write_back().unwrap();
        });
        scratch.read(|pending, applied| {
            let records = pending.records(applied);
            let key = record_key(0, Kind::Process, PROCESS_ATTRIBUTES);
            assert!(
                records.get(key.as_slice()).unwrap().is_some(),
                "attributes kept"
            );
        });
    }

    #[test]
    fn tasks_are_found_by_id_and_a_removed_process_leaves_nothing() {
        let mut scratch = Scratch::new();
        scratch.group(|writing, applied| {
            let mut records = Records::open(writing, applied, Vec::new());
            let mut cached = CachedProcess::new(process("p", &[]));
            let (ordinal, task, is_new) = records.task(0, &cached.process, "t", 5).unwrap();
            assert_eq!((ordinal, is_new), (0, true));
            records.name_task(0, "t", ordinal).unwrap();
            records.put_task(0, ordinal, task);
            cached.process.task_total = 1;
            cached.changed = true;
            records.name("p", 0).unwrap();
            records.put_back(0, cached);
            records.write_back().unwrap();
            let process = records.stored(0).unwrap().unwrap();
            let (again, task, is_new) = records.task(0, &process, "t", 9).unwrap();
            assert_eq!((again, task.id.as_str(), is_new), (0, "t", false));
            assert_eq!(
                records.task(0, &process, "u", 9).unwrap().0,
                1,
                "the next ordinal"
            );
        });
        scratch.apply();
        scratch.group(|writing, applied| {
            let mut records = Records::open(writing, applied, Vec::new());
            let (ordinal, _) = records.remove("p").unwrap().unwrap();
            assert_eq!(ordinal, 0);
            assert!(records.remove("p").unwrap().is_none());
            assert!(!records.exists(0).unwrap());
        });
        scratch.read(|pending, applied| {
            let (start, end) = schema::process_range(0);
            let left = pending
                .records(applied)
                .range(start.as_slice()..end.as_slice())
                .unwrap()
                .count();
            assert_eq!(left, 0);
            assert!(pending.process_ids(applied).get("p").unwrap().is_none());
        });
    }
}
