//! Read queries over one MVCC snapshot. Readers never block the writer, and
//! the writer never blocks them.
//!
//! Every list is driven by an index in descending ordinal order (ordinals
//! are handed out in creation order, and creation times never go backwards
//! in that order), so a keyset cursor, the position of the last process
//! shown, resumes a walk exactly where it stopped: processes created after
//! the walk began sort above it and are never shown, none is shown twice.

use super::layers::{Applied, Merged, Pending, SharedLayer};
use super::schema::{
    decode_or_corrupt, history_seq, record_key, record_kind_end, Counters, FeedEntry,
    HistoryRecord, Kind,
};
use super::StoreError;
use crate::domain::{EventType, Millis, Process, Status, Task};
use redb::{Database, ReadTransaction, ReadableDatabase};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The store file as of one apply step, shared by readers.
struct AppliedState {
    applied: Applied,
    /// For a daemon's snapshot, the handle it was read from: a reopen
    /// waits until no snapshot of the old handle is left.
    _handle: Option<Arc<Database>>,
}

/// A consistent view of the store: the store file as of its last apply
/// step under the pending layers, up to one acknowledged group.
pub struct Snapshot {
    applied: Arc<AppliedState>,
    pending: Pending,
    /// For a daemon's snapshot: its group, counted among the live readers
    /// while it lives, so that the writer keeps what it sees.
    _reader: Option<ReaderMark>,
}

/// The groups live readers see, with how many see each.
type Readers = Arc<Mutex<std::collections::BTreeMap<u64, usize>>>;

/// A live reader's group, counted in `Readers` until it is dropped.
struct ReaderMark {
    readers: Readers,
    visible: u64,
}

impl Drop for ReaderMark {
    fn drop(&mut self) {
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = readers.get_mut(&self.visible) {
            *count -= 1;
            if *count == 0 {
                readers.remove(&self.visible);
            }
        }
    }
}

/// A position in a newest-first listing: the last process shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListPosition {
    pub created_at: Millis,
    pub ordinal: u64,
}

/// The filters of `GET /v1/processes`, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub statuses: Vec<Status>,
    pub process_type: Option<String>,
    pub correlation_id: Option<String>,
    /// Correlation ids starting with this (not empty).
    pub correlation_id_prefix: Option<String>,
    /// (key, value): attributes the process has, all of them; keys the
    /// attribute index holds (`index.attributes`) only.
    pub attributes: Vec<(String, String)>,
    /// Strictly after, strictly before.
    pub created_after: Option<Millis>,
    pub created_before: Option<Millis>,
    /// Only processes stalled now.
    pub stalled: bool,
    pub limit: usize,
    pub after: Option<ListPosition>,
}

pub struct ListPage {
    pub items: Vec<Process>,
    /// Where the next page starts, when there may be one.
    pub next: Option<ListPosition>,
}

/// The filters of `GET /v1/changes`.
#[derive(Clone, Debug, Default)]
pub struct FeedQuery {
    pub after_seq: u64,
    pub process_id: Option<String>,
    pub process_type: Option<String>,
    /// Empty (and `wants_deleted` false): every type.
    pub types: Vec<EventType>,
    /// `process.deleted` named among the types.
    pub wants_deleted: bool,
    pub limit: usize,
}

/// One item of the change feed.
#[derive(Clone, Debug)]
pub enum FeedItem {
    Event {
        process_id: String,
        record: Box<HistoryRecord>,
        process_status: Status,
        task_status: Option<Status>,
    },
    Deleted {
        seq: u64,
        process_id: String,
        process_type: Option<String>,
        at: Millis,
    },
}

impl FeedItem {
    pub fn process_id(&self) -> &str {
        match self {
            FeedItem::Event { process_id, .. } | FeedItem::Deleted { process_id, .. } => process_id,
        }
    }

    pub fn seq(&self) -> u64 {
        match self {
            FeedItem::Event { record, .. } => record.seq,
            FeedItem::Deleted { seq, .. } => *seq,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            FeedItem::Event { record, .. } => record.event.kind.as_str(),
            FeedItem::Deleted { .. } => "process.deleted",
        }
    }
}

