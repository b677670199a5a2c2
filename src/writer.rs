//! The one thread that writes to the store, and the handle that reaches it.
//!
//! Requests queue on a bounded crossbeam channel. The writer blocks for the
//! first, takes whatever else is queued (up to `max_group_events`), applies
//! all of it in one redb write transaction, appends the group's requests to
//! the write log (`store::grouplog`) with one `fdatasync`, commits the
//! transaction without redb's own durability, and only then answers each
//! request. Every `checkpoint_groups` groups or `checkpoint_bytes` of log
//! (and at a clean stop) the commit is durable instead, through redb's
//! syncs and the journal in `store::journal`, and the log starts over. At
//! start, and after the store is reopened, the groups logged since the
//! last durable commit are applied again. The group grows by itself under load; there is no timer and no
//! added latency when idle.
//!
//! Shutdown is dropping every `WriterHandle`: the channel disconnects once
//! drained, the writer commits what it has, and the thread ends.

use crate::domain::{Caps, Millis, Status};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::store::codec;
use crate::store::grouplog::GroupLog;
use crate::store::legacy::EventV1;
use crate::store::read::SharedSnapshots;
use crate::store::schema::Counters;
use crate::store::write::{
    load_counters, load_logged_group, set_logged_group, EventOutcome, IncomingEvent, PurgeStep,
    Purged, TimeoutDefaults, WriteBatch,
};
use crate::store::StoreError;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use redb::{Database, Durability};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Why a write was not applied. Both are worth retrying later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteFailure {
    #[error("the disk holding the store is full")]
    StorageFull,
    #[error("the store could not commit")]
    Storage,
    #[error("the writer has stopped")]
    Stopped,
}

/// Why a request could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is at capacity: answer 429 at once, never wait.
    Full,
    /// The writer is gone (shutting down).
    Closed,
}

/// What the writer decided for one command.
pub enum Answer {
    Events(Vec<EventOutcome>),
    Deleted(bool),
    /// Due entries looked at (stalls, deadlines).
    Ticked,
    Purged(Purged),
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Work {
    Ingest(Vec<IncomingEvent>),
    Delete(String),
    /// Look at what has come due (`WriteBatch::fire_due`) at the group's clock.
    Tick,
    /// Remove finished processes: a retention step, or a bulk DELETE's.
    Purge(PurgeStep),
}

/// A group as the log keeps it: the requests, and the server clock, caps
/// and timeout defaults their transaction used, so that replaying it
/// decides the same.
#[derive(serde::Serialize)]
struct LoggedGroupRef<'a> {
    /// `LOGGED_GROUP_V3`.
    version: u8,
    now: Millis,
    caps: Caps,
    timeouts: &'a TimeoutDefaults,
    works: Vec<&'a Work>,
}

#[derive(serde::Deserialize)]
struct LoggedGroup {
    version: u8,
    now: Millis,
    caps: Caps,
    timeouts: TimeoutDefaults,
    works: Vec<Work>,
}

/// Work as logged before version 1.1: events in their old layout.
#[derive(serde::Deserialize)]
enum WorkV2 {
    Ingest(Vec<IncomingEventV2>),
    Delete(String),
}

#[derive(serde::Deserialize)]
struct IncomingEventV2 {
    event: EventV1,
    fingerprint: [u8; 16],
    received_at: Millis,
}

impl From<WorkV2> for Work {
    fn from(old: WorkV2) -> Work {
        match old {
            WorkV2::Ingest(events) => Work::Ingest(
                events
                    .into_iter()
                    .map(|old| IncomingEvent {
                        event: old.event.into(),
                        fingerprint: old.fingerprint,
                        received_at: old.received_at,
                    })
                    .collect(),
            ),
            WorkV2::Delete(id) => Work::Delete(id),
        }
    }
}

/// Logged groups with caps, before timeouts.
#[derive(serde::Deserialize)]
struct LoggedGroupV2 {
    version: u8,
    now: Millis,
    caps: Caps,
    works: Vec<WorkV2>,
}

/// Logged groups before caps: the clock and the requests.
#[derive(serde::Deserialize)]
struct LoggedGroupV1 {
    now: Millis,
    works: Vec<WorkV2>,
}

/// The first byte of a logged group's body since caps (2) and since
/// timeouts (3). A group logged before caps began with the varint of its
/// clock, whose first byte is 253 for any clock after 1970-01-25: none can
/// be mistaken for another.
const LOGGED_GROUP_V2: u8 = 2;
const LOGGED_GROUP_V3: u8 = 3;

