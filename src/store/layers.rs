//! Pending state: what acknowledged write groups changed that the store
//! file does not hold yet, kept in memory as one ordered map per table, and
//! every table read as that map over the store file.
//!
//! A group is durable once the write log holds it (`durability`); its
//! changes go into the **active** layer, each entry under the group's
//! number, and become visible to readers once the group is logged
//! (`Layers::publish`). Many groups later the active layer is **frozen**
//! (never written again) and applied to the store file in one step, each
//! table in key order with each key written once however often it
//! changed; then the frozen layer is dropped. A reader sees
//! `store file + frozen + active` up to the last visible group: a state
//! that a prefix of the acknowledged groups produced, never a mix, however
//! the groups and the apply steps interleave with its read.
//!
//! Entries are kept as redb encodes them and ordered as redb orders them
//! (`redb::Key::compare`), so that a merged range is exactly the range the
//! store file would hold once the layers are applied.

use super::schema::{
    BY_ATTRIBUTE, BY_CORRELATION, BY_CORRELATION_PREFIX, BY_CREATED, BY_FINISHED, BY_STALLED,
    BY_STATUS, BY_TYPE, DUE, DURATIONS, EVENTS, FEED, FEED_MARKS, META, PROCESS_IDS, RECORDS,
};
use super::StoreError;
use redb::{Key, ReadOnlyTable, ReadTransaction, Value};
use std::borrow::Borrow;
use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, PoisonError, RwLock};

/// Bytes shared between a layer and the readers that copied them out.
pub type Bytes = Arc<[u8]>;

/// A key of a table keyed by `K`, as redb encodes it, ordered as redb
/// orders it.
pub struct OrdKey<K>(Bytes, PhantomData<fn() -> K>);

impl<K> Clone for OrdKey<K> {
    fn clone(&self) -> Self {
        OrdKey(self.0.clone(), PhantomData)
    }
}

impl<K: Key> PartialEq for OrdKey<K> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<K: Key> Eq for OrdKey<K> {}
impl<K: Key> PartialOrd for OrdKey<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: Key> Ord for OrdKey<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        K::compare(&self.0, &other.0)
    }
}

/// One version of a key: its value, or its removal.
type Entry = Option<Bytes>;

/// One table's pending changes: each key's versions (the numbers of the
/// groups that wrote them), newest first.
pub struct Layer<K: Key + 'static> {
    map: BTreeMap<(OrdKey<K>, Reverse<u64>), Entry>,
    /// Each key's newest version, and how many versions `map` holds of
    /// it: a point read of the newest (every read of the writer's, most
    /// of a reader's) and a put of a key written once cost a hash lookup,
    /// not a walk down `map`.
    latest: foldhash::HashMap<Bytes, Latest>,
}

/// A key's newest version in a layer.
struct Latest {
    version: u64,
    entry: Entry,
    /// Versions of the key the layer's map holds.
    versions: u32,
}

impl<K: Key + 'static> Default for Layer<K> {
    fn default() -> Self {
        Layer {
            map: BTreeMap::new(),
            latest: foldhash::HashMap::default(),
        }
    }
}

/// What one layer holds of a key, as a reader sees it.
enum Found {
    /// The layer has no version of the key a reader may see.
    Absent,
    Value(Bytes),
    Removed,
}

fn entry_size(key: &[u8], entry: &Entry) -> usize {
    key.len() + entry.as_ref().map_or(0, |value| value.len()) + ENTRY_OVERHEAD
}