pub enum FeedRead {
    Page {
        items: Vec<FeedItem>,
        /// Where the next read starts: the last seq looked at, which may be
        /// past the last item when the filters passed over some.
        next_after_seq: u64,
    },
    /// Events after the asked-for seq were removed without a trace.
    Gone { oldest_seq: u64 },
}

/// Feed entries one read looks at, at most, whatever its filters: a read
/// with a rare filter returns fewer items, and a cursor past those it
/// passed over, rather than walk the whole feed.
pub const FEED_SCAN_LIMIT: usize = 10_000;

pub struct HistoryPage {
    pub items: Vec<HistoryRecord>,
    /// The last seq shown, when there are more.
    pub next_after_seq: Option<u64>,
}

type Ordinals<'a> = Box<dyn Iterator<Item = Result<u64, StoreError>> + 'a>;

/// What readers see, and the one handle on the store that the daemon
/// reads and writes with.
///
/// Beginning a read transaction takes file locks (other processes may read
/// the store) and opening tables walks a tree: too much for every request.
/// The store file changes only at an apply step, so its read transaction
/// is shared by every reader until the next one (`applied`); each group
/// only makes more of the pending layers visible (`publish`), which costs
/// a reader nothing to take. The writer publishes a group before it
/// answers for it, so a request that begins after a 2xx sees that write.
/// Nothing keeps an old read transaction once a newer apply exists, which
/// lets redb reuse the pages it frees.
///
/// After an I/O error redb refuses every further use of its handle; the
/// writer then calls `reopen`, which waits for the readers of the old
/// handle to finish and opens the file anew.
pub struct SharedSnapshots {
    path: PathBuf,
    cache_bytes: usize,
    db: RwLock<Option<Arc<Database>>>,
    published: Mutex<Published>,
    readers: Readers,
}

/// The state readers take, changed only together.
struct Published {
    /// The store file as of its last apply step, once a reader asked.
    applied: Option<Arc<AppliedState>>,
    /// The layer being applied, if any.
    frozen: Option<SharedLayer>,
    /// The layer the writer writes into.
    active: SharedLayer,
    /// The last group readers see.
    visible: u64,
}

