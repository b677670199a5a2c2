//! The one thread that writes to the store, and the handle that reaches it.
//!
//! The writer's loop: **queue** (requests wait on a bounded crossbeam
//! channel; the writer blocks for the first), **group** (whatever else is
//! queued, up to `max_group_events`), **apply** (all of it in one redb write
//! transaction, by the domain's rules), **commit** (`store::durability`,
//! which logs the group with one `fdatasync` and commits, and says when a
//! commit is made durable in the store file instead), **answer** (each
//! request, only once its group is durable). The group grows by itself
//! under load; there is no timer and no added latency when idle.
//!
//! Shutdown is dropping every `WriterHandle`: the channel disconnects once
//! drained, the writer commits what it has, and the thread ends.

mod logged;

use crate::domain::{Caps, Millis, Status};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::store::durability::Durability;
use crate::store::read::SharedSnapshots;
use crate::store::schema::Counters;
use crate::store::write::{
    EventOutcome, IncomingEvent, PurgeStep, Purged, TimeoutDefaults, WriteBatch,
};
use crate::store::StoreError;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use redb::Database;
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
    /// The size of the write log (`store::durability`).
    pub log_bytes: u64,
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
    let (mut durability, counters) = Durability::open(
        &*snapshots.database()?,
        snapshots.path(),
        settings.log_bytes,
        settings.quick_repair,
        logged::replay,
    )?;
    let live = Live::new(counters.last_seq);
    let announce = live.clone();
    let (sender, receiver) = crossbeam_channel::bounded(settings.queue_capacity);
    let thread = std::thread::Builder::new()
        .name("pm-writer".into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(
                    &snapshots,
                    receiver,
                    counters,
                    &mut durability,
                    &settings,
                    &metrics,
                    &announce,
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
    durability: &mut Durability,
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
            .and_then(|db| commit_group(&db, &counters, &group, durability, settings, mark_feed));
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
                    counters = reopen_or_exit(snapshots, durability);
                }
                for command in group {
                    command.answer(Err(failure));
                }
            }
        }
    }
    let made_durable = snapshots
        .database()
        .and_then(|db| durability.checkpoint(&db));
    if let Err(error) = made_durable {
        tracing::error!(%error, "the last commits could not be made durable in the store file; the write log keeps them for the next start");
    }
    tracing::debug!("writer stopped: every handle is gone and the queue is empty");
}

/// After an I/O error redb refuses the handle: reopen the store and carry
/// on from what is committed, or exit so that a supervisor restarts us.
fn reopen_or_exit(snapshots: &SharedSnapshots, durability: &mut Durability) -> Counters {
    // The reopened store is its last durable commit: the log brings back
    // the groups acknowledged since.
    let reopened = snapshots
        .reopen(REOPEN_GIVE_UP)
        .and_then(|()| durability.recover(&*snapshots.database()?, logged::replay));
    match reopened {
        Ok(counters) => {
            tracing::warn!("the store was reopened after an I/O error; writes go on");
            counters
        }
        Err(error) => {
            tracing::error!(%error, "the store cannot be reopened; exiting so that a supervisor restarts the daemon");
            std::process::exit(1);
        }
    }
}

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