impl<K: Key + 'static> Layer<K> {
    /// Puts `entry` as version `version` of `key`, and drops the versions
    /// of it no reader can need: every reader sees at least group `floor`,
    /// so of the versions up to `floor` only the newest counts. Returns
    /// the bytes it added (less what it dropped).
    fn put(&mut self, key: Bytes, version: u64, entry: Entry, floor: u64) -> isize {
        let mut size = entry_size(&key, &entry) as isize;
        let at = OrdKey::<K>(key.clone(), PhantomData);
        let replaced = self
            .map
            .insert((at.clone(), Reverse(version)), entry.clone());
        let latest = self.latest.entry(key).or_insert(Latest {
            version,
            entry: None,
            versions: 0,
        });
        match replaced {
            Some(old) => size -= entry_size(&at.0, &old) as isize,
            None => latest.versions += 1,
        }
        if version >= latest.version {
            latest.version = version;
            latest.entry = entry;
        }
        if latest.versions > 1 {
            let from = (at.clone(), Reverse(floor.min(version)));
            let to = (at.clone(), Reverse(0));
            let spent: Vec<u64> = self
                .map
                .range(from..=to)
                .skip(1)
                .map(|((_, Reverse(old)), _)| *old)
                .collect();
            for old in spent {
                if let Some(entry) = self.map.remove(&(at.clone(), Reverse(old))) {
                    size -= entry_size(&at.0, &entry) as isize;
                    latest.versions -= 1;
                }
            }
        }
        size
    }

    /// Takes back everything version `version` put, and counts afresh.
    fn forget(&mut self, version: u64) -> usize {
        self.map.retain(|(_, Reverse(at)), _| *at != version);
        self.latest.clear();
        let mut bytes = 0;
        for ((key, Reverse(at)), entry) in &self.map {
            bytes += entry_size(&key.0, entry);
            // Newest first: the first seen of a key is its latest.
            self.latest
                .entry(key.0.clone())
                .and_modify(|latest| latest.versions += 1)
                .or_insert(Latest {
                    version: *at,
                    entry: entry.clone(),
                    versions: 1,
                });
        }
        bytes
    }

    /// The newest version of `key` no newer than `visible`.
    fn find(&self, key: &Bytes, visible: u64) -> Found {
        let Some(latest) = self.latest.get(key) else {
            return Found::Absent;
        };
        if latest.version <= visible {
            return match &latest.entry {
                Some(value) => Found::Value(value.clone()),
                None => Found::Removed,
            };
        }
        let from = (OrdKey(key.clone(), PhantomData), Reverse(visible));
        let to = (OrdKey(key.clone(), PhantomData), Reverse(0));
        match self.map.range(from..=to).next() {
            None => Found::Absent,
            Some((_, Some(value))) => Found::Value(value.clone()),
            Some((_, None)) => Found::Removed,
        }
    }

    /// Up to `max` keys within `(start, end)`, in order (`reverse`: from
    /// the end), each with its newest version no newer than `visible`.
    fn chunk(
        &self,
        (start, end): (&Bound<Bytes>, &Bound<Bytes>),
        reverse: bool,
        visible: u64,
        max: usize,
    ) -> Vec<(Bytes, Entry)> {
        let key = |bytes: &Bytes| OrdKey::<K>(bytes.clone(), PhantomData);
        let low = match start {
            Bound::Included(k) => Bound::Included((key(k), Reverse(u64::MAX))),
            Bound::Excluded(k) => Bound::Excluded((key(k), Reverse(0))),
            Bound::Unbounded => Bound::Unbounded,
        };
        let high = match end {
            Bound::Included(k) => Bound::Included((key(k), Reverse(0))),
            Bound::Excluded(k) => Bound::Excluded((key(k), Reverse(u64::MAX))),
            Bound::Unbounded => Bound::Unbounded,
        };
        if let (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) =
            (&low, &high)
        {
            // BTreeMap::range panics on a start after its end.
            if a > b {
                return Vec::new();
            }
        }
        let mut out: Vec<(Bytes, Entry)> = Vec::new();
        let range = self.map.range((low, high));
        if reverse {
            // A key's versions come oldest first: the last one seen that
            // is visible wins, until the key changes.
            let mut current: Option<(Bytes, Option<Entry>)> = None;
            for ((k, Reverse(version)), entry) in range.rev() {
                if current
                    .as_ref()
                    .is_some_and(|(at, _)| !bytes_equal::<K>(at, &k.0))
                {
                    if let Some((at, Some(entry))) = current.take() {
                        out.push((at, entry));
                        if out.len() == max {
                            return out;
                        }
                    }
                }
                let slot = current.get_or_insert_with(|| (k.0.clone(), None));
                if *version <= visible {
                    slot.1 = Some(entry.clone());
                }
            }
            if let Some((at, Some(entry))) = current {
                out.push((at, entry));
            }
        } else {
            // Newest first: the first visible version of a key wins.
            let mut done: Option<&Bytes> = None;
            for ((k, Reverse(version)), entry) in range {
                if done.is_some_and(|at| bytes_equal::<K>(at, &k.0)) || *version > visible {
                    continue;
                }
                if out.len() == max {
                    break;
                }
                out.push((k.0.clone(), entry.clone()));
                done = Some(&k.0);
            }
        }
        out
    }
}

fn bytes_equal<K: Key>(a: &[u8], b: &[u8]) -> bool {
    K::compare(a, b) == Ordering::Equal
}

/// What an entry costs in memory beyond its bytes, so that
/// `writer.pending_mib` bounds what the process holds, not a part of it:
/// its share of a B-tree node (the key's `Bytes`, the version and the
/// value's `Arc`, about 56 bytes, in nodes about three quarters full), the
/// key's slot in the map of latest versions (about 72 bytes, at its load
/// factor), and the allocations behind the key and the value (headers and
/// the allocator's rounding). Most entries are index rows of a few dozen
/// bytes, so this is most of what a layer holds; 64, the maps' shares
/// alone, let a daemon at 10,000 active runs peak at 286 MiB with 64 MiB
/// of pending state (246 MiB with this; 190-208 MiB with the default 32).
const ENTRY_OVERHEAD: usize = 208;

/// Keys a reader copies out of a layer at a time, under its lock.
const CHUNK: usize = if cfg!(test) { 3 } else { 64 };