/// A logged group, of this build's layout or one before (replayed as the
/// build that logged it applied it: without caps, without defaults).
fn decode_logged_group(payload: &[u8]) -> Result<LoggedGroup, codec::CodecError> {
    match payload.get(1) {
        Some(&LOGGED_GROUP_V3) => codec::decode(payload),
        Some(&LOGGED_GROUP_V2) => {
            let old: LoggedGroupV2 = codec::decode(payload)?;
            Ok(LoggedGroup {
                version: old.version,
                now: old.now,
                caps: old.caps,
                timeouts: TimeoutDefaults::new(),
                works: old.works.into_iter().map(Work::from).collect(),
            })
        }
        _ => {
            let old: LoggedGroupV1 = codec::decode(payload)?;
            Ok(LoggedGroup {
                version: 1,
                now: old.now,
                caps: Caps::UNLIMITED,
                timeouts: TimeoutDefaults::new(),
                works: old.works.into_iter().map(Work::from).collect(),
            })
        }
    }
}

struct Command {
    work: Work,
    /// Answered after the commit; a requester that went away is no loss,
    /// the write stands either way.
    reply: oneshot::Sender<Result<Answer, WriteFailure>>,
}

impl Command {
    fn weight(&self) -> usize {
        match &self.work {
            Work::Ingest(events) => events.len().max(1),
            Work::Delete(_) | Work::Tick => 1,
            Work::Purge(step) => step.limit as usize,
        }
    }

    /// The writer's own step of retention: the finished processes kept
    /// longer than `retention` says, up to `limit` of them.
    fn retention_step(
        retention: &[(Status, Millis)],
        feed_keep: Millis,
        now: Millis,
        limit: u32,
    ) -> Command {
        Command {
            work: Work::Purge(PurgeStep {
                cuts: retention
                    .iter()
                    .map(|&(status, keep)| (status, now.saturating_sub(keep)))
                    .collect(),
                process_type: None,
                after: None,
                limit,
                trim_feed_before: Some(now.saturating_sub(feed_keep)),
            }),
            reply: oneshot::channel().0,
        }
    }

    /// The writer's own look at what came due; nobody waits for its answer.
    fn tick() -> Command {
        Command {
            work: Work::Tick,
            reply: oneshot::channel().0,
        }
    }

    fn answer(self, answer: Result<Answer, WriteFailure>) {
        let _ = self.reply.send(answer);
    }
}

/// A cloneable way to hand work to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    /// Bounded, so that a flood of webhooks turns into 429s rather than memory.
    sender: Sender<Command>,
}

/// The running writer thread; join it after the last handle is dropped.
pub struct WriterThread {
    thread: JoinHandle<()>,
}

impl WriterThread {
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
    }
}

#[derive(Clone, Debug)]
pub struct WriterSettings {
    /// Requests that may wait in the queue.
    pub queue_capacity: usize,
    /// Events applied in one transaction at most.
    pub max_group_events: usize,
    /// Save redb's allocator state with every commit, so that a restart
    /// after a crash needs no full repair of the file.
    pub quick_repair: bool,
    /// Refuse writes while the store's disk has less free space than this.
    pub min_free_bytes: u64,
    /// The size of the write log (`store::grouplog`).
    pub log_bytes: u64,
    /// Logged groups between two durable commits, at most.
    pub checkpoint_groups: u32,
    /// Bytes logged between two durable commits, about: a durable commit
    /// writes out everything since the last, and the writer waits for it.
    pub checkpoint_bytes: u64,
    /// What one process may keep.
    pub caps: Caps,
    /// Heartbeat timeouts and deadlines by process type.
    pub timeouts: Arc<TimeoutDefaults>,
    /// The least time between two looks at what came due.
    pub check_interval: Duration,
    /// How long finished processes are kept, by terminal status, in
    /// milliseconds (`[retention]`); a status not named is kept forever.
    pub retention: Vec<(Status, Millis)>,
    /// How long the change feed keeps its items, in milliseconds
    /// (`feed.retention`).
    pub feed_keep: Millis,
}

/// The earlier of two moments, either of which may not come.
fn earliest<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Feed entries one retention step drops at most.
const FEED_TRIM_STEP: usize = 10_000;

/// How often the feed gets a time mark: an eighth of what it keeps, within
/// 100 ms and a minute, so that it is trimmed at most an eighth late.
fn mark_every(feed_keep: Millis) -> Millis {
    (feed_keep / 8).clamp(100, 60_000)
}

/// Processes a retention step that joins requests removes at most: few,
/// so that the group it joins grows by a fraction of a millisecond and a
/// request that shares it hardly waits longer.
const RETENTION_STEP: u32 = 4;

/// Processes a retention step of its own (no request for
/// `RETENTION_QUIET`) removes at most: a request that comes meanwhile
/// waits for a few milliseconds at most.
const RETENTION_IDLE_STEP: u32 = 64;

