//! The one thread that decides every write, the thread that applies what
//! it decided to the store file, and the handle that reaches them.
//!
//! The writer's loop: **queue** (requests wait on a bounded crossbeam
//! channel; the writer blocks for the first), **group** (whatever else is
//! queued, up to `max_group_events`), **decide** (every request of the
//! group by the domain's rules, into the active pending layer,
//! `store::layers`), **log** (the group's record, with one `fdatasync`,
//! `store::durability`), **answer** (each request, once its group is
//! logged and visible to readers). The group grows by itself under load;
//! there is no timer and no added latency when idle.
//!
//! Many groups later (`WriterSettings::apply_after`, or once the layer or
//! the log fills) the writer **freezes** the active layer and hands it to
//! the applier thread (`applier`), which writes it into the store file in
//! one durable step, each table in key order and each key once, while the
//! writer goes on into a new layer. Pending memory is bounded
//! (`pending_bytes`): when the layer fills while a step is under way, the
//! writer waits for the step before it takes more requests, so that a
//! slow disk becomes back-pressure (429 once the queue is full), never
//! growth.
//!
//! Shutdown is dropping every `WriterHandle`: the channel disconnects once
//! drained, the writer applies what is pending in a last step, and the
//! threads end.

mod applier;
mod logged;
#[cfg(test)]
mod tests;

use crate::domain::{
    Caps, EventOutcome, EventType, IncomingEvent, Millis, PurgeStep, Purged, Status,
    TimeoutDefaults,
};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::store::durability::{apply_step, Durability, Logged};
use crate::store::layers::{LayerSet, SharedLayer, Writing};
use crate::store::read::SharedSnapshots;
use crate::store::schema::Counters;
use crate::store::write::WriteBatch;
use crate::store::StoreError;
use applier::{Applier, Done, Job};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::{Arc, PoisonError};
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
    /// Answered once the group is logged; a requester that went away is no
    /// loss, the write stands either way.
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
    /// Events decided in one group at most.
    pub max_group_events: usize,
    /// Save redb's allocator state with every apply step, so that a
    /// restart after a crash needs no full repair of the file.
    pub quick_repair: bool,
    /// Refuse writes while the store's disk has less free space than this.
    pub min_free_bytes: u64,
    /// The size of the two write logs together (`store::durability`).
    pub log_bytes: u64,
    /// Memory the pending layers may take, the frozen one and the active
    /// one together.
    pub pending_bytes: usize,
    /// How long a group may wait in the active layer before an apply step
    /// takes it: the store file stays this close behind.
    pub apply_after: Duration,
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

impl WriterSettings {
    /// The writer's settings in `config`, with the write log and the free
    /// space floor as sized for the volume.
    pub fn from_config(
        config: &crate::config::Config,
        sizes: &crate::store::sizing::Sizes,
    ) -> Result<WriterSettings, crate::config::ConfigError> {
        Ok(WriterSettings {
            queue_capacity: config.ingest.queue_capacity,
            max_group_events: config.writer.max_group_events,
            quick_repair: config.store.quick_repair,
            min_free_bytes: sizes.min_free_bytes,
            log_bytes: sizes.log_bytes,
            pending_bytes: config.writer.pending_mib.saturating_mul(1 << 20),
            apply_after: Duration::from_millis(config.writer.apply_after_ms),
            caps: config.limits,
            timeouts: Arc::new(config.timeouts.defaults()),
            check_interval: Duration::from_millis(config.timeouts.check_interval_ms),
            retention: config.retention.keep()?,
            feed_keep: config.feed.keep()?,
        })
    }
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

/// Processes a retention step that joins requests removes at least: few,
/// so that the group it joins grows by a fraction of a millisecond and a
/// request that shares it hardly waits longer.
const RETENTION_STEP: u32 = 4;

/// And at most, however far behind retention is: removing a run costs
/// about what making it did, so a step of this many holds a group up for
/// a few milliseconds.
const RETENTION_MAX_STEP: u32 = 512;

/// Processes a retention step of its own (no request for
/// `RETENTION_QUIET`) removes at most: a request that comes meanwhile
/// waits for a few milliseconds at most.
const RETENTION_IDLE_STEP: u32 = 64;

/// While requests come and retention keeps up, it applies steps for at
/// most a sixtieth of the writer's time: after a step, the next waits 59
/// times as long as the step took.
const RETENTION_PAUSE_FACTOR: u32 = 59;

/// While it falls behind (a step found more due than it removed), it joins
/// every group, in steps growing to `RETENTION_MAX_STEP`: removals keep
/// pace with the runs that come due and the store stops growing, at the
/// price of ingest while it catches up (removing a run costs about what
/// making it did, so a load that only makes short runs slows to about
/// half while retention follows it).
const RETENTION_BEHIND_PAUSE_FACTOR: u32 = 0;

/// The pace of retention while requests come: how many processes a step
/// removes, and how long the next waits for each unit of time one took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RetentionPace {
    step: u32,
    pause_factor: u32,
}