macro_rules! layer_set {
    ($($field:ident: $table:ident, $key:ty => $value:ty;)*) => {
        /// A layer for every table.
        #[derive(Default)]
        pub struct LayerSet {
            $($field: Layer<$key>,)*
            /// Bytes the entries take, roughly.
            bytes: usize,
        }

        impl LayerSet {
            /// Writes the newest version of every key into the store
            /// file's tables, table by table in key order; returns how
            /// many keys it wrote.
            pub fn apply_to(&self, txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
                let mut written = 0;
                $(written += apply_layer(&self.$field, &mut txn.open_table($table)?)?;)*
                Ok(written)
            }

            pub fn is_empty(&self) -> bool {
                true $(&& self.$field.map.is_empty())*
            }

            /// Bytes the entries take, roughly.
            pub fn bytes(&self) -> usize {
                self.bytes
            }

            /// Takes back everything group `version` put.
            pub fn forget_group(&mut self, version: u64) {
                self.bytes = 0 $(+ self.$field.forget(version))*;
            }
        }

        /// Each table's layer, chosen from a set.
        mod pick {
            use super::*;
            $(pub fn $field(set: &LayerSet) -> &Layer<$key> {
                &set.$field
            })*
        }

        /// Each table's layer, chosen from a set for writing.
        mod pick_mut {
            use super::*;
            $(pub fn $field(set: &mut LayerSet) -> &mut Layer<$key> {
                &mut set.$field
            })*
        }

        /// The store file's tables as of one read transaction: the state
        /// its last apply step left, under the pending layers.
        pub struct Applied {
            txn: ReadTransaction,
            $($field: ReadOnlyTable<$key, $value>,)*
        }

        impl Applied {
            pub fn begin(db: &impl redb::ReadableDatabase) -> Result<Applied, StoreError> {
                let txn = db.begin_read()?;
                Ok(Applied {
                    $($field: txn.open_table($table)?,)*
                    txn,
                })
            }

            /// The read transaction, for copying the file whole.
            pub fn transaction(&self) -> &ReadTransaction {
                &self.txn
            }
        }

        impl Pending {
            $(
                /// The table under these layers.
                pub fn $field<'a>(&'a self, applied: &'a Applied) -> Merged<'a, $key, $value> {
                    Merged {
                        applied: &applied.$field,
                        pending: self,
                        pick: pick::$field,
                    }
                }
            )*
        }

        impl Writing {
            $(
                /// The table, to read and change.
                pub fn $field<'a>(&'a self, applied: &'a Applied) -> WriteTable<'a, $key, $value> {
                    WriteTable {
                        merged: self.pending.$field(applied),
                        active: &self.active,
                        pick_mut: pick_mut::$field,
                        group: self.group,
                        floor: self.floor,
                    }
                }
            )*
        }
    };
}