/// While requests come, retention applies steps for at most a sixtieth of
/// the writer's time: after a step, the next waits 59 times as long as
/// the step took. A removal costs about as much again later, when the
/// pages it freed and changed are written at the next checkpoint, which
/// this pause does not see; a twentieth measured about an eighth.
const RETENTION_PAUSE_FACTOR: u32 = 59;

/// How long without requests before retention makes groups of its own,
/// unpaced: an idle daemon clears its backlog at full speed, and a request
/// that comes meanwhile waits for one step at most.
const RETENTION_QUIET: Duration = Duration::from_millis(50);

/// How long the writer keeps trying to reopen the store after an I/O
/// error before it exits, so that a supervisor restarts the daemon.
const REOPEN_GIVE_UP: Duration = Duration::from_secs(30);

/// Replays the write log onto the store, loads the counters and starts the
/// writer thread.
pub fn spawn(
    snapshots: Arc<SharedSnapshots>,
    settings: WriterSettings,
    metrics: Arc<Metrics>,
) -> Result<(WriterHandle, WriterThread, Arc<Live>), StoreError> {
    let mut log = GroupLog::open(snapshots.path(), Some(settings.log_bytes)).map_err(io_error)?;
    let (counters, number) = replay(&*snapshots.database()?, &mut log, settings.quick_repair)?;
    let mut log = Log { file: log, number };
    let live = Live::new(counters.last_seq);
    let announce = live.clone();
    let (sender, receiver) = crossbeam_channel::bounded(settings.queue_capacity);
    let thread = std::thread::Builder::new()
        .name("pm-writer".into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(
                    &snapshots, receiver, counters, &mut log, &settings, &metrics, &announce,
                )
            }));
            if ran.is_err() {
                // A daemon whose writer is gone would answer 503 forever:
                // better to exit and be restarted.
                tracing::error!(
                    "the writer thread panicked; exiting so that a supervisor restarts the daemon"
                );
                std::process::exit(70);
            }
        })
        .map_err(|error| StoreError::Redb(redb::Error::Io(error)))?;
    Ok((WriterHandle { sender }, WriterThread { thread }, live))
}

impl WriterHandle {
    /// Queues events; the returned future resolves once they are committed.
    pub fn submit_events(
        &self,
        events: Vec<IncomingEvent>,
    ) -> Result<
        impl std::future::Future<Output = Result<Vec<EventOutcome>, WriteFailure>>,
        SubmitError,
    > {
        let answer = self.send(Work::Ingest(events))?;
        Ok(async move {
            match answer.await {
                Ok(Ok(Answer::Events(outcomes))) => Ok(outcomes),
                Ok(Ok(_)) => Err(WriteFailure::Storage),
                Ok(Err(failure)) => Err(failure),
                Err(_) => Err(WriteFailure::Stopped),
            }
        })
    }

    /// Queues the removal of a process; resolves to whether it existed.
    pub fn submit_delete(
        &self,
        process_id: String,
    ) -> Result<impl std::future::Future<Output = Result<bool, WriteFailure>>, SubmitError> {
        let answer = self.send(Work::Delete(process_id))?;
        Ok(async move {
            match answer.await {
                Ok(Ok(Answer::Deleted(found))) => Ok(found),
                Ok(Ok(_)) => Err(WriteFailure::Storage),
                Ok(Err(failure)) => Err(failure),
                Err(_) => Err(WriteFailure::Stopped),
            }
        })
    }

    /// Queues one step of a purge; resolves to what it removed and where
    /// the next step goes on.
    pub fn submit_purge(
        &self,
        step: PurgeStep,
    ) -> Result<impl std::future::Future<Output = Result<Purged, WriteFailure>>, SubmitError> {
        let answer = self.send(Work::Purge(step))?;
        Ok(async move {
            match answer.await {
                Ok(Ok(Answer::Purged(purged))) => Ok(purged),
                Ok(Ok(_)) => Err(WriteFailure::Storage),
                Ok(Err(failure)) => Err(failure),
                Err(_) => Err(WriteFailure::Stopped),
            }
        })
    }

    /// Requests waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.sender.len()
    }

    fn send(
        &self,
        work: Work,
    ) -> Result<oneshot::Receiver<Result<Answer, WriteFailure>>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send(Command { work, reply })
            .map_err(|error| match error {
                TrySendError::Full(_) => SubmitError::Full,
                TrySendError::Disconnected(_) => SubmitError::Closed,
            })?;
        Ok(answer)
    }
}

/// The server clock, in milliseconds.
pub fn now_millis() -> Millis {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    Millis::try_from(nanos / 1_000_000).unwrap_or(Millis::MAX)
}

fn io_error(error: std::io::Error) -> StoreError {
    StoreError::Redb(redb::Error::Io(error))
}

/// The write log and where the writer is in it.
struct Log {
    file: GroupLog,
    /// The number of the last group committed.
    number: u64,
}