impl SharedSnapshots {
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let db = super::open_for_writer(path, cache_bytes)?;
        Ok(SharedSnapshots::with_database(db, path, cache_bytes))
    }

    /// Over a store already open (on a disk of a test's, say), at `path`
    /// should it need reopening.
    pub fn with_database(db: Database, path: &Path, cache_bytes: usize) -> Self {
        SharedSnapshots {
            path: path.to_owned(),
            cache_bytes,
            db: RwLock::new(Some(Arc::new(db))),
            published: Mutex::new(Published {
                applied: None,
                frozen: None,
                active: SharedLayer::default(),
                visible: 0,
            }),
            readers: Readers::default(),
        }
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handle, unless it is being reopened.
    pub fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Reopening)
    }

    fn published(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest acknowledged state.
    pub fn get(&self) -> Result<Arc<Snapshot>, StoreError> {
        let mut published = self.published();
        let applied = match &published.applied {
            Some(applied) => applied.clone(),
            None => {
                let db = self.database()?;
                let applied = Arc::new(AppliedState {
                    applied: Applied::begin(db.as_ref())?,
                    _handle: Some(db),
                });
                published.applied = Some(applied.clone());
                applied
            }
        };
        let visible = published.visible;
        *self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(visible)
            .or_default() += 1;
        Ok(Arc::new(Snapshot {
            applied,
            pending: Pending::new(published.frozen.clone(), published.active.clone(), visible),
            _reader: Some(ReaderMark {
                readers: self.readers.clone(),
                visible,
            }),
        }))
    }

    /// The oldest group a live reader sees: the writer keeps every version
    /// a reader from there on may need.
    pub fn reader_floor(&self) -> u64 {
        let visible = self.published().visible;
        let oldest = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .next()
            .copied();
        oldest.map_or(visible, |oldest| oldest.min(visible))
    }

    /// Readers from now on see the groups up to `group`.
    pub fn publish(&self, group: u64) {
        self.published().visible = group;
    }

    /// Readers from now on see `frozen` (being applied) under `active`.
    pub fn set_layers(&self, frozen: Option<SharedLayer>, active: SharedLayer) {
        let mut published = self.published();
        published.frozen = frozen;
        published.active = active;
    }

    /// The store file holds what the frozen layer held: readers from now
    /// on read a new transaction of it, without that layer. Returns the
    /// layer, for the caller to free where it costs no reader.
    pub fn applied_step(&self) -> Option<SharedLayer> {
        let (frozen, stale) = {
            let mut published = self.published();
            (published.frozen.take(), published.applied.take())
        };
        drop(stale);
        frozen
    }

    /// An apply step of its own wrote every layer into the store file:
    /// readers from now on read a new transaction of it, under `active`
    /// (new and empty) alone.
    pub fn applied_step_into(&self, active: SharedLayer) {
        let stale = {
            let mut published = self.published();
            published.frozen = None;
            published.active = active;
            published.applied.take()
        };
        drop(stale);
    }

    /// Forgets the shared read transaction; the next reader begins a new
    /// one.
    fn invalidate(&self) {
        let stale = self.published().applied.take();
        drop(stale);
    }

    /// Drops the handle (once its readers are done) and opens the store
    /// again, for `give_up_after` at most. Readers meanwhile get
    /// `StoreError::Reopening`, a retryable answer.
    pub fn reopen(&self, give_up_after: Duration) -> Result<(), StoreError> {
        let started = Instant::now();
        self.invalidate();
        let old = self
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            // Snapshots and backups in flight hold the handle; redb must not
            // open the file twice while they read it.
            while Arc::strong_count(&old) > 1 && started.elapsed() < give_up_after {
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(old);
        }
        loop {
            match super::open_for_writer(&self.path, self.cache_bytes) {
                Ok(db) => {
                    *self.db.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(db));
                    return Ok(());
                }
                Err(error) if started.elapsed() >= give_up_after => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, "the store cannot be reopened yet; trying again");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Closes the store at shutdown, reporting what redb reports.
    pub fn close(self) -> Result<(), StoreError> {
        self.invalidate();
        let db = self.db.into_inner().unwrap_or_else(PoisonError::into_inner);
        match db.map(Arc::try_unwrap) {
            Some(Ok(db)) => Ok(db.close()?),
            // Still referenced (a reader outlived the server): dropping the
            // last reference closes it.
            Some(Err(_)) | None => Ok(()),
        }
    }
}

/// Each table of a snapshot: the store file's under the pending layers.
macro_rules! tables {
    ($($name:ident: $field:ident, $key:ty => $value:ty;)*) => {
        impl Snapshot {
            $(
                pub fn $name(&self) -> Merged<'_, $key, $value> {
                    self.pending.$field(&self.applied.applied)
                }
            )*
        }
    };
}