layer_set! {
    meta: META, &'static str => &'static [u8];
    process_ids: PROCESS_IDS, &'static str => u64;
    records: RECORDS, &'static [u8] => &'static [u8];
    events: EVENTS, &'static [u8] => &'static [u8];
    by_created: BY_CREATED, (i64, u64) => ();
    by_status: BY_STATUS, (u8, u64) => ();
    by_type: BY_TYPE, (&'static str, u8, u64) => ();
    by_correlation: BY_CORRELATION, (&'static str, u64) => ();
    feed: FEED, u64 => &'static [u8];
    due: DUE, (i64, u64, u8, u32) => ();
    by_stalled: BY_STALLED, u64 => ();
    by_finished: BY_FINISHED, (u8, i64, u64) => ();
    feed_marks: FEED_MARKS, u64 => i64;
    by_correlation_prefix: BY_CORRELATION_PREFIX, (&'static str, u64) => &'static str;
    by_attribute: BY_ATTRIBUTE, (&'static str, &'static str, u64) => ();
    durations: DURATIONS, (&'static str, u8, i64) => &'static [u8];
}

fn apply_layer<K: Key + 'static, V: Value + 'static>(
    layer: &Layer<K>,
    table: &mut redb::Table<'_, K, V>,
) -> Result<u64, StoreError> {
    let mut written = 0;
    let mut last: Option<&Bytes> = None;
    for ((key, _), entry) in &layer.map {
        // Newest first: the first version of a key is the one to keep.
        if last.is_some_and(|at| bytes_equal::<K>(at, &key.0)) {
            continue;
        }
        last = Some(&key.0);
        let typed = K::from_bytes(&key.0);
        match entry {
            Some(value) => {
                table.insert(&typed, V::from_bytes(value))?;
            }
            None => {
                table.remove(&typed)?;
            }
        }
        written += 1;
    }
    Ok(written)
}

/// A layer set readers and the writer share.
pub type SharedLayer = Arc<RwLock<LayerSet>>;

fn read(layer: &SharedLayer) -> std::sync::RwLockReadGuard<'_, LayerSet> {
    layer.read().unwrap_or_else(PoisonError::into_inner)
}

/// The pending layers as one reader (or the writer) sees them: the frozen
/// layer being applied, if any, under the active one, up to a group.
#[derive(Clone)]
pub struct Pending {
    /// Newest last: the frozen layer, then the active one.
    layers: Vec<SharedLayer>,
    /// The last group whose changes this view sees.
    visible: u64,
}

impl Pending {
    pub fn new(frozen: Option<SharedLayer>, active: SharedLayer, visible: u64) -> Pending {
        Pending {
            layers: frozen.into_iter().chain([active]).collect(),
            visible,
        }
    }

    /// No pending state: the store file alone.
    pub fn none() -> Pending {
        Pending {
            layers: Vec::new(),
            visible: 0,
        }
    }

    /// The last group this view sees.
    pub fn visible(&self) -> u64 {
        self.visible
    }
}

/// A value (or key) read from a merged table: its bytes, typed as redb
/// types them, as redb's `AccessGuard` gives them.
pub struct Got<T: Value> {
    bytes: Bytes,
    _type: PhantomData<fn() -> T>,
}

impl<T: Value> Got<T> {
    fn new(bytes: Bytes) -> Self {
        Got {
            bytes,
            _type: PhantomData,
        }
    }

    pub fn value(&self) -> T::SelfType<'_> {
        T::from_bytes(&self.bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn encode<T: Value>(value: &T::SelfType<'_>) -> Bytes {
    Bytes::from(T::as_bytes(value).as_ref())
}

/// A table as its pending layers over the store file show it.
pub struct Merged<'a, K: Key + 'static, V: Value + 'static> {
    applied: &'a ReadOnlyTable<K, V>,
    pending: &'a Pending,
    pick: fn(&LayerSet) -> &Layer<K>,
}

/// Point reads of a table, whether redb's own or merged with the pending
/// layers, for what reads both (the schema's helpers).
pub trait Lookup<K: Key + 'static, V: Value + 'static> {
    /// The value's bytes under `key`.
    fn lookup<'k>(&self, key: impl Borrow<K::SelfType<'k>>) -> Result<Option<Bytes>, StoreError>;
}

impl<K: Key + 'static, V: Value + 'static> Lookup<K, V> for Merged<'_, K, V> {
    fn lookup<'k>(&self, key: impl Borrow<K::SelfType<'k>>) -> Result<Option<Bytes>, StoreError> {
        Ok(self.get(key)?.map(|value| value.bytes))
    }
}

impl<K: Key + 'static, V: Value + 'static> Lookup<K, V> for WriteTable<'_, K, V> {
    fn lookup<'k>(&self, key: impl Borrow<K::SelfType<'k>>) -> Result<Option<Bytes>, StoreError> {
        self.merged.lookup(key)
    }
}

macro_rules! lookup_in_redb {
    ($($table:ty),*) => {$(
        impl<K: Key + 'static, V: Value + 'static> Lookup<K, V> for $table {
            fn lookup<'k>(&self, key: impl Borrow<K::SelfType<'k>>) -> Result<Option<Bytes>, StoreError> {
                Ok(redb::ReadableTable::get(self, key)?.map(|value| encode::<V>(&value.value())))
            }
        }
    )*};
}
lookup_in_redb!(ReadOnlyTable<K, V>, redb::Table<'_, K, V>);

/// A merged entry: the key and value bytes.
pub type Row<K, V> = (Got<K>, Got<V>);

impl<K: Key + 'static, V: Value + 'static> Merged<'_, K, V> {
    /// The value under `key`.
    pub fn get<'k>(&self, key: impl Borrow<K::SelfType<'k>>) -> Result<Option<Got<V>>, StoreError> {
        let bytes = encode::<K>(key.borrow());
        for layer in self.pending.layers.iter().rev() {
            let set = read(layer);
            match (self.pick)(&set).find(&bytes, self.pending.visible) {
                Found::Absent => continue,
                Found::Value(value) => return Ok(Some(Got::new(value))),
                Found::Removed => return Ok(None),
            }
        }
        Ok(self
            .applied
            .get(K::from_bytes(&bytes))?
            .map(|value| Got::new(encode::<V>(&value.value()))))
    }

    /// The entries within `range`, in key order.
    pub fn range<'k, KR: Borrow<K::SelfType<'k>> + 'k>(
        &self,
        range: impl RangeBounds<KR> + 'k,
    ) -> Result<MergedRange<'_, K, V>, StoreError> {
        self.walk(range, false)
    }

    /// The entries within `range`, from the last.
    pub fn range_rev<'k, KR: Borrow<K::SelfType<'k>> + 'k>(
        &self,
        range: impl RangeBounds<KR> + 'k,
    ) -> Result<MergedRange<'_, K, V>, StoreError> {
        self.walk(range, true)
    }

    /// The first entry.
    pub fn first(&self) -> Result<Option<Row<K, V>>, StoreError> {
        self.range::<K::SelfType<'_>>(..)?.next().transpose()
    }

    fn walk<'k, KR: Borrow<K::SelfType<'k>> + 'k>(
        &self,
        range: impl RangeBounds<KR> + 'k,
        reverse: bool,
    ) -> Result<MergedRange<'_, K, V>, StoreError> {
        let bound = |bound: Bound<&KR>| match bound {
            Bound::Included(key) => Bound::Included(encode::<K>(key.borrow())),
            Bound::Excluded(key) => Bound::Excluded(encode::<K>(key.borrow())),
            Bound::Unbounded => Bound::Unbounded,
        };
        let start = bound(range.start_bound());
        let end = bound(range.end_bound());
        let applied = if empty_range::<K>(&start, &end) {
            None
        } else {
            let range = self
                .applied
                .range::<K::SelfType<'_>>((typed::<K>(&start), typed::<K>(&end)))?;
            Some(if reverse {
                Box::new(range.rev()) as AppliedRows<'_, K, V>
            } else {
                Box::new(range)
            })
        };
        let cursors = self
            .pending
            .layers
            .iter()
            .map(|layer| Cursor {
                layer: layer.clone(),
                start: start.clone(),
                end: end.clone(),
                buffer: std::collections::VecDeque::new(),
                exhausted: false,
            })
            .collect();
        Ok(MergedRange {
            applied: applied.map(Iterator::peekable),
            cursors,
            pick: self.pick,
            visible: self.pending.visible,
            reverse,
        })
    }
}