/// Applies the groups the log holds after the store's last durable commit,
/// in order, in one transaction committed without redb's durability (the
/// log keeps them until the next durable commit, so that this needs no
/// room on the disk). Returns the counters and the number of the last group
/// the store now holds.
fn replay(
    db: &Database,
    log: &mut GroupLog,
    quick_repair: bool,
) -> Result<(Counters, u64), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(quick_repair);
    let durable = load_logged_group(&txn)?;
    let groups = log.pending(durable).map_err(io_error)?;
    let Some(last) = groups.last().map(|group| group.number) else {
        let counters = load_counters(&txn)?;
        txn.abort()?;
        log.start_over().map_err(io_error)?;
        return Ok((counters, durable));
    };
    let mut batch = WriteBatch::open(&txn, load_counters(&txn)?)?;
    for logged in &groups {
        let group = decode_logged_group(&logged.payload).map_err(|source| StoreError::Corrupt {
            what: format!("write log group {}", logged.number),
            source,
        })?;
        tracing::debug!(
            number = logged.number,
            layout = group.version,
            "replaying a logged group"
        );
        batch.set_caps(group.caps);
        batch.set_timeouts(Arc::new(group.timeouts));
        // The feed's time marks are not replayed: they only pace its
        // trimming, and a mark missing makes a trim later, never wrong.
        for work in &group.works {
            apply_work(&mut batch, work, group.now)?;
        }
    }
    let counters = batch.finish_group(last)?;
    txn.set_durability(Durability::None)?;
    txn.commit()?;
    log.append_after_pending(durable).map_err(io_error)?;
    tracing::info!(
        groups = groups.len(),
        "replayed the write log: the groups acknowledged after the last durable commit"
    );
    Ok((counters, last))
}

/// Makes everything committed durable, so that the store file is whole
/// without its log (a clean stop).
fn checkpoint(db: &Database, log: &mut Log, quick_repair: bool) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(quick_repair);
    set_logged_group(&txn, log.number)?;
    txn.commit()?;
    log.file.start_over().map_err(io_error)
}

/// The earliest due entry of the store as committed.
fn read_next_due(db: &Database) -> Result<Option<Millis>, StoreError> {
    use redb::{ReadableDatabase, ReadableTable};
    let txn = db.begin_read()?;
    let due = txn.open_table(crate::store::schema::DUE)?;
    let first = due.first()?.map(|(key, _)| key.value().0);
    Ok(first)
}

/// When the writer next looks at what came due: at the earliest due
/// entry, but no sooner than `check_interval` after its last look, so that
/// many entries due close together are taken in one group.
fn next_look(
    next_due: Option<Millis>,
    last_look: Option<Instant>,
    interval: Duration,
) -> Option<Instant> {
    let due = next_due?;
    let wait = Duration::from_millis(u64::try_from(due.saturating_sub(now_millis())).unwrap_or(0));
    // A moment too far ahead for the clock to name is as good as never.
    let at = Instant::now().checked_add(wait)?;
    Some(match last_look {
        Some(last) => at.max(last + interval),
        None => at,
    })
}