tables! {
    meta: meta, &'static str => &'static [u8];
    process_ids: process_ids, &'static str => u64;
    records: records, &'static [u8] => &'static [u8];
    events: events, &'static [u8] => &'static [u8];
    by_created: by_created, (i64, u64) => ();
    by_status: by_status, (u8, u64) => ();
    by_type: by_type, (&'static str, u8, u64) => ();
    by_correlation: by_correlation, (&'static str, u64) => ();
    feed_entries: feed, u64 => &'static [u8];
    by_stalled: by_stalled, u64 => ();
    by_finished: by_finished, (u8, i64, u64) => ();
    by_correlation_prefix: by_correlation_prefix, (&'static str, u64) => &'static str;
    by_attribute: by_attribute, (&'static str, &'static str, u64) => ();
    due: due, (i64, u64, u8, u32) => ();
    feed_marks: feed_marks, u64 => i64;
    duration_summaries: durations, (&'static str, u8, i64) => &'static [u8];
}

impl Snapshot {
    /// The store file alone, without pending layers: a backup, or a store
    /// no daemon holds (whose write log holds nothing it lacks).
    pub fn begin(db: &impl ReadableDatabase) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            applied: Arc::new(AppliedState {
                applied: Applied::begin(db)?,
                _handle: None,
            }),
            pending: Pending::none(),
            _reader: None,
        })
    }

    /// The store file under `pending`.
    pub fn with_pending(
        db: &impl ReadableDatabase,
        pending: Pending,
    ) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            applied: Arc::new(AppliedState {
                applied: Applied::begin(db)?,
                _handle: None,
            }),
            pending,
            _reader: None,
        })
    }

    /// The store file's read transaction behind this snapshot, without the
    /// pending layers: for what checks the file itself.
    pub fn file_transaction(&self) -> &ReadTransaction {
        self.applied.applied.transaction()
    }

    /// The store file as of its last apply step, and the pending layers
    /// over it: for the writer.
    pub fn parts(&self) -> (&Applied, &Pending) {
        (&self.applied.applied, &self.pending)
    }

    pub fn counters(&self) -> Result<Counters, StoreError> {
        super::write::load_counters(&self.meta())
    }

    /// The store's id.
    pub fn store_id(&self) -> Result<String, StoreError> {
        super::schema::store_id(&self.meta())
    }

    pub fn ordinal_of(&self, process_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .process_ids()
            .get(process_id)?
            .map(|ordinal| ordinal.value()))
    }

    /// The process at `ordinal` with its attributes: the process record
    /// and the attributes record after it, in one range.
    fn process_at(&self, ordinal: u64) -> Result<Option<Process>, StoreError> {
        let start = record_key(ordinal, Kind::Process, &[]);
        let end = record_key(ordinal, Kind::Process, super::schema::PROCESS_ATTRIBUTES);
        let mut process = None;
        for entry in self.records().range(start.as_slice()..=end.as_slice())? {
            let (key, value) = entry?;
            take_process_record(key.value(), value.value(), &mut process)?;
        }
        Ok(process)
    }

    pub fn process(&self, process_id: &str) -> Result<Option<Process>, StoreError> {
        match self.ordinal_of(process_id)? {
            Some(ordinal) => self.process_at(ordinal),
            None => Ok(None),
        }
    }

    /// The process and its tasks in order of first sight, read in one scan.
    pub fn process_with_tasks(
        &self,
        process_id: &str,
    ) -> Result<Option<(Process, Vec<Task>)>, StoreError> {
        let Some(ordinal) = self.ordinal_of(process_id)? else {
            return Ok(None);
        };
        let start = record_key(ordinal, Kind::Process, &[]);
        let end = record_kind_end(ordinal, Kind::Task);
        let mut process = None;
        let mut tasks = Vec::new();
        for entry in self.records().range(start.as_slice()..end.as_slice())? {
            let (key, value) = entry?;
            if key.value().get(8) == Some(&(Kind::Process as u8)) {
                take_process_record(key.value(), value.value(), &mut process)?;
            } else {
                tasks.push(decode_or_corrupt::<Task>("task record", value.bytes())?);
            }
        }
        Ok(process.map(|process| (process, tasks)))
    }

    /// Events of a process with seq above `after_seq`, in seq order; `None`
    /// when there is no such process.
    pub fn history(
        &self,
        process_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Option<HistoryPage>, StoreError> {
        let Some(ordinal) = self.ordinal_of(process_id)? else {
            return Ok(None);
        };
        let start = record_key(
            ordinal,
            Kind::History,
            &after_seq.saturating_add(1).to_be_bytes(),
        );
        let end = record_kind_end(ordinal, Kind::History);
        let mut items = Vec::new();
        let mut more = false;
        for entry in self.events().range(start.as_slice()..end.as_slice())? {
            if items.len() == limit {
                more = true;
                break;
            }
            let (key, value) = entry?;
            if history_seq(key.value()).is_none() {
                continue;
            }
            items.push(decode_or_corrupt::<HistoryRecord>(
                "history record",
                value.bytes(),
            )?);
        }
        let next_after_seq = if more {
            items.last().map(|record| record.seq)
        } else {
            None
        };
        Ok(Some(HistoryPage {
            items,
            next_after_seq,
        }))
    }

    /// How long the processes that ended in `[from, to)` took, by type
    /// (`store::durations`); the window as `durations::window` takes it.
    pub fn durations(
        &self,
        process_type: Option<&str>,
        window: (Millis, Millis),
    ) -> Result<std::collections::BTreeMap<String, super::durations::Summary>, StoreError> {
        super::durations::summarize(&self.duration_summaries(), process_type, window)
    }

    /// The attribute keys the attribute index holds.
    pub fn indexed_attributes(&self) -> Result<Vec<String>, StoreError> {
        super::schema::indexed_attributes(&self.meta())
    }

    /// One read of the change feed after `query.after_seq`, in seq order.
    pub fn feed(&self, query: &FeedQuery) -> Result<FeedRead, StoreError> {
        let floor = super::schema::feed_floor(&self.meta())?;
        if query.after_seq > 0 && query.after_seq < floor {
            return Ok(FeedRead::Gone {
                oldest_seq: floor + 1,
            });
        }
        let feed = self.feed_entries();
        let mut items = Vec::new();
        let mut next_after_seq = query.after_seq;
        let every_type = query.types.is_empty() && !query.wants_deleted;
        let wanted = |kind: Option<EventType>| {
            every_type
                || match kind {
                    Some(kind) => query.types.contains(&kind),
                    None => query.wants_deleted,
                }
        };
        if let Some(process_id) = &query.process_id {
            // One process: its own history, never the others'.
            let Some(ordinal) = self.ordinal_of(process_id)? else {
                return Ok(FeedRead::Page {
                    items,
                    next_after_seq,
                });
            };
            let start = record_key(
                ordinal,
                Kind::History,
                &query.after_seq.saturating_add(1).to_be_bytes(),
            );
            let end = record_kind_end(ordinal, Kind::History);
            let mut process = None;
            for entry in self.events().range(start.as_slice()..end.as_slice())? {
                if items.len() == query.limit {
                    break;
                }
                let (key, value) = entry?;
                let Some(seq) = history_seq(key.value()) else {
                    continue;
                };
                next_after_seq = seq;
                let record: HistoryRecord = decode_or_corrupt("history record", value.bytes())?;
                if !wanted(Some(record.event.kind)) {
                    continue;
                }
                if query.process_type.is_some() {
                    if process.is_none() {
                        process = self.process_at(ordinal)?;
                    }
                    let kind = process.as_ref().and_then(|p| p.process_type.as_ref());
                    if kind != query.process_type.as_ref() {
                        continue;
                    }
                }
                let (process_status, task_status) = match feed.get(seq)? {
                    Some(bytes) => match decode_or_corrupt("feed entry", bytes.bytes())? {
                        FeedEntry::Event {
                            process_status,
                            task_status,
                            ..
                        } => (process_status, task_status),
                        FeedEntry::Deleted { .. } => continue,
                    },
                    None => continue,
                };
                items.push(FeedItem::Event {
                    process_id: process_id.clone(),
                    record: Box::new(record),
                    process_status,
                    task_status,
                });
            }
            return Ok(FeedRead::Page {
                items,
                next_after_seq,
            });
        }
        let mut types: HashMap<u64, Option<String>> = HashMap::new();
        for (looked, entry) in feed.range(query.after_seq.saturating_add(1)..)?.enumerate() {
            if items.len() == query.limit || looked == FEED_SCAN_LIMIT {
                break;
            }
            let (seq, value) = entry?;
            let seq = seq.value();
            next_after_seq = seq;
            match decode_or_corrupt::<FeedEntry>("feed entry", value.bytes())? {
                FeedEntry::Event {
                    ordinal,
                    kind,
                    process_status,
                    task_status,
                } => {
                    if !wanted(Some(kind)) {
                        continue;
                    }
                    if let Some(wanted_type) = &query.process_type {
                        let process_type = match types.get(&ordinal) {
                            Some(known) => known.clone(),
                            None => {
                                let found = self.process_at(ordinal)?.and_then(|p| p.process_type);
                                types.insert(ordinal, found.clone());
                                found
                            }
                        };
                        if process_type.as_ref() != Some(wanted_type) {
                            continue;
                        }
                    }
                    let key = record_key(ordinal, Kind::History, &seq.to_be_bytes());
                    let Some(bytes) = self.events().get(key.as_slice())? else {
                        continue;
                    };
                    let record: HistoryRecord = decode_or_corrupt("history record", bytes.bytes())?;
                    items.push(FeedItem::Event {
                        process_id: record.event.process_id.clone(),
                        record: Box::new(record),
                        process_status,
                        task_status,
                    });
                }
                FeedEntry::Deleted {
                    process_id,
                    process_type,
                    at,
                } => {
                    if !wanted(None) {
                        continue;
                    }
                    if query.process_type.is_some() && process_type != query.process_type {
                        continue;
                    }
                    items.push(FeedItem::Deleted {
                        seq,
                        process_id,
                        process_type,
                        at,
                    });
                }
            }
        }
        Ok(FeedRead::Page {
            items,
            next_after_seq,
        })
    }

    /// The first and the last process created, for summaries.
    pub fn oldest_and_newest(&self) -> Result<(Option<Process>, Option<Process>), StoreError> {
        let by_created = self.by_created();
        let oldest = match by_created.range::<(i64, u64)>(..)?.next().transpose()? {
            Some((key, _)) => self.process_at(key.value().1)?,
            None => None,
        };
        let newest = match by_created.range_rev::<(i64, u64)>(..)?.next().transpose()? {
            Some((key, _)) => self.process_at(key.value().1)?,
            None => None,
        };
        Ok((oldest, newest))
    }

    /// Every history record of a process, for admin tools.
    pub fn full_history(&self, process_id: &str) -> Result<Vec<HistoryRecord>, StoreError> {
        Ok(self
            .history(process_id, 0, usize::MAX)?
            .map(|page| page.items)
            .unwrap_or_default())
    }

    /// One page of processes, newest created first.
    pub fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let by_created = self.by_created();
        // The created range, as BY_CREATED keys: [low, high).
        let low = (
            query
                .created_after
                .map_or(Millis::MIN, |after| after.saturating_add(1)),
            0u64,
        );
        let mut high = (Millis::MAX, u64::MAX);
        if let Some(before) = query.created_before {
            high = high.min((before, 0));
        }
        if let Some(after) = query.after {
            high = high.min((after.created_at, after.ordinal));
        }
        if low >= high {
            return Ok(ListPage {
                items: Vec::new(),
                next: None,
            });
        }
        // The same range as ordinals, for the other indexes: [first, end).
        let first_key = by_created.range(low..high)?.next().transpose()?;
        let Some(first) = first_key.map(|(key, _)| key.value().1) else {
            return Ok(ListPage {
                items: Vec::new(),
                next: None,
            });
        };
        let end = match by_created.range(high..)?.next().transpose()? {
            Some((key, _)) => key.value().1,
            None => u64::MAX,
        };

        let driver = Driver::of(query);
        let (by_stalled, by_correlation, by_attribute, by_prefix, by_type, by_status) = (
            self.by_stalled(),
            self.by_correlation(),
            self.by_attribute(),
            self.by_correlation_prefix(),
            self.by_type(),
            self.by_status(),
        );
        let ordinals: Ordinals<'_> = match driver {
            Driver::Stalled => {
                // Few processes are stalled at once: their index drives the walk.
                let range = by_stalled.range_rev(first..end)?;
                Box::new(range.map(|entry| Ok(entry?.0.value())))
            }
            Driver::Correlation(id) => {
                let range = by_correlation.range_rev((id, first)..(id, end))?;
                Box::new(range.map(|entry| Ok(entry?.0.value().1)))
            }
            Driver::Attribute(key, value) => {
                let range = by_attribute.range_rev((key, value, first)..(key, value, end))?;
                Box::new(range.map(|entry| Ok(entry?.0.value().2)))
            }
            Driver::CorrelationPrefix(wanted) => {
                // The longest indexed prefix the wanted one covers; the rest
                // of each id is in the entry, so an id that does not match
                // costs no record read.
                let prefix = super::schema::prefix_to_walk(wanted);
                let rest = &wanted[prefix.len()..];
                let range = by_prefix.range_rev((prefix, first)..(prefix, end))?;
                Box::new(range.filter_map(move |entry| match entry {
                    Ok((key, value)) => value.value().starts_with(rest).then(|| Ok(key.value().1)),
                    Err(error) => Some(Err(error)),
                }))
            }
            Driver::Type(kind) => {
                let statuses = if query.statuses.is_empty() {
                    &Status::ALL[..]
                } else {
                    &query.statuses[..]
                };
                let mut streams = Vec::new();
                for status in statuses {
                    let code = status.code();
                    let range = by_type.range_rev((kind, code, first)..(kind, code, end))?;
                    let stream: Ordinals<'_> = Box::new(range.map(|entry| Ok(entry?.0.value().2)));
                    streams.push(stream.peekable());
                }
                Box::new(MergeDescending { streams })
            }
            Driver::Status => {
                let mut streams = Vec::new();
                for status in &query.statuses {
                    let range =
                        by_status.range_rev((status.code(), first)..(status.code(), end))?;
                    let stream: Ordinals<'_> = Box::new(range.map(|entry| Ok(entry?.0.value().1)));
                    streams.push(stream.peekable());
                }
                Box::new(MergeDescending { streams })
            }
            Driver::Created => {
                let range = by_created.range_rev(low..high)?;
                Box::new(range.map(|entry| Ok(entry?.0.value().1)))
            }
        };

        let mut items = Vec::with_capacity(query.limit.min(1024));
        let mut next = None;
        let checks = IndexChecks::open(self, query, driver);
        for ordinal in ordinals {
            let ordinal = ordinal?;
            // A candidate the indexes already rule out costs a few lookups,
            // not a record read.
            if !checks.may_match(ordinal, query)? {
                continue;
            }
            let Some(process) = self.process_at(ordinal)? else {
                continue;
            };
            if !matches_filters(&process, query) {
                continue;
            }
            if items.len() == query.limit {
                next = items
                    .last()
                    .map(|(ordinal, process): &(u64, Process)| ListPosition {
                        created_at: process.created_at,
                        ordinal: *ordinal,
                    });
                break;
            }
            items.push((ordinal, process));
        }
        Ok(ListPage {
            items: items.into_iter().map(|(_, process)| process).collect(),
            next,
        })
    }
}