/// An encoded bound as redb's typed one.
fn typed<K: Key>(bound: &Bound<Bytes>) -> Bound<K::SelfType<'_>> {
    match bound {
        Bound::Included(bytes) => Bound::Included(K::from_bytes(bytes)),
        Bound::Excluded(bytes) => Bound::Excluded(K::from_bytes(bytes)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Whether a range holds nothing at all (redb refuses such a range).
fn empty_range<K: Key>(start: &Bound<Bytes>, end: &Bound<Bytes>) -> bool {
    match (start, end) {
        (Bound::Included(a), Bound::Included(b)) => K::compare(a, b) == Ordering::Greater,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b)) => K::compare(a, b) != Ordering::Less,
        _ => false,
    }
}

type AppliedRows<'t, K, V> = Box<
    dyn Iterator<
            Item = Result<(redb::AccessGuard<'t, K>, redb::AccessGuard<'t, V>), redb::StorageError>,
        > + 't,
>;

/// A walk through one layer, a chunk of keys at a time, so that no lock is
/// held between two items a reader takes.
struct Cursor {
    layer: SharedLayer,
    /// What is left to walk.
    start: Bound<Bytes>,
    end: Bound<Bytes>,
    buffer: std::collections::VecDeque<(Bytes, Entry)>,
    exhausted: bool,
}

impl Cursor {
    fn peek<K: Key + 'static>(
        &mut self,
        pick: fn(&LayerSet) -> &Layer<K>,
        visible: u64,
        reverse: bool,
    ) -> Option<&(Bytes, Entry)> {
        if self.buffer.is_empty() && !self.exhausted {
            let chunk = {
                let set = read(&self.layer);
                pick(&set).chunk((&self.start, &self.end), reverse, visible, CHUNK)
            };
            self.exhausted = chunk.len() < CHUNK;
            if let Some((last, _)) = chunk.last() {
                if reverse {
                    self.end = Bound::Excluded(last.clone());
                } else {
                    self.start = Bound::Excluded(last.clone());
                }
            }
            self.buffer.extend(chunk);
        }
        self.buffer.front()
    }
}

/// A merged range: the store file's entries and each layer's, in key
/// order, the newest layer winning where they hold the same key, removals
/// dropped.
pub struct MergedRange<'t, K: Key + 'static, V: Value + 'static> {
    applied: Option<std::iter::Peekable<AppliedRows<'t, K, V>>>,
    /// Oldest first, as `Pending::layers`.
    cursors: Vec<Cursor>,
    pick: fn(&LayerSet) -> &Layer<K>,
    visible: u64,
    reverse: bool,
}