impl RetentionPace {
    const KEEPING_UP: RetentionPace = RetentionPace {
        step: RETENTION_STEP,
        pause_factor: RETENTION_PAUSE_FACTOR,
    };

    /// The pace after a step that removed `deleted` of its `step`: faster
    /// while it finds more due than it may remove, back to the slowest
    /// once it does not.
    fn after(self, deleted: u64) -> RetentionPace {
        if deleted >= u64::from(self.step) {
            RetentionPace {
                step: (self.step * 2).min(RETENTION_MAX_STEP),
                pause_factor: RETENTION_BEHIND_PAUSE_FACTOR,
            }
        } else {
            RetentionPace::KEEPING_UP
        }
    }
}

/// How long without requests before retention makes groups of its own,
/// unpaced: an idle daemon clears its backlog at full speed, and a request
/// that comes meanwhile waits for one step at most.
const RETENTION_QUIET: Duration = Duration::from_millis(50);

/// How long the writer keeps trying to reopen the store after an I/O
/// error before it exits, so that a supervisor restarts the daemon.
const REOPEN_GIVE_UP: Duration = Duration::from_secs(30);

/// How long after a failed apply step the writer tries it again.
const APPLY_RETRY: Duration = Duration::from_secs(1);

/// After a step failed on a full disk, the space that must be freed before
/// it is tried again...
const SPACE_FREED: u64 = 1 << 20;

/// ...or how long until it is tried anyway.
const FULL_RETRY: Duration = Duration::from_secs(30);