/// The index that drives a listing's walk: the first of these the query
/// names, the creation order when it names none.
#[derive(Clone, Copy)]
enum Driver<'q> {
    Stalled,
    Correlation(&'q str),
    /// The first attribute filter.
    Attribute(&'q str, &'q str),
    CorrelationPrefix(&'q str),
    /// The type, with the statuses asked for.
    Type(&'q str),
    Status,
    Created,
}

impl<'q> Driver<'q> {
    fn of(query: &'q ListQuery) -> Driver<'q> {
        if query.stalled {
            Driver::Stalled
        } else if let Some(id) = &query.correlation_id {
            Driver::Correlation(id)
        } else if let Some((key, value)) = query.attributes.first() {
            Driver::Attribute(key, value)
        } else if let Some(prefix) = &query.correlation_id_prefix {
            Driver::CorrelationPrefix(prefix)
        } else if let Some(kind) = &query.process_type {
            Driver::Type(kind)
        } else if !query.statuses.is_empty() {
            Driver::Status
        } else {
            Driver::Created
        }
    }
}

/// The status and attribute filters that the driving index does not imply,
/// checked against their own indexes by point lookups before a candidate's
/// record is read.
struct IndexChecks<'s> {
    by_status: Option<Merged<'s, (u8, u64), ()>>,
    by_attribute: Option<Merged<'s, (&'static str, &'static str, u64), ()>>,
    /// The attribute filters the walk already satisfies (the first, when
    /// it drives).
    attributes_implied: usize,
}

impl<'s> IndexChecks<'s> {
    fn open(snapshot: &'s Snapshot, query: &ListQuery, driver: Driver<'_>) -> IndexChecks<'s> {
        let statuses_implied = matches!(driver, Driver::Type(_) | Driver::Status);
        let attributes_implied = usize::from(matches!(driver, Driver::Attribute(..)));
        IndexChecks {
            by_status: (!query.statuses.is_empty() && !statuses_implied)
                .then(|| snapshot.by_status()),
            by_attribute: (query.attributes.len() > attributes_implied)
                .then(|| snapshot.by_attribute()),
            attributes_implied,
        }
    }

    fn may_match(&self, ordinal: u64, query: &ListQuery) -> Result<bool, StoreError> {
        if let Some(by_status) = &self.by_status {
            let mut any = false;
            for status in &query.statuses {
                if by_status.get((status.code(), ordinal))?.is_some() {
                    any = true;
                    break;
                }
            }
            if !any {
                return Ok(false);
            }
        }
        if let Some(by_attribute) = &self.by_attribute {
            for (key, value) in &query.attributes[self.attributes_implied..] {
                if by_attribute
                    .get((key.as_str(), value.as_str(), ordinal))?
                    .is_none()
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// The filters not already implied by the index that drove the walk.
fn matches_filters(process: &Process, query: &ListQuery) -> bool {
    (!query.stalled || process.stalled_since.is_some())
        && (query.statuses.is_empty() || query.statuses.contains(&process.status))
        && query
            .process_type
            .as_ref()
            .is_none_or(|wanted| process.process_type.as_ref() == Some(wanted))
        && query
            .correlation_id
            .as_ref()
            .is_none_or(|wanted| process.correlation_id.as_ref() == Some(wanted))
        && query.correlation_id_prefix.as_ref().is_none_or(|wanted| {
            process
                .correlation_id
                .as_ref()
                .is_some_and(|id| id.starts_with(wanted.as_str()))
        })
        && query
            .attributes
            .iter()
            .all(|(key, value)| process.attributes.get(key) == Some(value))
}

/// Merges several descending ordinal streams into one, for a filter on
/// several statuses. A process is in exactly one status, so no ordinal
/// appears in two streams.
struct MergeDescending<'a> {
    streams: Vec<std::iter::Peekable<Ordinals<'a>>>,
}

impl Iterator for MergeDescending<'_> {
    type Item = Result<u64, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, u64)> = None;
        for (index, stream) in self.streams.iter_mut().enumerate() {
            match stream.peek() {
                Some(Ok(ordinal)) if best.is_none_or(|(_, top)| *ordinal > top) => {
                    best = Some((index, *ordinal));
                }
                Some(Ok(_)) => {}
                // Surface errors as soon as they are met.
                Some(Err(_)) => return stream.next(),
                None => {}
            }
        }
        let (index, _) = best?;
        self.streams[index].next()
    }
}

/// Takes a record of `Kind::Process` into `process`: the process record
/// itself, or (after it, in key order) its attributes.
fn take_process_record(
    key: &[u8],
    value: &[u8],
    process: &mut Option<Process>,
) -> Result<(), StoreError> {
    if key.get(9..) == Some(super::schema::PROCESS_ATTRIBUTES) {
        let attributes = decode_or_corrupt("process attributes", value)?;
        if let Some(process) = process.as_mut() {
            process.attributes = attributes;
        }
    } else {
        *process = Some(decode_or_corrupt::<Process>("process record", value)?);
    }
    Ok(())
}