impl<K: Key + 'static, V: Value + 'static> Iterator for MergedRange<'_, K, V> {
    type Item = Result<Row<K, V>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // The next key in walk order among every source, and the
            // newest source that holds it.
            let ahead = |a: &[u8], b: &[u8]| {
                let order = K::compare(a, b);
                if self.reverse {
                    order == Ordering::Greater
                } else {
                    order == Ordering::Less
                }
            };
            let mut best: Option<(Bytes, Option<usize>)> = None;
            if let Some(applied) = &mut self.applied {
                match applied.peek() {
                    Some(Ok((key, _))) => {
                        best = Some((encode::<K>(&key.value()), None));
                    }
                    Some(Err(_)) => {
                        return applied.next().map(|row| match row {
                            Err(error) => Err(StoreError::from(redb::Error::from(error))),
                            Ok(_) => unreachable!("peeked an error"),
                        })
                    }
                    None => {}
                }
            }
            for (index, cursor) in self.cursors.iter_mut().enumerate() {
                if let Some((key, _)) = cursor.peek(self.pick, self.visible, self.reverse) {
                    // Equal keys: the later (newer) layer wins.
                    if best.as_ref().is_none_or(|(at, _)| !ahead(at, key)) {
                        best = Some((key.clone(), Some(index)));
                    }
                }
            }
            let (key, source) = best?;
            // Every source at this key moves past it.
            let mut from_applied = None;
            if let Some(applied) = &mut self.applied {
                if let Some(Ok((at, _))) = applied.peek() {
                    if bytes_equal::<K>(&encode::<K>(&at.value()), &key) {
                        from_applied = applied.next();
                    }
                }
            }
            let mut from_layer = None;
            for (index, cursor) in self.cursors.iter_mut().enumerate() {
                if let Some((at, _)) = cursor.buffer.front() {
                    if bytes_equal::<K>(at, &key) {
                        let entry = cursor.buffer.pop_front();
                        if Some(index) == source {
                            from_layer = entry;
                        }
                    }
                }
            }
            match source {
                None => {
                    let Some(Ok((_, value))) = from_applied else {
                        continue;
                    };
                    return Some(Ok((Got::new(key), Got::new(encode::<V>(&value.value())))));
                }
                Some(_) => match from_layer {
                    Some((_, Some(value))) => return Some(Ok((Got::new(key), Got::new(value)))),
                    // Removed in a layer: hidden, whatever is under it.
                    _ => continue,
                },
            }
        }
    }
}

/// The writer's handle on the pending state: the layers it reads (the
/// frozen one, and the active one it writes into, every version of its own
/// included) and the number of the group it is writing.
pub struct Writing {
    active: SharedLayer,
    /// What the writer reads: every version put so far.
    pending: Pending,
    /// The group being written: the version of everything it puts.
    group: u64,
    /// The oldest group a reader may still see (`Layer::put`).
    floor: u64,
}

impl Writing {
    /// Writing group `group`, with no reader older than the group before.
    pub fn new(frozen: Option<SharedLayer>, active: SharedLayer, group: u64) -> Writing {
        Writing {
            pending: Pending::new(frozen, active.clone(), u64::MAX),
            active,
            group,
            floor: group.saturating_sub(1),
        }
    }

    /// Readers may see any group from `floor` on: the versions they need
    /// are kept.
    pub fn reading_from(mut self, floor: u64) -> Writing {
        self.floor = floor.min(self.group.saturating_sub(1));
        self
    }

    pub fn group(&self) -> u64 {
        self.group
    }

    /// Bytes the active layer holds, roughly.
    pub fn bytes(&self) -> usize {
        read(&self.active).bytes
    }

    /// Takes back everything this group put: it failed, and is not logged.
    pub fn abandon(&self) {
        self.active
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .forget_group(self.group);
    }
}

/// A table the writer reads (everything put so far) and changes (in the
/// active layer, as its group).
pub struct WriteTable<'a, K: Key + 'static, V: Value + 'static> {
    merged: Merged<'a, K, V>,
    active: &'a SharedLayer,
    pick_mut: fn(&mut LayerSet) -> &mut Layer<K>,
    group: u64,
    floor: u64,
}

impl<'a, K: Key + 'static, V: Value + 'static> std::ops::Deref for WriteTable<'a, K, V> {
    type Target = Merged<'a, K, V>;

    fn deref(&self) -> &Merged<'a, K, V> {
        &self.merged
    }
}