/// Applies a group in one transaction and hands it to `durability`, which
/// makes it durable and visible; on an error nothing of the group stays.
fn commit_group(
    db: &Database,
    counters: &Counters,
    group: &[Command],
    durability: &mut Durability,
    settings: &WriterSettings,
    mark_feed: bool,
) -> Result<Committed, StoreError> {
    let now = now_millis();
    let txn = durability.begin(db)?;
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
    let counters = batch.finish()?;
    durability.commit(txn, || {
        logged::encode(
            now,
            settings.caps,
            &settings.timeouts,
            group.iter().map(|command| &command.work).collect(),
        )
    })?;
    Ok(Committed {
        counters,
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

    /// The writer's own path (apply, `Durability::commit`, recover) on a
    /// disk that loses power at a random write or sync, every unsynced
    /// write then lost: every group answered before the power went is
    /// there after recovery (a resend of each of its events is a
    /// duplicate with the seq it was answered), and the store verifies.
    /// Each cycle goes on from what the last one recovered. CI runs 40
    /// cycles; `PM_SIMULATED_POWER_LOSS_CYCLES` asks for more (and
    /// `PM_SIMULATED_POWER_LOSS_SEED` repeats a run).
    #[test]
    fn power_lost_at_any_write_or_sync_loses_no_answered_group() {
        use crate::store::durability::simulated::SimulatedDisk;
        use crate::store::durability::WriteLog;
        use crate::store::read::Snapshot;

        let cycles: u32 = std::env::var("PM_SIMULATED_POWER_LOSS_CYCLES")
            .map_or(40, |cycles| cycles.parse().expect("a number of cycles"));
        let seed: u64 = std::env::var("PM_SIMULATED_POWER_LOSS_SEED")
            .map_or_else(|_| fastrand::u64(..), |seed| seed.parse().expect("a seed"));
        println!("PM_SIMULATED_POWER_LOSS_SEED={seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let settings = WriterSettings {
            queue_capacity: 1,
            max_group_events: 4096,
            quick_repair: true,
            min_free_bytes: 0,
            // A small log: some groups do not fit in what is left of it
            // and are committed durably at once.
            log_bytes: 64 << 10,
            caps: Caps::default(),
            timeouts: Arc::new(TimeoutDefaults::new()),
            check_interval: Duration::from_secs(1),
            retention: Vec::new(),
            feed_keep: Millis::MAX / 4,
        };
        let disk = SimulatedDisk::new();
        let mut next_event = 0u64;
        // Events answered as stored, with their seq, not yet checked.
        let mut unchecked: Vec<(crate::domain::Event, u64)> = Vec::new();
        let mut answered = 0usize;
        let mut lost_groups = 0usize;
        for cycle in 0..=cycles {
            let db = crate::store::open_simulated(disk.file("store"), 4 << 20).unwrap();
            let log =
                WriteLog::on(Box::new(disk.file("log")), 1, Some(settings.log_bytes)).unwrap();
            let (mut durability, mut counters) =
                Durability::with_log(&db, log, settings.quick_repair, logged::replay).unwrap();
            // What was answered before the power went is there: each event
            // again is a duplicate of the one stored, with its seq.
            for chunk in std::mem::take(&mut unchecked).chunks(100) {
                let resend = Command {
                    work: Work::Ingest(
                        chunk
                            .iter()
                            .map(|(event, _)| IncomingEvent::new(event.clone(), 0))
                            .collect(),
                    ),
                    reply: oneshot::channel().0,
                };
                let committed =
                    commit_group(&db, &counters, &[resend], &mut durability, &settings, false)
                        .unwrap();
                counters = committed.counters;
                let Answer::Events(outcomes) = &committed.answers[0] else {
                    panic!("events answered as something else");
                };
                for ((event, seq), outcome) in chunk.iter().zip(outcomes) {
                    assert!(
                        matches!(outcome, EventOutcome::Duplicate { seq: found, .. } if found == seq),
                        "cycle {cycle}: event {:?} answered with seq {seq} came back as {outcome:?}",
                        event.event_id
                    );
                }
            }
            let report = crate::store::maintenance::verify(&Snapshot::begin(&db).unwrap()).unwrap();
            assert!(report.is_sound(), "cycle {cycle}: {:?}", report.problems);
            if cycle == cycles {
                break;
            }
            // Groups until the power goes, at a random write or sync.
            disk.cut_after(rng.u64(1..3_000));
            loop {
                let group: Vec<Command> = (0..rng.usize(1..6))
                    .map(|_| {
                        let events = (0..rng.usize(1..40))
                            .map(|_| {
                                next_event += 1;
                                let mut event = bare_event(
                                    EventType::TaskStarted,
                                    Some(&format!("t{}", rng.u8(0..4))),
                                );
                                event.process_id = format!("run-{}", rng.u16(0..200));
                                event.event_id = Some(format!("e{next_event}"));
                                event
                            })
                            .collect::<Vec<_>>();
                        Command {
                            work: Work::Ingest(
                                events
                                    .into_iter()
                                    .map(|e| IncomingEvent::new(e, 0))
                                    .collect(),
                            ),
                            reply: oneshot::channel().0,
                        }
                    })
                    .collect();
                let committed =
                    commit_group(&db, &counters, &group, &mut durability, &settings, false);
                if disk.is_down() {
                    // Nobody heard back: the power went before the answer.
                    lost_groups += 1;
                    break;
                }
                let committed = committed.unwrap();
                counters = committed.counters;
                for (command, answer) in group.iter().zip(&committed.answers) {
                    let (Work::Ingest(events), Answer::Events(outcomes)) = (&command.work, answer)
                    else {
                        panic!("events answered as something else");
                    };
                    for (event, outcome) in events.iter().zip(outcomes) {
                        if let EventOutcome::Stored { seq, .. } = outcome {
                            unchecked.push((event.event.clone(), *seq));
                            answered += 1;
                        }
                    }
                }
            }
            drop(durability);
            drop(db);
            disk.power_back();
        }
        println!("{cycles} power losses, {answered} events answered, all there; {lost_groups} groups unanswered");
        assert!(answered > 0);
    }

    /// Timeout defaults for one process type.
    pub(super) fn import_timeouts() -> TimeoutDefaults {
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
    pub(super) fn full_event() -> crate::domain::Event {
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
        let before = Sha256::digest(crate::store::codec::encode(&EventV1Ref::from(&event)));
        assert_eq!(
            IncomingEvent::new(event.clone(), 1).fingerprint,
            before[..16]
        );
        let mut timed = event;
        timed.heartbeat_timeout = Some(5);
        assert_ne!(IncomingEvent::new(timed, 1).fingerprint, before[..16]);
    }
}