fn run(
    snapshots: &SharedSnapshots,
    receiver: Receiver<Command>,
    mut counters: Counters,
    log: &mut Log,
    settings: &WriterSettings,
    metrics: &Metrics,
    live: &Live,
) {
    let mut disk_full = false;
    let mut next_due = snapshots
        .database()
        .and_then(|db| read_next_due(&db))
        .unwrap_or_else(|error| {
            tracing::error!(%error, "cannot read the due table; stalls and deadlines wait for the next write");
            None
        });
    // The first look finds out what is due for removal (processes under
    // `[retention]`, and the feed's old items).
    let mut next_expiry = Some(now_millis());
    let mut last_look: Option<Instant> = None;
    let mut retention_not_before: Option<Instant> = None;
    let mut last_requests: Option<Instant> = None;
    // When the feed was last marked with the time (`mark_every`).
    let mut last_mark: Option<Millis> = None;
    loop {
        let due_look = next_look(next_due, last_look, settings.check_interval);
        // Retention joins groups that carry requests, paced; it makes
        // groups of its own (each with its own sync, which a request would
        // queue behind) only once no request has come for
        // `RETENTION_QUIET`, and then unpaced.
        let retention_look = next_look(next_expiry, None, Duration::ZERO)
            .map(|at| last_requests.map_or(at, |last| at.max(last + RETENTION_QUIET)));
        let look_at = earliest(due_look, retention_look);
        let first = match look_at {
            None => match receiver.recv() {
                Ok(command) => Some(command),
                Err(_) => break,
            },
            Some(at) => match receiver.recv_deadline(at) {
                Ok(command) => Some(command),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut weight = 0;
        let mut group = Vec::new();
        let mut retained = false;
        if let Some(first) = first {
            weight = first.weight();
            group.push(first);
        }
        while weight < settings.max_group_events {
            match receiver.try_recv() {
                Ok(command) => {
                    weight += command.weight();
                    group.push(command);
                }
                Err(_) => break,
            }
        }
        let has_requests = !group.is_empty();
        if due_look.is_some_and(|at| Instant::now() >= at) {
            group.push(Command::tick());
            last_look = Some(Instant::now());
        }
        let now = now_millis();
        let retention_due = next_expiry.is_some_and(|expiry| expiry <= now);
        let retention_joins =
            has_requests && retention_not_before.is_none_or(|at| Instant::now() >= at);
        let retention_alone =
            !has_requests && retention_look.is_some_and(|at| Instant::now() >= at);
        if retention_due && (retention_joins || retention_alone) {
            retained = true;
            group.push(Command::retention_step(
                &settings.retention,
                settings.feed_keep,
                now,
                if retention_joins {
                    RETENTION_STEP
                } else {
                    RETENTION_IDLE_STEP
                },
            ));
        }
        if has_requests {
            last_requests = Some(Instant::now());
        }
        if group.is_empty() {
            continue;
        }
        // Never let redb meet a full disk mid-commit: it would refuse its
        // handle afterwards. Refuse the writes instead; reads go on.
        if crate::store::free_bytes(snapshots.path())
            .is_some_and(|free| free < settings.min_free_bytes)
        {
            if !disk_full {
                tracing::error!(
                    min_free_bytes = settings.min_free_bytes,
                    "the store's disk is nearly full: refusing writes until space is freed"
                );
                disk_full = true;
            }
            for command in group {
                command.answer(Err(WriteFailure::StorageFull));
            }
            continue;
        }
        if disk_full {
            tracing::info!("the store's disk has room again: accepting writes");
            disk_full = false;
        }
        let started = Instant::now();
        let mark_feed = last_mark
            .is_none_or(|at| now_millis().saturating_sub(at) >= mark_every(settings.feed_keep));
        let result = snapshots
            .database()
            .and_then(|db| commit_group(&db, &counters, &group, log, settings, mark_feed));
        match result {
            Ok(committed) => {
                metrics.commit(weight, started.elapsed());
                if retained {
                    retention_not_before =
                        Some(Instant::now() + committed.retention_time * RETENTION_PAUSE_FACTOR);
                }
                counters = committed.counters;
                next_due = committed.next_due;
                if let Some(expiry) = committed.next_expiry {
                    next_expiry = expiry;
                }
                if mark_feed {
                    last_mark = Some(now_millis());
                }
                if committed.due_left {
                    // More came due than one group takes: look again at once.
                    last_look = None;
                }
                for (kind, outcome) in &committed.made {
                    metrics.event_outcome(*kind, outcome);
                }
                // Before any answer: whoever got a 2xx must read this commit.
                snapshots.invalidate();
                live.committed(counters.last_seq, &committed.ended);
                for (command, answer) in group.into_iter().zip(committed.answers) {
                    command.answer(Ok(answer));
                }
            }
            Err(error) => {
                let failure = if error.is_storage_full() {
                    WriteFailure::StorageFull
                } else {
                    WriteFailure::Storage
                };
                tracing::error!(%error, requests = group.len(), "write group failed; nothing of it was applied");
                // Reopen before answering, so that whoever reads next after
                // this 503 finds the store usable again.
                if error.poisons_handle() {
                    counters = reopen_or_exit(snapshots, log, settings.quick_repair);
                }
                for command in group {
                    command.answer(Err(failure));
                }
            }
        }
    }
    if log.file.groups() > 0 {
        let made_durable = snapshots
            .database()
            .and_then(|db| checkpoint(&db, log, settings.quick_repair));
        if let Err(error) = made_durable {
            tracing::error!(%error, "the last commits could not be made durable in the store file; the write log keeps them for the next start");
        }
    }
    tracing::debug!("writer stopped: every handle is gone and the queue is empty");
}

/// After an I/O error redb refuses the handle: reopen the store and carry
/// on from what is committed, or exit so that a supervisor restarts us.
fn reopen_or_exit(snapshots: &SharedSnapshots, log: &mut Log, quick_repair: bool) -> Counters {
    // The reopened store is its last durable commit: the log brings back
    // the groups acknowledged since.
    let reopened = snapshots
        .reopen(REOPEN_GIVE_UP)
        .and_then(|()| replay(&*snapshots.database()?, &mut log.file, quick_repair));
    match reopened {
        Ok((counters, number)) => {
            log.number = number;
            tracing::warn!("the store was reopened after an I/O error; writes go on");
            counters
        }
        Err(error) => {
            tracing::error!(%error, "the store cannot be reopened; exiting so that a supervisor restarts the daemon");
            std::process::exit(1);
        }
    }
}

/// Leaves nothing half-applied: an error after the group is in the log
/// would make the store and the log tell different stories.
fn exit_after_logging(error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error, "a logged group could not be committed; exiting so that a supervisor restarts the daemon, which replays the log");
    std::process::exit(1);
}

/// Applies a group in one transaction and commits it: logged and synced
/// first, then committed without redb's durability; or, once
/// `checkpoint_groups` groups or `checkpoint_bytes` are logged (and for a
/// group too large for what is left of the log), committed durably
/// instead. On an error the transaction is dropped, which aborts it, and a
/// logged group is taken back out of the log: nothing of the group stays.
/// What a committed group leaves for the writer to do.
struct Committed {
    counters: Counters,
    answers: Vec<Answer>,
    /// Processes that ended or were removed.
    ended: Vec<String>,
    /// Events the daemon made, for the metrics.
    made: Vec<(crate::domain::EventType, EventOutcome)>,
    next_due: Option<Millis>,
    /// A look at what came due took all it may and left some.
    due_left: bool,
    /// When the next finished process (or feed item) comes due for
    /// removal; `None` when the group cannot have changed it.
    next_expiry: Option<Option<Millis>>,
    /// How long the group's retention step took.
    retention_time: Duration,
}

fn commit_group(
    db: &Database,
    counters: &Counters,
    group: &[Command],
    log: &mut Log,
    settings: &WriterSettings,
    mark_feed: bool,
) -> Result<Committed, StoreError> {
    let now = now_millis();
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(settings.quick_repair);
    let mut batch = WriteBatch::open(&txn, counters.clone())?;
    batch.set_caps(settings.caps);
    batch.set_timeouts(settings.timeouts.clone());
    if mark_feed {
        batch.mark_feed(now)?;
    }
    let mut answers = Vec::with_capacity(group.len());
    let mut retention_time = Duration::ZERO;
    for command in group {
        let started = Instant::now();
        answers.push(apply_work(&mut batch, &command.work, now)?);
        if matches!(&command.work, Work::Purge(step) if step.trim_feed_before.is_some()) {
            retention_time += started.elapsed();
        }
    }
    let next_due = batch.next_due()?;
    // A look at what came due is among the group's last works: whatever is
    // due still is what it had no room for.
    let ticked = group
        .iter()
        .any(|command| matches!(command.work, Work::Tick));
    let due_left = ticked && next_due.is_some_and(|due| due <= now);
    // What comes due for removal moves only when processes end or go, or
    // when the feed is marked or trimmed: not in most groups.
    let purged = group
        .iter()
        .any(|command| matches!(command.work, Work::Purge(_)));
    let next_expiry = if mark_feed || purged || !batch.ended.is_empty() {
        Some(earliest(
            batch.next_expiry(&settings.retention)?,
            batch.next_feed_trim(settings.feed_keep)?,
        ))
    } else {
        None
    };
    let ended = std::mem::take(&mut batch.ended);
    let made = std::mem::take(&mut batch.made);
    let number = log.number + 1;
    let committed = batch.finish_group(number)?;
    let logged = log.file.groups() < settings.checkpoint_groups
        && log.file.written() < settings.checkpoint_bytes
        && {
            let record = codec::encode(&LoggedGroupRef {
                version: LOGGED_GROUP_V3,
                now,
                caps: settings.caps,
                timeouts: &settings.timeouts,
                works: group.iter().map(|command| &command.work).collect(),
            });
            match log.file.append(number, &record) {
                Ok(fits) => fits,
                Err(error) => exit_after_logging(&error),
            }
        };
    if logged {
        let committed = txn
            .set_durability(Durability::None)
            .map_err(StoreError::from)
            .and_then(|()| txn.commit().map_err(StoreError::from));
        if let Err(error) = committed {
            // Not applied: take it out of the log before saying so.
            if let Err(retract) = log.file.retract_last() {
                exit_after_logging(&retract);
            }
            return Err(error);
        }
    } else {
        txn.commit()?;
        log.file
            .start_over()
            .unwrap_or_else(|error| exit_after_logging(&error));
    }
    log.number = number;
    Ok(Committed {
        counters: committed,
        answers,
        ended,
        made,
        next_due,
        due_left,
        next_expiry,
        retention_time,
    })
}

fn apply_work(batch: &mut WriteBatch<'_>, work: &Work, now: Millis) -> Result<Answer, StoreError> {
    Ok(match work {
        Work::Ingest(events) => {
            let mut outcomes = Vec::with_capacity(events.len());
            for event in events {
                outcomes.push(batch.apply(event, now)?);
            }
            batch.write_back()?;
            Answer::Events(outcomes)
        }
        Work::Delete(process_id) => Answer::Deleted(batch.delete_process(process_id, Some(now))?),
        Work::Tick => {
            batch.fire_due(now)?;
            batch.write_back()?;
            Answer::Ticked
        }
        Work::Purge(step) => {
            let purged = batch.purge(step, now)?;
            batch.write_back()?;
            if let Some(before) = step.trim_feed_before {
                batch.trim_feed(before, FEED_TRIM_STEP)?;
            }
            Answer::Purged(purged)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{model::bare_event, EventType};
    use crate::store::legacy::EventV1Ref;

    #[test]
    fn groups_logged_by_earlier_builds_replay_as_those_builds_applied_them() {
        #[derive(serde::Serialize)]
        enum OldWork<'a> {
            Ingest(Vec<OldIncoming<'a>>),
            Delete(String),
        }
        #[derive(serde::Serialize)]
        struct OldIncoming<'a> {
            event: EventV1Ref<'a>,
            fingerprint: [u8; 16],
            received_at: Millis,
        }
        #[derive(serde::Serialize)]
        struct V1<'a> {
            now: Millis,
            works: Vec<OldWork<'a>>,
        }
        #[derive(serde::Serialize)]
        struct V2<'a> {
            version: u8,
            now: Millis,
            caps: Caps,
            works: Vec<OldWork<'a>>,
        }
        let old = codec::encode(&V1 {
            now: 1_764_000_000_000,
            works: vec![OldWork::Delete("run-1".into())],
        });
        // A varint of a clock after 1970-01-25 begins with 253.
        assert_eq!(old[1], 253);
        let decoded = decode_logged_group(&old).unwrap();
        assert_eq!(
            (decoded.version, decoded.now, decoded.caps),
            (1, 1_764_000_000_000, Caps::UNLIMITED)
        );
        assert!(decoded.timeouts.is_empty());
        assert!(matches!(&decoded.works[..], [Work::Delete(id)] if id == "run-1"));

        let caps = Caps {
            tasks_per_process: 7,
            ..Caps::default()
        };
        let mut event = bare_event(EventType::TaskStarted, Some("t"));
        event.event_id = Some("k".into());
        let v2 = codec::encode(&V2 {
            version: LOGGED_GROUP_V2,
            now: 5,
            caps,
            works: vec![OldWork::Ingest(vec![OldIncoming {
                event: EventV1Ref::from(&event),
                fingerprint: [3; 16],
                received_at: 4,
            }])],
        });
        let decoded = decode_logged_group(&v2).unwrap();
        assert_eq!((decoded.version, decoded.now, decoded.caps), (2, 5, caps));
        match &decoded.works[..] {
            [Work::Ingest(events)] => {
                assert_eq!(events[0].event, event);
                assert_eq!((events[0].fingerprint, events[0].received_at), ([3; 16], 4));
            }
            _ => panic!("the logged events did not come back"),
        }

        let mut timed = event;
        timed.heartbeat_timeout = Some(60);
        timed.deadline = Some(None);
        let works = [
            Work::Ingest(vec![IncomingEvent::new(timed.clone(), 4)]),
            Work::Tick,
        ];
        let timeouts = import_timeouts();
        let v3 = codec::encode(&LoggedGroupRef {
            version: LOGGED_GROUP_V3,
            now: 6,
            caps,
            timeouts: &timeouts,
            works: works.iter().collect(),
        });
        let decoded = decode_logged_group(&v3).unwrap();
        assert_eq!((decoded.version, decoded.now, decoded.caps), (3, 6, caps));
        assert_eq!(decoded.timeouts, timeouts);
        assert!(
            matches!(&decoded.works[..], [Work::Ingest(events), Work::Tick] if events[0].event == timed)
        );
    }

    /// Timeout defaults for one process type.
    fn import_timeouts() -> TimeoutDefaults {
        let mut timeouts = TimeoutDefaults::new();
        timeouts.insert(
            "import".into(),
            crate::store::write::TypeTimeouts {
                heartbeat_timeout: Some(30),
                deadline_after_ms: Some(1000),
            },
        );
        timeouts
    }

    /// An event with every field set.
    fn full_event() -> crate::domain::Event {
        let mut event = bare_event(EventType::TaskFailed, Some("load"));
        event.event_id = Some("key-1".into());
        event.process_id = "run-42".into();
        event.occurred_at = Some(1_764_000_000_123);
        event.name = Some("Load rows".into());
        event.process_type = Some("import".into());
        event.correlation_id = Some("order-7".into());
        event.progress = Some(crate::domain::Progress {
            percent: Some(12.5),
            current: Some(5),
            total: Some(40),
            message: Some("rows".into()),
        });
        event.error = Some(crate::domain::ErrorInfo {
            code: "Timeout".into(),
            message: "slow".into(),
        });
        event.attributes.insert("tenant".into(), "acme".into());
        event.heartbeat_timeout = Some(300);
        event.deadline = Some(Some(1_764_000_600_000));
        event
    }

    /// The write log's record, byte for byte. A log written by this build
    /// must replay on the next: if this fails, the layout of a logged
    /// group changed (a variant of `Work` moved, a field of an event or of
    /// a purge step came or went). Give the new layout a new version and
    /// keep `decode_logged_group` decoding this one (as it does versions 1
    /// and 2); only then pin the new bytes.
    #[test]
    fn the_write_log_record_is_pinned_byte_for_byte() {
        let works = [
            Work::Ingest(vec![IncomingEvent {
                event: full_event(),
                fingerprint: [9; 16],
                received_at: 1_764_000_000_456,
            }]),
            Work::Delete("run-7".into()),
            Work::Tick,
            Work::Purge(PurgeStep {
                cuts: vec![(Status::Succeeded, 1_700_000_000_000)],
                process_type: Some("import".into()),
                after: Some((2, 1_690_000_000_000, 77)),
                limit: 8,
                trim_feed_before: Some(1_760_000_000_000),
            }),
        ];
        let timeouts = import_timeouts();
        let caps = Caps {
            tasks_per_process: 7,
            ..Caps::default()
        };
        let bytes = codec::encode(&LoggedGroupRef {
            version: LOGGED_GROUP_V3,
            now: 1_764_000_000_789,
            caps,
            timeouts: &timeouts,
            works: works.iter().collect(),
        });
        assert_eq!(hex::encode(&bytes), PINNED_LOGGED_GROUP_V3);
        // And the pinned bytes replay as what was logged.
        let replayed = decode_logged_group(&hex::decode(PINNED_LOGGED_GROUP_V3).unwrap()).unwrap();
        assert_eq!(
            (replayed.version, replayed.now, replayed.caps),
            (3, 1_764_000_000_789, caps)
        );
        assert_eq!(replayed.timeouts, timeouts);
        match &replayed.works[..] {
            [Work::Ingest(events), Work::Delete(id), Work::Tick, Work::Purge(step)] => {
                assert_eq!(events[0].event, full_event());
                assert_eq!(id, "run-7");
                assert_eq!(
                    (step.limit, step.after),
                    (8, Some((2, 1_690_000_000_000, 77)))
                );
            }
            _ => panic!("the pinned group did not replay"),
        }
    }

    const PINNED_LOGGED_GROUP_V3: &str = "0103fd2ad62f6d35030000fb0001fc0000010040fb004007140106696d706f7274011e01fbd00704000101056b65792d310b0672756e2d343201046c6f616401fdf6d02f6d3503000001094c6f616420726f77730106696d706f727401076f726465722d3701010000000000002940010501280104726f7773010754696d656f757404736c6f77010674656e616e740461636d6501fb2c010101fd801f426d3503000009090909090909090909090909090909fd90d32f6d35030000010572756e2d3702030102fd00d0ca9f170300000106696d706f72740102fd0008b3f7120300004d0801fd0080599033030000";

    /// The idempotency fingerprint of an event, byte for byte: a resend
    /// of an event stored by an earlier build must still be a duplicate,
    /// not a 422. If this fails, what is hashed changed; hash new fields
    /// only when they are set (as `IncomingEvent::new` does for the
    /// timing fields of 1.1), so that every event that could be sent
    /// before hashes as it did.
    #[test]
    fn the_idempotency_fingerprint_is_pinned_byte_for_byte() {
        let mut before_timing = full_event();
        before_timing.heartbeat_timeout = None;
        before_timing.deadline = None;
        assert_eq!(
            hex::encode(IncomingEvent::new(before_timing, 1).fingerprint),
            PINNED_FINGERPRINT_V1
        );
        assert_eq!(
            hex::encode(IncomingEvent::new(full_event(), 1).fingerprint),
            PINNED_FINGERPRINT_TIMING
        );
    }

    const PINNED_FINGERPRINT_V1: &str = "0b178c7e1390cd23804db44b11fd4eec";
    const PINNED_FINGERPRINT_TIMING: &str = "74bc4894d5bdcc1bafeed9e6df4b949d";

    #[test]
    fn an_event_without_timing_fields_keeps_the_fingerprint_it_had_before_them() {
        use sha2::{Digest, Sha256};
        let mut event = bare_event(EventType::ProcessStarted, None);
        event.attributes.insert("a".into(), "b".into());
        // What builds before version 1.1 hashed: the event in its old layout.
        let before = Sha256::digest(codec::encode(&EventV1Ref::from(&event)));
        assert_eq!(
            IncomingEvent::new(event.clone(), 1).fingerprint,
            before[..16]
        );
        let mut timed = event;
        timed.heartbeat_timeout = Some(5);
        assert_ne!(IncomingEvent::new(timed, 1).fingerprint, before[..16]);
    }
}