impl<K: Key + 'static, V: Value + 'static> WriteTable<'_, K, V> {
    fn put(&mut self, key: Bytes, entry: Entry) {
        let mut set = self.active.write().unwrap_or_else(PoisonError::into_inner);
        let size = (self.pick_mut)(&mut set).put(key, self.group, entry, self.floor);
        set.bytes = set.bytes.saturating_add_signed(size);
    }

    pub fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), StoreError> {
        self.put(encode::<K>(key.borrow()), Some(encode::<V>(value.borrow())));
        Ok(())
    }

    pub fn remove<'k>(&mut self, key: impl Borrow<K::SelfType<'k>>) -> Result<(), StoreError> {
        self.put(encode::<K>(key.borrow()), None);
        Ok(())
    }

    /// Removes every entry within `range`.
    pub fn remove_range<'k, KR: Borrow<K::SelfType<'k>> + 'k>(
        &mut self,
        range: impl RangeBounds<KR> + 'k,
    ) -> Result<(), StoreError> {
        let keys = self
            .merged
            .range(range)?
            .map(|row| row.map(|(key, _)| key.bytes))
            .collect::<Result<Vec<_>, _>>()?;
        for key in keys {
            self.put(key, None);
        }
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Model = BTreeMap<(i64, u64), u8>;

    #[derive(Clone, Debug)]
    enum Op {
        Put(i64, u64, u8),
        Remove(i64, u64),
        /// Every key within a range.
        RemoveRange(i64, i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct keys, so that groups meet each other's keys.
        prop_oneof![
            4 => (0i64..6, 0u64..4, any::<u8>()).prop_map(|(a, b, v)| Op::Put(a - 2, b, v)),
            2 => (0i64..6, 0u64..4).prop_map(|(a, b)| Op::Remove(a - 2, b)),
            1 => (0i64..6, 0i64..6).prop_map(|(a, b)| Op::RemoveRange(a - 2, b - 2)),
        ]
    }

    #[derive(Clone, Debug)]
    enum Step {
        Group(Vec<Op>),
        /// A group that fails halfway and is taken back.
        Abandoned(Vec<Op>),
        Freeze,
        Apply,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => proptest::collection::vec(op(), 1..8).prop_map(Step::Group),
            1 => proptest::collection::vec(op(), 1..8).prop_map(Step::Abandoned),
            1 => Just(Step::Freeze),
            1 => Just(Step::Apply),
        ]
    }

    fn seen(view: &Pending, txn: &Applied) -> (Model, Vec<(i64, u64)>) {
        let table = view.by_created(txn);
        let forward: Model = table
            .range::<(i64, u64)>(..)
            .unwrap()
            .map(|row| {
                let (key, _) = row.unwrap();
                // The value rides in the key's second half for this test:
                // by_created has no value.
                (key.value(), 0)
            })
            .collect();
        let backward: Vec<(i64, u64)> = table
            .range_rev::<(i64, u64)>(..)
            .unwrap()
            .map(|row| row.unwrap().0.value())
            .collect();
        (forward, backward)
    }

    /// What a reader at `visible` gets for every way of asking, against the
    /// model's state after that group.
    fn check(view: &Pending, txn: &Applied, model: &Model) -> Result<(), TestCaseError> {
        let keys: Vec<(i64, u64)> = model.keys().copied().collect();
        let (forward, backward) = seen(view, txn);
        prop_assert_eq!(forward.keys().copied().collect::<Vec<_>>(), keys.clone());
        let mut reversed = keys.clone();
        reversed.reverse();
        prop_assert_eq!(backward, reversed);
        let marks = view.feed_marks(txn);
        let table = view.by_created(txn);
        for a in -3i64..4 {
            for b in 0u64..5 {
                let wanted = model.get(&(a, b)).copied();
                let got = marks.get(feed_key(a, b)).unwrap().map(|v| v.value());
                prop_assert_eq!(got.map(|v| v as u8), wanted, "get {:?}", (a, b));
                prop_assert_eq!(table.get((a, b)).unwrap().is_some(), wanted.is_some());
                // Sub-ranges, both ways, each kind of bound.
                let within: Vec<_> = keys
                    .iter()
                    .copied()
                    .filter(|k| *k >= (a, b) && *k < (a + 2, b))
                    .collect();
                let forward: Vec<_> = table
                    .range((a, b)..(a + 2, b))
                    .unwrap()
                    .map(|row| row.unwrap().0.value())
                    .collect();
                prop_assert_eq!(&forward, &within);
                let mut backward: Vec<_> = table
                    .range_rev((a, b)..(a + 2, b))
                    .unwrap()
                    .map(|row| row.unwrap().0.value())
                    .collect();
                backward.reverse();
                prop_assert_eq!(&backward, &within);
                let after: Vec<_> = keys.iter().copied().filter(|k| *k > (a, b)).collect();
                let got: Vec<_> = table
                    .range((Bound::Excluded((a, b)), Bound::Unbounded))
                    .unwrap()
                    .map(|row| row.unwrap().0.value())
                    .collect();
                prop_assert_eq!(got, after);
            }
        }
        Ok(())
    }

    /// The value tables keep the model's values too (`FEED_MARKS`, u64 ->
    /// i64), under a key made of the pair.
    fn feed_key(a: i64, b: u64) -> u64 {
        ((a + 8) as u64) << 8 | b
    }

    fn write(writing: &Writing, txn: &Applied, ops: &[Op], model: &mut Model) {
        let mut created = writing.by_created(txn);
        let mut marks = writing.feed_marks(txn);
        for op in ops {
            match *op {
                Op::Put(a, b, v) => {
                    created.insert((a, b), ()).unwrap();
                    marks.insert(feed_key(a, b), i64::from(v)).unwrap();
                    model.insert((a, b), v);
                }
                Op::Remove(a, b) => {
                    created.remove((a, b)).unwrap();
                    marks.remove(feed_key(a, b)).unwrap();
                    model.remove(&(a, b));
                }
                Op::RemoveRange(low, high) => {
                    let doomed: Vec<_> = model
                        .keys()
                        .copied()
                        .filter(|(a, _)| *a >= low && *a < high)
                        .collect();
                    if low < high {
                        created.remove_range((low, 0)..(high, 0)).unwrap();
                    }
                    for (a, b) in doomed.iter().filter(|_| low < high) {
                        marks.remove(feed_key(*a, *b)).unwrap();
                        model.remove(&(*a, *b));
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..Default::default() })]
        /// Readers at every visible group see exactly the state after it,
        /// whatever was frozen, applied to the file or taken back meanwhile.
        #[test]
        fn every_read_sees_the_state_after_its_group(steps in proptest::collection::vec(step(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
            {
                let txn = db.begin_write().unwrap();
                crate::store::schema::create_tables(&txn).unwrap();
                txn.commit().unwrap();
            }
            let mut states: Vec<Model> = vec![Model::new()];
            let mut active: SharedLayer = Arc::default();
            let mut frozen: Option<(SharedLayer, u64)> = None;
            let mut applied = 0u64;
            for step in steps {
                let group = states.len() as u64;
                let txn = Applied::begin(&db).unwrap();
                match step {
                    Step::Group(ops) => {
                        // Readers may see any group from the last applied on.
                        let writing = Writing::new(frozen.as_ref().map(|(f, _)| f.clone()), active.clone(), group)
                            .reading_from(applied);
                        let mut model = states.last().unwrap().clone();
                        write(&writing, &txn, &ops, &mut model);
                        states.push(model);
                    }
                    Step::Abandoned(ops) => {
                        let writing = Writing::new(frozen.as_ref().map(|(f, _)| f.clone()), active.clone(), group)
                            .reading_from(applied);
                        let mut model = states.last().unwrap().clone();
                        write(&writing, &txn, &ops, &mut model);
                        writing.abandon();
                    }
                    Step::Freeze => {
                        if frozen.is_none() {
                            let last = states.len() as u64 - 1;
                            frozen = Some((std::mem::take(&mut active), last));
                        }
                    }
                    Step::Apply => {
                        if let Some((layer, last)) = frozen.take() {
                            let txn = db.begin_write().unwrap();
                            read(&layer).apply_to(&txn).unwrap();
                            txn.commit().unwrap();
                            // A reader that began before the frozen layer was
                            // dropped still holds it over the new file.
                            let held = Pending::new(Some(layer), active.clone(), states.len() as u64 - 1);
                            check(&held, &Applied::begin(&db).unwrap(), states.last().unwrap())?;
                            applied = last;
                        }
                    }
                }
                drop(txn);
                let txn = Applied::begin(&db).unwrap();
                for visible in applied..states.len() as u64 {
                    if frozen.as_ref().is_some_and(|(_, last)| visible < *last) {
                        continue;
                    }
                    let view = Pending::new(frozen.as_ref().map(|(f, _)| f.clone()), active.clone(), visible);
                    check(&view, &txn, &states[visible as usize])?;
                }
            }
        }
    }

    #[test]
    fn versions_no_reader_can_see_are_dropped_as_new_ones_come() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        crate::store::schema::create_tables(&txn).unwrap();
        txn.commit().unwrap();
        let active: SharedLayer = Arc::default();
        let applied = Applied::begin(&db).unwrap();
        for group in 1..=10u64 {
            // The oldest reader sees group 3 from the fourth group on.
            let writing = Writing::new(None, active.clone(), group).reading_from(group.min(4) - 1);
            writing
                .feed_marks(&applied)
                .insert(7, group as i64)
                .unwrap();
        }
        let versions = read(&active).feed_marks.map.len();
        assert_eq!(versions, 8, "groups 3 to 10: 1 and 2 are spent");
        for visible in 3..=10 {
            let view = Pending::new(None, active.clone(), visible);
            let got = view.feed_marks(&applied).get(7).unwrap().unwrap().value();
            assert_eq!(got, visible as i64);
        }
        // With no reader older than the last group, one version is left.
        Writing::new(None, active.clone(), 11)
            .feed_marks(&applied)
            .insert(7, 11)
            .unwrap();
        assert_eq!(read(&active).feed_marks.map.len(), 2, "10 and 11");
        assert!(read(&active).bytes() < 4 * (8 + 8 + ENTRY_OVERHEAD));
    }

    #[test]
    fn a_key_written_many_times_is_applied_once_with_its_newest_value() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        crate::store::schema::create_tables(&txn).unwrap();
        txn.commit().unwrap();
        let active: SharedLayer = Arc::default();
        for group in 1..=5u64 {
            let txn = Applied::begin(&db).unwrap();
            let writing = Writing::new(None, active.clone(), group);
            let mut marks = writing.feed_marks(&txn);
            marks.insert(7, group as i64 * 10).unwrap();
            if group == 3 {
                marks.remove(8).unwrap();
            } else {
                marks.insert(8, 1).unwrap();
            }
        }
        let txn = db.begin_write().unwrap();
        let written = read(&active).apply_to(&txn).unwrap();
        txn.commit().unwrap();
        assert_eq!(written, 2, "two keys, each once");
        let file = Pending::none();
        let txn = Applied::begin(&db).unwrap();
        let marks = file.feed_marks(&txn);
        assert_eq!(marks.get(7).unwrap().unwrap().value(), 50);
        assert_eq!(marks.get(8).unwrap().unwrap().value(), 1);
    }
}