/// Replays the write logs onto the store, loads the counters and starts the
/// writer and applier threads.
pub fn spawn(
    snapshots: Arc<SharedSnapshots>,
    settings: WriterSettings,
    metrics: Arc<Metrics>,
) -> Result<(WriterHandle, WriterThread, Arc<Live>), StoreError> {
    let (durability, counters) = Durability::open(
        &*snapshots.database()?,
        snapshots.path(),
        settings.log_bytes,
        settings.quick_repair,
        logged::replay,
    )?;
    // Recovery wrote to the store file: readers begin anew.
    snapshots.applied_step();
    let live = Live::new(counters.last_seq);
    let announce = live.clone();
    let applier = Applier::spawn().map_err(|error| StoreError::Redb(redb::Error::Io(error)))?;
    let (sender, receiver) = crossbeam_channel::bounded(settings.queue_capacity);
    let thread = std::thread::Builder::new()
        .name("pm-writer".into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut writer = Writer::new(
                    &snapshots, durability, counters, applier, &settings, &metrics, &announce,
                );
                writer.run(receiver);
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
    /// Queues events; the returned future resolves once they are durable.
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

/// What a decided and logged group leaves for the writer to do.
struct Committed {
    answers: Vec<Answer>,
    /// Processes that ended or were removed.
    ended: Vec<String>,
    /// Events the daemon made, for the metrics.
    made: Vec<(EventType, EventOutcome)>,
    next_due: Option<Millis>,
    /// A look at what came due took all it may and left some.
    due_left: bool,
    /// When the next finished process (or feed item) comes due for
    /// removal; `None` when the group cannot have changed it.
    next_expiry: Option<Option<Millis>>,
    /// How long the group's retention step took.
    retention_time: Duration,
}

/// The writer's state between groups.
struct Writer<'a> {
    snapshots: &'a SharedSnapshots,
    durability: Durability,
    counters: Counters,
    /// The layer groups go into.
    active: SharedLayer,
    /// When the first group in the active layer was logged.
    active_since: Option<Instant>,
    /// The layer an apply step has (or is waiting to have) in hand, with
    /// the last group it holds.
    frozen: Option<(SharedLayer, u64)>,
    /// Whether the applier has the frozen layer in hand now; when not, a
    /// failed step waits for `retry_at`.
    applying: bool,
    retry_at: Option<Instant>,
    /// After a step failed on a full disk: the free bytes then, and when.
    /// The next try waits for space to be freed (`SPACE_FREED`), or for
    /// `FULL_RETRY`: each failure poisons redb's handle, and reopening it
    /// turns readers away for a moment, so trying every second on a disk
    /// that stays full would make reads flicker.
    full_disk: Option<(u64, Instant)>,
    applier: Applier,
    settings: &'a WriterSettings,
    metrics: &'a Metrics,
    live: &'a Live,
}

impl<'a> Writer<'a> {
    fn new(
        snapshots: &'a SharedSnapshots,
        durability: Durability,
        counters: Counters,
        applier: Applier,
        settings: &'a WriterSettings,
        metrics: &'a Metrics,
        live: &'a Live,
    ) -> Self {
        let active = SharedLayer::default();
        snapshots.set_layers(None, active.clone());
        snapshots.publish(durability.next_number() - 1);
        Writer {
            snapshots,
            durability,
            counters,
            active,
            active_since: None,
            frozen: None,
            applying: false,
            retry_at: None,
            full_disk: None,
            applier,
            settings,
            metrics,
            live,
        }
    }

    fn run(&mut self, receiver: Receiver<Command>) {
        let settings = self.settings;
        let mut disk_full = false;
        let mut next_due = self.read_next_due().unwrap_or_else(|error| {
            tracing::error!(%error, "cannot read the due table; stalls and deadlines wait for the next write");
            None
        });
        // The first look finds out what is due for removal (processes under
        // `[retention]`, and the feed's old items).
        let mut next_expiry = Some(now_millis());
        let mut last_look: Option<Instant> = None;
        let mut retention_not_before: Option<Instant> = None;
        let mut pace = RetentionPace::KEEPING_UP;
        let mut last_requests: Option<Instant> = None;
        // When the feed was last marked with the time (`mark_every`).
        let mut last_mark: Option<Millis> = None;
        loop {
            self.take_applied();
            self.apply_if_due();
            let due_look = next_look(next_due, last_look, settings.check_interval);
            // Retention joins groups that carry requests, paced; it makes
            // groups of its own (each with its own sync, which a request would
            // queue behind) only once no request has come for
            // `RETENTION_QUIET`, and then unpaced.
            let retention_look = next_look(next_expiry, None, Duration::ZERO)
                .map(|at| last_requests.map_or(at, |last| at.max(last + RETENTION_QUIET)));
            let look_at = earliest(
                earliest(due_look, retention_look),
                earliest(self.apply_at(), self.retry_at),
            );
            let first = match self.wait_for_request(&receiver, look_at) {
                Ok(first) => first,
                Err(()) => break,
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
                        pace.step
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
            if crate::store::free_bytes(self.snapshots.path())
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
            match self.commit(&group, mark_feed) {
                Ok(committed) => {
                    self.metrics.commit(weight, started.elapsed());
                    if retained {
                        // The retention step is the group's last work.
                        if let (true, Some(Answer::Purged(purged))) =
                            (has_requests, committed.answers.last())
                        {
                            pace = pace.after(purged.deleted);
                        }
                        retention_not_before =
                            Some(Instant::now() + committed.retention_time * pace.pause_factor);
                    }
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
                        self.metrics.event_outcome(*kind, outcome);
                    }
                    self.live
                        .committed(self.counters.last_seq, &committed.ended);
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
                    if error.poisons_handle() {
                        self.reopen_or_exit();
                    }
                    for command in group {
                        command.answer(Err(failure));
                    }
                }
            }
            self.hold_back_while_full();
        }
        self.apply_all_and_stop();
        tracing::debug!("writer stopped: every handle is gone and the queue is empty");
    }

    /// The next request, waiting until `until` at most (`None` when it
    /// passed first); `Err` once every handle is gone and the queue is
    /// empty. An apply step that ends meanwhile is taken in.
    fn wait_for_request(
        &mut self,
        receiver: &Receiver<Command>,
        until: Option<Instant>,
    ) -> Result<Option<Command>, ()> {
        loop {
            let done = if self.applying {
                self.applier.done_channel().cloned()
            } else {
                None
            };
            let mut select = crossbeam_channel::Select::new();
            let requests = select.recv(receiver);
            let applied = done.as_ref().map(|done| select.recv(done));
            let ready = match until {
                Some(at) => match select.select_deadline(at) {
                    Ok(ready) => ready,
                    Err(_) => return Ok(None),
                },
                None => select.select(),
            };
            if Some(ready.index()) == applied {
                let done = done.as_ref().map(|done| ready.recv(done));
                if let Some(Ok(done)) = done {
                    self.applied(done);
                }
                self.apply_if_due();
                continue;
            }
            debug_assert_eq!(ready.index(), requests);
            return match ready.recv(receiver) {
                Ok(command) => Ok(Some(command)),
                Err(_) => Err(()),
            };
        }
    }

    /// The earliest due entry of the store.
    fn read_next_due(&self) -> Result<Option<Millis>, StoreError> {
        let snapshot = self.snapshots.get()?;
        let (applied, pending) = snapshot.parts();
        let due = pending.due(applied);
        let first = due.first()?.map(|(key, _)| key.value().0);
        Ok(first)
    }

    /// Decides a group into the active layer and logs it; on an error
    /// nothing of it stays.
    fn commit(&mut self, group: &[Command], mark_feed: bool) -> Result<Committed, StoreError> {
        let settings = self.settings;
        let now = now_millis();
        let number = self.durability.next_number();
        let floor = self.snapshots.reader_floor();
        let snapshot = self.snapshots.get()?;
        let (applied, _) = snapshot.parts();
        let writing = Writing::new(
            self.frozen.as_ref().map(|(layer, _)| layer.clone()),
            self.active.clone(),
            number,
        )
        .reading_from(floor);
        let decided = (|| {
            let mut batch = WriteBatch::open(&writing, applied, self.counters.clone())?;
            batch.set_caps(settings.caps);
            batch.set_timeouts(settings.timeouts.clone());
            let committed = decide(&mut batch, group, now, mark_feed, settings)?;
            Ok::<_, StoreError>((committed, batch.finish()?))
        })();
        let (committed, counters) = match decided {
            Ok(decided) => decided,
            Err(error) => {
                writing.abandon();
                return Err(error);
            }
        };
        drop(writing);
        drop(snapshot);
        let record = logged::encode(
            now,
            settings.caps,
            &settings.timeouts,
            group.iter().map(|command| &command.work).collect(),
        );
        if let Err(error) = self.log(&record, number) {
            // Not logged, and not applied: nothing of it stays.
            let writing = Writing::new(None, self.active.clone(), number);
            writing.abandon();
            return Err(error);
        }
        self.counters = counters;
        self.snapshots.publish(number);
        self.active_since.get_or_insert_with(Instant::now);
        Ok(committed)
    }

    /// Makes group `number`, decided into the active layer, durable: in
    /// the current log, in the other one once the apply step under way is
    /// done, or by an apply step of its own.
    fn log(&mut self, record: &[u8], number: u64) -> Result<(), StoreError> {
        match self.durability.log(record) {
            Logged::Yes => Ok(()),
            Logged::NoRoom => {
                // The other log is free once the step in hand is done.
                self.finish_apply()?;
                self.freeze(number);
                match self.durability.log(record) {
                    Logged::Yes => Ok(()),
                    // An empty log takes any record `TooLarge` lets by.
                    Logged::NoRoom | Logged::TooLarge => {
                        self.finish_apply()?;
                        self.apply_unlogged(number)
                    }
                }
            }
            Logged::TooLarge => {
                self.finish_apply()?;
                self.apply_unlogged(number)
            }
        }
    }

    /// Makes group `number` durable by an apply step of its own, with every
    /// group before it: for a group no write log can hold.
    fn apply_unlogged(&mut self, number: u64) -> Result<(), StoreError> {
        // The frozen layer (its last step failed) goes first, in the same
        // step.
        let frozen = self.frozen.take();
        let result = (|| {
            let db = self.snapshots.database()?;
            let frozen_set = frozen
                .as_ref()
                .map(|(layer, _)| layer.read().unwrap_or_else(PoisonError::into_inner));
            let active_set = self.active.read().unwrap_or_else(PoisonError::into_inner);
            let layers: Vec<&LayerSet> = frozen_set
                .iter()
                .map(|set| &**set)
                .chain([&*active_set])
                .collect();
            apply_step(&db, &layers, number, self.durability.quick_repair())
        })();
        match result {
            Ok(_) => {
                self.durability.applied_unlogged();
                self.durability.all_applied();
                self.active = SharedLayer::default();
                self.snapshots.applied_step_into(self.active.clone());
                self.active_since = None;
                Ok(())
            }
            Err(error) => {
                // The group is not durable: take it back, and keep what was
                // logged pending for the next step.
                self.active
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget_group(number);
                self.frozen = frozen;
                self.retry_at = Some(Instant::now() + APPLY_RETRY);
                Err(error)
            }
        }
    }

    /// Freezes the active layer, with the groups up to `last`, for an apply
    /// step, and turns to the other write log. Call only when no layer is
    /// frozen.
    fn freeze(&mut self, last: u64) {
        let frozen = std::mem::take(&mut self.active);
        self.snapshots
            .set_layers(Some(frozen.clone()), self.active.clone());
        self.durability.turn();
        self.frozen = Some((frozen, last));
        self.active_since = None;
        self.start_apply();
    }

    /// Hands the frozen layer to the applier.
    fn start_apply(&mut self) {
        let Some((layer, last_group)) = &self.frozen else {
            return;
        };
        if let Some((free_then, failed_at)) = self.full_disk {
            let freed = crate::store::free_bytes(self.snapshots.path())
                .is_none_or(|free| free >= free_then.saturating_add(SPACE_FREED));
            if !freed && failed_at.elapsed() < FULL_RETRY {
                self.retry_at = Some(Instant::now() + APPLY_RETRY);
                return;
            }
        }
        let db = match self.snapshots.database() {
            Ok(db) => db,
            Err(error) => {
                tracing::warn!(%error, "cannot apply pending groups yet");
                self.retry_at = Some(Instant::now() + APPLY_RETRY);
                return;
            }
        };
        self.applier.start(Job {
            db,
            layer: layer.clone(),
            last_group: *last_group,
            quick_repair: self.durability.quick_repair(),
        });
        self.applying = true;
        self.retry_at = None;
    }

    /// An apply step ended.
    fn applied(&mut self, done: Done) {
        self.applying = false;
        match done.result {
            Ok(written) => {
                self.full_disk = None;
                self.metrics.applied(written, done.took);
                self.durability.other_applied();
                let published = self.snapshots.applied_step();
                let frozen = self.frozen.take().map(|(layer, _)| layer);
                self.applier
                    .dispose(frozen.into_iter().chain(published).collect());
            }
            Err(error) => {
                tracing::error!(%error, "an apply step failed; the groups stay pending, in memory and in the write log, and the step is tried again");
                if error.is_storage_full() {
                    self.full_disk = Some((
                        crate::store::free_bytes(self.snapshots.path()).unwrap_or(0),
                        Instant::now(),
                    ));
                }
                if error.poisons_handle() {
                    self.reopen_or_exit();
                }
                self.retry_at = Some(Instant::now() + APPLY_RETRY);
            }
        }
    }

    /// Takes in an apply step that ended, if one did.
    fn take_applied(&mut self) {
        if self.applying {
            if let Some(done) = self.applier.try_done() {
                self.applied(done);
            }
        }
    }

    /// Waits for the step in hand, and tries a failed one again, until no
    /// layer is frozen; an error if it cannot be applied now.
    fn finish_apply(&mut self) -> Result<(), StoreError> {
        for _ in 0..2 {
            if self.applying {
                if let Some(done) = self.applier.wait() {
                    self.applied(done);
                }
            }
            if self.frozen.is_none() {
                return Ok(());
            }
            self.start_apply();
        }
        match self.frozen {
            None => Ok(()),
            Some(_) => Err(StoreError::ApplyBehind {
                disk_full: self.full_disk.is_some(),
            }),
        }
    }

    /// When the active layer is next due for an apply step by time.
    fn apply_at(&self) -> Option<Instant> {
        if self.frozen.is_some() {
            return None;
        }
        self.active_since
            .map(|since| since + self.settings.apply_after)
    }

    /// Freezes the active layer for an apply step when it has waited long
    /// enough, or fills its share of memory or of the log, and no step is
    /// in hand; retries a failed step when its time comes.
    fn apply_if_due(&mut self) {
        if self.frozen.is_some() {
            if !self.applying && self.retry_at.is_some_and(|at| Instant::now() >= at) {
                self.start_apply();
            }
            return;
        }
        if self.active_since.is_none() {
            return;
        }
        let full = self.layer_full() || self.log_half_full();
        if full || self.apply_at().is_some_and(|at| Instant::now() >= at) {
            self.freeze(self.durability.next_number() - 1);
        }
    }

    /// Freezes the active layer for an apply step now, if it holds
    /// anything and no step is in hand: a test's choice of moment.
    #[cfg(test)]
    fn apply_now(&mut self) {
        if self.frozen.is_none() && self.active_since.is_some() {
            self.freeze(self.durability.next_number() - 1);
        }
    }

    /// The active layer holds its share of the pending memory.
    fn layer_full(&self) -> bool {
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes()
            >= self.settings.pending_bytes / 2
    }

    /// The current log is half full: the other half is room for the groups
    /// that come while the step that frees the other log runs.
    fn log_half_full(&self) -> bool {
        self.durability.written() >= self.durability.capacity() / 2
    }

    /// While a step is in hand and the active layer is full, takes no more
    /// requests: waits for the step, then freezes the full layer.
    fn hold_back_while_full(&mut self) {
        self.take_applied();
        self.apply_if_due();
        if self.frozen.is_some() && self.layer_full() {
            tracing::debug!("the pending layers are full: waiting for the apply step");
            if let Err(error) = self.finish_apply() {
                tracing::error!(%error, "the pending layers are full and cannot be applied");
            }
            self.apply_if_due();
        }
    }

    /// At a clean stop: applies everything pending, so that the store file
    /// is whole without its logs.
    fn apply_all_and_stop(&mut self) {
        let finished = self.finish_apply();
        let empty = self
            .active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if finished.is_ok() && !empty {
            self.freeze(self.durability.next_number() - 1);
            if let Err(error) = self.finish_apply() {
                tracing::error!(%error, "the last groups could not be applied to the store file; the write logs keep them for the next start");
            }
        } else if let Err(error) = finished {
            tracing::error!(%error, "the last groups could not be applied to the store file; the write logs keep them for the next start");
        }
        self.applier.stop();
    }

    /// After an I/O error redb refuses the handle: reopen the store and
    /// carry on (the pending layers still hold what the file lacks), or
    /// exit so that a supervisor restarts us.
    fn reopen_or_exit(&mut self) {
        match self.snapshots.reopen(REOPEN_GIVE_UP) {
            Ok(()) => {
                tracing::warn!("the store was reopened after an I/O error; writes go on");
            }
            Err(error) => {
                tracing::error!(%error, "the store cannot be reopened; exiting so that a supervisor restarts the daemon");
                std::process::exit(1);
            }
        }
    }
}

/// Decides every command of a group in `batch`; returns what the writer
/// needs to know of it.
fn decide(
    batch: &mut WriteBatch<'_>,
    group: &[Command],
    now: Millis,
    mark_feed: bool,
    settings: &WriterSettings,
) -> Result<Committed, StoreError> {
    if mark_feed {
        batch.mark_feed(now)?;
    }
    let mut answers = Vec::with_capacity(group.len());
    let mut retention_time = Duration::ZERO;
    for command in group {
        let started = Instant::now();
        answers.push(apply_work(batch, &command.work, now)?);
        if matches!(&command.work, Work::Purge(step) if step.trim_feed_before.is_some()) {
            retention_time += started.elapsed();
        }
    }
    batch.write_back()?;
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
    Ok(Committed {
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
