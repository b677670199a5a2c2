//! The write path as production shapes it: many runs alive at once, their
//! webhooks interleaved, on a store that already holds a million
//! processes.
//!
//! `cargo bench --bench write_path` builds (once, cached) a store of
//! PM_BENCH_PROCESSES finished processes (default 1,000,000; five events
//! each). Each round starts the daemon on a fresh copy and, for each size
//! of the active set (PM_BENCH_ACTIVE, default `64,1000,10000,100000`),
//! measures four phases of PM_BENCH_SECS seconds (default 5): the HTTP
//! floor and the daemon with single events at 64 connections, then the
//! floor and the daemon with batches of 100 at 16 connections; then a
//! storage floor of as long on a copy of the store of its own (fresh each
//! round, like the daemon's): redb alone, with the daemon's default
//! cache, each event one row of the history table under its run's key,
//! 1,600 events to a commit (what the writer groups from 16 batches of
//! 100; PM_BENCH_FLOOR_GROUP), and the commits durable as often as the
//! daemon's checkpoints make its own (PM_BENCH_FLOOR_ALL_DURABLE=1: every
//! one). Then a rules floor: the domain's rules and each event's history
//! row, in memory on one thread, nothing stored (`rules_floor`): the least
//! a writer of any design does. PM_BENCH_APPLY_FLOOR=N adds a floor for a
//! design not built: what a thread applying N events to a durable commit,
//! its rows in key order and each run's records and index entries once,
//! would write (`apply_floor`), in three history layouts (`Layout`).
//!
//! Each active run lives a realistic life of nine events (started; a task
//! starts, fails, is retried and succeeds; a second task starts, reports
//! progress and succeeds; the run succeeds), and a new run takes its place
//! as it ends, so the active set stays the same size. Every event is the
//! next of a run picked at random. The runs are dealt among the
//! connections (a run's events come in order, as its orchestrator sends
//! them), so with 64 active runs each connection drives one run: the
//! friendly shape that `benches/ingest.rs` measures.
//!
//! Reported per size, as the median of PM_BENCH_ROUNDS rounds (default 3)
//! with the range: single events as a ratio to the floor and their p99,
//! batches in events/s and as a ratio to the HTTP floor and to the storage
//! floor, and each figure at the largest size against the same at 64; how
//! busy the daemon's writer thread, its other threads and the load client
//! were in each of the daemon's phases, as a share of one core (from
//! `/proc`), which says whether the writer's one core is what bounds it;
//! what a batched event costs the machine in CPU, and the events/s the
//! machine's cores allow at that cost; with the apply floor, the least
//! that cost could be in the deferred-apply design (the load client and
//! the HTTP threads as measured, the rules floor, the apply floor); the
//! daemon's peak RSS. Each
//! round ends by killing the daemon (kill -9) during batched writes to
//! 10,000 active runs, at a moment that differs by round, and timing how
//! soon it is ready again on that store.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// The name of the daemon's writer thread (`processmanager::writer`).
const WRITER_THREAD: &str = "pm-writer";
const SINGLE_CONNECTIONS: usize = 64;
const BATCH_CONNECTIONS: usize = 16;
const BATCH: usize = 100;
/// Events in one run's life.
const LIFE: u64 = 9;

/// The n-th event of a finished process in the built store.
fn built_event(p: u64, n: u64) -> processmanager::domain::Event {
    let id = format!("old-{p}");
    let value = match n {
        0 => serde_json::json!({"type": "process.started", "process_id": id,
            "process_type": format!("type-{}", p % 7), "correlation_id": format!("tenant-{}/order-{p}", p % 100),
            "attributes": {"tenant": format!("t{}", p % 100)}}),
        1 => serde_json::json!({"type": "task.started", "process_id": id, "task_id": "extract"}),
        2 => serde_json::json!({"type": "task.succeeded", "process_id": id, "task_id": "extract"}),
        3 => {
            serde_json::json!({"type": "process.progress", "process_id": id, "progress": {"percent": 90.0}})
        }
        _ => serde_json::json!({"type": "process.succeeded", "process_id": id}),
    };
    let input: processmanager::domain::EventInput =
        serde_json::from_value(value).expect("valid event");
    input.validate(None).expect("valid event")
}

/// Event `step` of the life of run `run` (`generation` counts the runs
/// that held its slot before).
fn life_event(slot: u64, generation: u64, step: u64) -> serde_json::Value {
    let process = format!("run-{slot}-{generation}");
    let key = format!("{process}-{step}");
    let task = |kind: &str, task: &str| serde_json::json!({"event_id": key, "type": kind, "process_id": process, "task_id": task});
    match step {
        0 => serde_json::json!({"event_id": key, "type": "process.started", "process_id": process,
            "process_type": format!("type-{}", slot % 7), "correlation_id": format!("tenant-{}/order-{slot}-{generation}", slot % 100),
            "attributes": {"tenant": format!("t{}", slot % 100)}}),
        1 | 3 => task("task.started", "extract"),
        2 => {
            let mut failed = task("task.failed", "extract");
            failed["error"] = serde_json::json!({"code": "Timeout", "message": "source slow"});
            failed
        }
        4 => task("task.succeeded", "extract"),
        5 => task("task.started", "load"),
        6 => {
            let mut progress = task("task.progress", "load");
            progress["progress"] = serde_json::json!({"current": 500, "total": 1000});
            progress
        }
        7 => task("task.succeeded", "load"),
        _ => {
            serde_json::json!({"event_id": key, "type": "process.succeeded", "process_id": process})
        }
    }
}

/// One connection's runs: the slots dealt to it, each at some step of
/// some generation, and its own random numbers.
struct Runs {
    slots: Vec<(u64, u64, u64)>,
    state: u64,
}

impl Runs {
    fn next_event(&mut self) -> serde_json::Value {
        self.next_indexed().1
    }

    /// The next event and the index of the slot whose run sent it.
    fn next_indexed(&mut self) -> (usize, serde_json::Value) {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let index = (self.state % self.slots.len() as u64) as usize;
        let (slot, generation, step) = &mut self.slots[index];
        let event = life_event(*slot, *generation, *step);
        *step += 1;
        if *step == LIFE {
            *step = 0;
            *generation += 1;
        }
        (index, event)
    }
}

/// A plan over `active` runs dealt among `connections`, `per_request`
/// events to a request. `tag` keeps the runs of each phase apart.
fn interleaved_plan(
    active: u64,
    connections: usize,
    per_request: usize,
    tag: u64,
) -> Arc<dyn Fn(usize, u64) -> Planned + Send + Sync> {
    let runs: Vec<Mutex<Runs>> = (0..connections)
        .map(|conn| {
            let slots = (0..active)
                .filter(|slot| slot % connections as u64 == conn as u64)
                // Each phase's slots are new runs: the tag is in the slot.
                .map(|slot| (tag * 10_000_000 + slot, 0, 0))
                .collect();
            Mutex::new(Runs {
                slots,
                state: 0x9e37_79b9_7f4a_7c15 ^ (conn as u64 + 1) ^ tag << 32,
            })
        })
        .collect();
    Arc::new(move |conn, _n| {
        let mut runs = runs[conn].lock().expect("one connection's runs");
        let body = if per_request == 1 {
            runs.next_event().to_string()
        } else {
            let events: Vec<serde_json::Value> =
                (0..per_request).map(|_| runs.next_event()).collect();
            serde_json::Value::Array(events).to_string()
        };
        Planned {
            method: hyper::Method::POST,
            path: "/v1/events".into(),
            body: bytes::Bytes::from(body),
            events: per_request as u64,
        }
    })
}

/// The runs of one floor phase on a copy of the store: interleaved as the
/// load's are, each event with its run's ordinal and the next seq.
struct FloorRuns {
    runs: Runs,
    ordinals: Vec<u64>,
    next_ordinal: u64,
    seq: u64,
}

impl FloorRuns {
    /// `active` runs of the phase `tag`. Like the daemon, which numbers a
    /// new process past every one before it, runs (and seqs) are numbered
    /// past the store's and past those of the phases before on this copy
    /// (the tag tells them apart): a phase whose runs took ordinals an
    /// earlier phase had filled would insert into full pages, a shape the
    /// daemon never makes. Before this, the floor at 10,000 runs measured
    /// half of what it does alone when it ran after the smaller sizes.
    fn new(active: u64, tag: u64) -> FloorRuns {
        let first = (1 << 40) + (tag << 32);
        FloorRuns {
            runs: Runs {
                slots: (0..active)
                    .map(|slot| (tag * 10_000_000 + slot, 0, 0))
                    .collect(),
                state: 0x9e37_79b9_7f4a_7c15 ^ tag << 32,
            },
            ordinals: (0..active).map(|slot| first + slot).collect(),
            next_ordinal: first + active,
            seq: first,
        }
    }

    /// The next event: its run's ordinal (a new run takes the next), its
    /// seq, and the event.
    fn next(&mut self) -> (u64, u64, serde_json::Value) {
        let (slot, event) = self.runs.next_indexed();
        if event["type"] == "process.started" {
            self.ordinals[slot] = self.next_ordinal;
            self.next_ordinal += 1;
        }
        self.seq += 1;
        (self.ordinals[slot], self.seq, event)
    }
}

/// The floor's copy of the store, with the daemon's cache.
fn open_floor_copy(store: &std::path::Path) -> redb::Database {
    redb::Builder::new()
        .set_cache_size(processmanager::config::Config::default().store.cache_mib << 20)
        .open(store)
        .expect("the floor's copy of the store")
}

/// The storage floor for `active` interleaved runs: each event one row of
/// the store's own history table, under its run's key (a new run takes
/// the next ordinal, as in the daemon), `group` events to a commit, for
/// `duration`, with the daemon's default cache. The commits follow the
/// daemon's rule: without redb's durability, and durable every
/// `CHECKPOINT_GROUPS` commits or once `CHECKPOINT_BYTES` of rows are
/// written since the last durable one (the daemon counts its write log's
/// bytes; a row here is about a logged event's size). With `all_durable`,
/// every commit is durable. Nothing else is read or written: what redb
/// alone does with one row an event in this shape. Returns events/s.
fn storage_floor(
    store: &std::path::Path,
    active: u64,
    (group, all_durable): (u64, bool),
    tag: u64,
    duration: Duration,
) -> f64 {
    // The daemon before issue 30 made every 500th commit durable, or one
    // once 2 MiB were logged: the floor keeps that rhythm, so that its
    // figures compare across builds.
    const CHECKPOINT_GROUPS: u32 = 500;
    const CHECKPOINT_BYTES: u64 = 2 << 20;
    use processmanager::store::schema::{record_key, Kind, EVENTS};
    let db = open_floor_copy(store);
    // Commits and bytes since the last durable commit.
    let (mut commits, mut bytes) = (0u32, 0u64);
    let mut runs = FloorRuns::new(active, tag);
    let mut events = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let mut txn = db.begin_write().expect("txn");
        commits += 1;
        if all_durable || commits >= CHECKPOINT_GROUPS || bytes >= CHECKPOINT_BYTES {
            (commits, bytes) = (0, 0);
        } else {
            txn.set_durability(redb::Durability::None)
                .expect("durability");
        }
        {
            let mut table = txn.open_table(EVENTS).expect("table");
            for _ in 0..group {
                let (ordinal, seq, event) = runs.next();
                let key = record_key(ordinal, Kind::History, &seq.to_be_bytes());
                let row = event.to_string();
                bytes += row.len() as u64;
                table
                    .insert(key.as_slice(), row.as_bytes())
                    .expect("insert");
            }
        }
        txn.commit().expect("commit");
        events += group;
    }
    events as f64 / started.elapsed().as_secs_f64()
}

/// Where the apply floor puts each event's history row and idempotency key.
#[derive(Clone, Copy)]
enum Layout {
    /// Each row under its run's key, as the daemon does.
    ByRun,
    /// Each history row appended by seq, under its run's key only an empty
    /// entry that finds it.
    BySeq,
    /// A run's rows of one commit together in one row, and its keys in
    /// another: the fewest rows any layout could write.
    Chunked,
}

const LAYOUTS: [Layout; 3] = [Layout::ByRun, Layout::BySeq, Layout::Chunked];

/// The apply floor (`PM_BENCH_APPLY_FLOOR`, events to a commit): what the
/// second thread of the deferred-apply design (docs/benchmarks-diary.md)
/// would write for `active` interleaved runs, redb alone on the storage
/// floor's copy with the daemon's cache. Each commit takes
/// `per_commit` events at once, as that thread would take a second of
/// them, and writes each table in key order: for every event its history
/// row and idempotency key (`EVENTS`) and its feed item (`FEED`); for
/// every run the commit touches, its process record and one task record
/// (`RECORDS`), once; and the index entries its runs' starts and ends make
/// (`IndexEntries`), which every design writes at some point. Every
/// commit is durable, as that thread's must be
/// before the write log may drop what it covers. Only the transactions
/// are timed (sorting included, making the rows not): the most that
/// design's apply could take on this machine, without the writer, the
/// reads or the HTTP work that would share the two cores with it.
/// `layout` says where the history rows and idempotency keys go. Returns
/// events/s, by the clock and by the thread's CPU time (its durable
/// commits also wait for the disk).
fn apply_floor(
    store: &std::path::Path,
    active: u64,
    (per_commit, layout): (u64, Layout),
    tag: u64,
    duration: Duration,
) -> (f64, f64) {
    use processmanager::store::schema::{
        record_key, task_ordinal_bytes, Kind, EVENTS, FEED, RECORDS,
    };
    let db = open_floor_copy(store);
    let mut runs = FloorRuns::new(active, tag);
    // About the sizes the daemon stores: an idempotency record, a feed
    // item, a process record and a task record.
    let (dedup_row, feed_row) = ([7u8; 40], [7u8; 20]);
    let (process_row, task_row) = ([7u8; 300], [7u8; 150]);
    let mut events = 0u64;
    let (mut timed, mut cpu) = (Duration::ZERO, 0.0);
    while timed < duration {
        let mut history = Vec::with_capacity(per_commit as usize);
        let mut dedup = Vec::with_capacity(per_commit as usize);
        let mut touched = Vec::with_capacity(per_commit as usize);
        let mut index = IndexEntries::default();
        let first_seq = runs.seq + 1;
        for _ in 0..per_commit {
            let (ordinal, seq, event) = runs.next();
            index.note(ordinal, &event);
            history.push((
                record_key(ordinal, Kind::History, &seq.to_be_bytes()),
                event.to_string(),
            ));
            dedup.push(record_key(
                ordinal,
                Kind::Dedup,
                format!("e-{seq}").as_bytes(),
            ));
            touched.push(ordinal);
        }
        let (started, cpu_before) = (Instant::now(), thread_cpu_seconds());
        history.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        dedup.sort_unstable();
        touched.sort_unstable();
        touched.dedup();
        let txn = db.begin_write().expect("txn");
        {
            let mut table = txn.open_table(EVENTS).expect("table");
            let mut feed = txn.open_table(FEED).expect("table");
            match layout {
                Layout::ByRun => {
                    for (key, row) in &history {
                        table
                            .insert(key.as_slice(), row.as_bytes())
                            .expect("insert");
                    }
                    for seq in first_seq..=runs.seq {
                        feed.insert(seq, feed_row.as_slice()).expect("insert");
                    }
                }
                Layout::BySeq => {
                    // The row goes to the feed, keyed by seq (appended);
                    // under the run's key, only an empty entry that finds it.
                    for (key, _) in &history {
                        table.insert(key.as_slice(), [].as_slice()).expect("insert");
                    }
                    history
                        .sort_unstable_by(|a, b| a.0[a.0.len() - 8..].cmp(&b.0[b.0.len() - 8..]));
                    for (seq, (_, row)) in (first_seq..=runs.seq).zip(&history) {
                        feed.insert(seq, row.as_bytes()).expect("insert");
                    }
                }
                Layout::Chunked => {
                    // One row per run and commit, keyed by its first event's
                    // key, holding the run's rows of the commit one after
                    // another; the same for its idempotency keys.
                    for chunk in history.chunk_by(|a, b| a.0[..8] == b.0[..8]) {
                        let rows: String = chunk.iter().map(|(_, row)| row.as_str()).collect();
                        table
                            .insert(chunk[0].0.as_slice(), rows.as_bytes())
                            .expect("insert");
                    }
                    for chunk in dedup.chunk_by(|a, b| a[..8] == b[..8]) {
                        let rows = dedup_row.repeat(chunk.len());
                        table
                            .insert(chunk[0].as_slice(), rows.as_slice())
                            .expect("insert");
                    }
                    dedup.clear();
                    for seq in first_seq..=runs.seq {
                        feed.insert(seq, feed_row.as_slice()).expect("insert");
                    }
                }
            }
            for key in &dedup {
                table
                    .insert(key.as_slice(), dedup_row.as_slice())
                    .expect("insert");
            }
            let mut records = txn.open_table(RECORDS).expect("table");
            for &ordinal in &touched {
                records
                    .insert(
                        record_key(ordinal, Kind::Process, &[]).as_slice(),
                        process_row.as_slice(),
                    )
                    .expect("insert");
                records
                    .insert(
                        record_key(ordinal, Kind::Task, &task_ordinal_bytes(0)).as_slice(),
                        task_row.as_slice(),
                    )
                    .expect("insert");
            }
            index.write(&txn);
        }
        txn.commit().expect("commit");
        timed += started.elapsed();
        cpu += thread_cpu_seconds() - cpu_before;
        events += per_commit;
    }
    (events as f64 / timed.as_secs_f64(), events as f64 / cpu)
}

/// The index entries the runs of one apply-floor commit make, as the
/// daemon's writer makes them with its default configuration: a run that
/// starts gets its id, its creation time, its status, its type with its
/// status, its correlation id and that id's prefixes; a run that ends
/// moves its status entries and gets a finished entry. A run that starts
/// and ends in one commit gets its final entries only, as the deferred
/// design would write them.
#[derive(Default)]
struct IndexEntries {
    /// Ordinal, process id, type, correlation id.
    started: Vec<(u64, String, String, String)>,
    /// The ordinals of `started`.
    started_now: HashSet<u64>,
    /// Ordinal, type.
    ended: Vec<(u64, String)>,
}

impl IndexEntries {
    fn note(&mut self, ordinal: u64, event: &serde_json::Value) {
        let text = |field: &str| event[field].as_str().unwrap_or_default().to_owned();
        match event["type"].as_str() {
            Some("process.started") => {
                self.started_now.insert(ordinal);
                self.started.push((
                    ordinal,
                    text("process_id"),
                    text("process_type"),
                    text("correlation_id"),
                ));
            }
            Some("process.succeeded") => {
                // Its type is its slot's, as `life_event` gives it; the
                // slot is in its id, `run-{slot}-{generation}`.
                let id = text("process_id");
                let slot: u64 = id
                    .split('-')
                    .nth(1)
                    .and_then(|slot| slot.parse().ok())
                    .expect("a run's id holds its slot");
                self.ended.push((ordinal, format!("type-{}", slot % 7)));
            }
            _ => {}
        }
    }

    /// Writes the entries, table by table: the process ids in their order,
    /// the others run by run in the order of the runs' ordinals.
    fn write(mut self, txn: &redb::WriteTransaction) {
        use processmanager::domain::Status;
        use processmanager::store::schema::{
            correlation_prefixes, BY_CORRELATION, BY_CORRELATION_PREFIX, BY_CREATED, BY_FINISHED,
            BY_STATUS, BY_TYPE, PROCESS_IDS,
        };
        let now = processmanager::writer::now_millis();
        let (running, succeeded) = (Status::Running.code(), Status::Succeeded.code());
        let ended: HashSet<u64> = self.ended.iter().map(|ended| ended.0).collect();
        let status_of = |ordinal: u64| {
            if ended.contains(&ordinal) {
                succeeded
            } else {
                running
            }
        };
        self.started.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        let mut ids = txn.open_table(PROCESS_IDS).expect("table");
        for (ordinal, id, _, _) in &self.started {
            ids.insert(id.as_str(), ordinal).expect("insert");
        }
        self.started.sort_unstable_by_key(|started| started.0);
        let mut created = txn.open_table(BY_CREATED).expect("table");
        let mut status = txn.open_table(BY_STATUS).expect("table");
        for (ordinal, _, _, _) in &self.started {
            created.insert((now, *ordinal), ()).expect("insert");
            status
                .insert((status_of(*ordinal), *ordinal), ())
                .expect("insert");
        }
        self.ended.sort_unstable_by_key(|ended| ended.0);
        let mut finished = txn.open_table(BY_FINISHED).expect("table");
        for (ordinal, _) in &self.ended {
            if !self.started_now.contains(ordinal) {
                status.remove((running, *ordinal)).expect("remove");
                status.insert((succeeded, *ordinal), ()).expect("insert");
            }
            finished
                .insert((succeeded, now, *ordinal), ())
                .expect("insert");
        }
        let mut types = txn.open_table(BY_TYPE).expect("table");
        for (ordinal, _, kind, _) in &self.started {
            types
                .insert((kind.as_str(), status_of(*ordinal), *ordinal), ())
                .expect("insert");
        }
        for (ordinal, kind) in &self.ended {
            if !self.started_now.contains(ordinal) {
                types
                    .remove((kind.as_str(), running, *ordinal))
                    .expect("remove");
                types
                    .insert((kind.as_str(), succeeded, *ordinal), ())
                    .expect("insert");
            }
        }
        let mut correlation = txn.open_table(BY_CORRELATION).expect("table");
        let mut prefixes = txn.open_table(BY_CORRELATION_PREFIX).expect("table");
        for (ordinal, _, _, id) in &self.started {
            correlation
                .insert((id.as_str(), *ordinal), ())
                .expect("insert");
            for (prefix, rest) in correlation_prefixes(id) {
                prefixes.insert((prefix, *ordinal), rest).expect("insert");
            }
        }
    }
}

/// The rules floor: the least the writer of any design does for an event
/// on one thread, all in memory. For `active` interleaved runs: find the
/// event's run, look up and keep its idempotency key, apply the domain's
/// rules (`domain::apply`) to the run's process and task, and encode its
/// history row. No store, no write log, no indexes, no records written
/// back: what remains of the writer's work once everything else is
/// deferred. Events are parsed before the clock runs. Returns events/s.
fn rules_floor(active: u64, tag: u64, duration: Duration) -> f64 {
    use processmanager::domain::{self, Event, Process, Task};
    use processmanager::domain::{Source, StoredResult};
    use processmanager::store::schema::HistoryRecordRef;
    use std::collections::HashMap;
    #[derive(Default)]
    struct Run {
        process: Option<Process>,
        tasks: HashMap<String, Task>,
        keys: HashSet<String>,
    }
    let mut floor_runs = FloorRuns::new(active, tag);
    let mut runs: HashMap<String, Run> = HashMap::new();
    let (mut events, mut timed, mut bytes) = (0u64, Duration::ZERO, 0usize);
    while timed < duration {
        let chunk: Vec<(u64, Event)> = (0..10_000)
            .map(|_| {
                let (_, seq, value) = floor_runs.next();
                let input: domain::EventInput = serde_json::from_value(value).expect("valid event");
                (seq, input.validate(None).expect("valid event"))
            })
            .collect();
        let started = Instant::now();
        for (seq, event) in &chunk {
            let now = 1_764_000_000_000 + *seq as i64;
            let run = runs.entry(event.process_id.clone()).or_default();
            if let Some(key) = &event.event_id {
                if !run.keys.insert(key.clone()) {
                    continue;
                }
            }
            let process = run
                .process
                .get_or_insert_with(|| Process::new(event.process_id.clone(), now));
            let (task, task_is_new) = match &event.task_id {
                Some(id) => {
                    let is_new = !run.tasks.contains_key(id);
                    let task = run
                        .tasks
                        .entry(id.clone())
                        .or_insert_with(|| Task::new(id.clone(), now));
                    (Some(task), is_new)
                }
                None => (None, false),
            };
            let outcome = domain::apply(process, task, task_is_new, event, now);
            let result = match outcome {
                domain::Outcome::Accepted => StoredResult::Accepted,
                _ => StoredResult::Stale,
            };
            bytes += processmanager::codec::encode(&HistoryRecordRef {
                seq: *seq,
                result,
                received_at: now,
                event,
                source: Source::Sender,
            })
            .len();
            if event.kind == domain::EventType::ProcessSucceeded {
                // The run's life is over; its slot's next run has an id of its own.
                runs.remove(&event.process_id);
            }
        }
        timed += started.elapsed();
        events += chunk.len() as u64;
    }
    assert!(bytes > 0, "history rows encoded");
    events as f64 / timed.as_secs_f64()
}

/// One size's figures in one round.
struct Figures {
    single_ratio: f64,
    single_p99: f64,
    batch_events: f64,
    batch_ratio: f64,
    /// The share of a core the writer thread, the daemon's other threads
    /// and the load client were busy: in the single-event phase, and in
    /// the batch one.
    cpu: [Busy; 2],
    /// Events/s in the single-event phase, and in the batch one.
    events: [f64; 2],
    /// The rules floor's events/s (`rules_floor`).
    rules: f64,
    /// The storage floor's events/s (`storage_floor`).
    storage: f64,
    /// The apply floor's events/s (`apply_floor`), when asked for, in each
    /// of `LAYOUTS`: by the clock, and by its CPU time.
    apply: Option<[(f64, f64); 3]>,
}

fn main() {
    run_role_if_asked();
    let secs = phase_secs_or(5);
    let rounds = env_number("PM_BENCH_ROUNDS", 3).max(1) as usize;
    let processes = env_number("PM_BENCH_PROCESSES", 1_000_000);
    let sizes: Vec<u64> = std::env::var("PM_BENCH_ACTIVE")
        .unwrap_or_else(|_| "64,1000,10000,100000".into())
        .split(',')
        .map(|size| size.trim().parse().expect("PM_BENCH_ACTIVE: numbers"))
        .collect();
    println!(
        "write path on {}; {rounds} rounds of {} s phases; active runs {sizes:?} on a store of {processes} processes",
        machine(),
        secs.as_secs()
    );
    let built = build_cached_store("write-path", processes, 5, built_event);
    let floor = Server::floor();
    // The storage floor's commits: as many events as the writer groups
    // when 16 connections each send a batch of 100, and whether each is
    // durable.
    let floor_commits = (
        env_number("PM_BENCH_FLOOR_GROUP", (BATCH_CONNECTIONS * BATCH) as u64),
        std::env::var("PM_BENCH_FLOOR_ALL_DURABLE").as_deref() == Ok("1"),
    );
    // The deferred-apply design's floor, when asked for: events to one of
    // its commits.
    let apply_per_commit = std::env::var("PM_BENCH_APPLY_FLOOR")
        .ok()
        .map(|per_commit| {
            per_commit
                .parse::<u64>()
                .expect("PM_BENCH_APPLY_FLOOR: a number")
        });
    let mut figures: Vec<Vec<Figures>> = (0..sizes.len()).map(|_| Vec::new()).collect();
    let mut peak_rss = Vec::new();
    let mut recovery = Vec::new();
    let mut tag = 0;
    for round in 1..=rounds {
        let dir = copy_store(&built);
        // The storage floor writes into a copy of its own, which grows
        // through the round as the daemon's does.
        let storage_copy = copy_store(&built);
        let storage_path = processmanager::store::store_path(storage_copy.path());
        let daemon = Server::daemon(dir.path());
        for (index, &active) in sizes.iter().enumerate() {
            // Each phase on runs of its own.
            let mut phase = |addr, connections, per_request| {
                tag += 1;
                run_load(
                    addr,
                    connections,
                    secs,
                    interleaved_plan(active, connections, per_request, tag),
                )
            };
            // The daemon's phases, with how busy its threads were.
            let measured = |phase: &mut dyn FnMut() -> LoadResult| {
                let (before, started) = (CpuUsed::of(daemon.pid(), WRITER_THREAD), Instant::now());
                let result = phase();
                let cpu =
                    CpuUsed::of(daemon.pid(), WRITER_THREAD).busy_since(before, started.elapsed());
                (result, cpu)
            };
            let single_floor = phase(floor.addr, SINGLE_CONNECTIONS, 1);
            let (single, single_cpu) = measured(&mut || phase(daemon.addr, SINGLE_CONNECTIONS, 1));
            let batch_floor = phase(floor.addr, BATCH_CONNECTIONS, BATCH);
            let (batch, batch_cpu) = measured(&mut || phase(daemon.addr, BATCH_CONNECTIONS, BATCH));
            tag += 1;
            let storage = storage_floor(&storage_path, active, floor_commits, tag, secs);
            tag += 1;
            let rules = rules_floor(active, tag, secs);
            let apply = apply_per_commit.map(|per_commit| {
                LAYOUTS.map(|layout| {
                    tag += 1;
                    apply_floor(&storage_path, active, (per_commit, layout), tag, secs)
                })
            });
            assert_eq!(
                single.errors + batch.errors,
                0,
                "the daemon refused requests"
            );
            let f = Figures {
                single_ratio: single.events_per_sec() / single_floor.events_per_sec(),
                single_p99: single.percentile_ms(0.99),
                batch_events: batch.events_per_sec(),
                batch_ratio: batch.events_per_sec() / batch_floor.events_per_sec(),
                cpu: [single_cpu, batch_cpu],
                events: [single.events_per_sec(), batch.events_per_sec()],
                rules,
                storage,
                apply,
            };
            println!(
                "round {round}, {active:>6} active: single {:>7.0} ev/s ({:.3}x floor {:.0}), p99 {:>6.2} ms; batches {:>7.0} ev/s ({:.3}x floor {:.0}), p99 {:>6.2} ms; storage floor {:>7.0} ev/s",
                single.events_per_sec(),
                f.single_ratio,
                single_floor.events_per_sec(),
                f.single_p99,
                f.batch_events,
                f.batch_ratio,
                batch_floor.events_per_sec(),
                batch.percentile_ms(0.99),
                storage,
            );
            println!(
                "round {round}, {active:>6} active: writer thread busy {:.0}% of a core with single events, {:.0}% with batches; the daemon's other threads {:.0}% and {:.0}%; the load client {:.0}% and {:.0}%",
                single_cpu.thread * 100.0,
                batch_cpu.thread * 100.0,
                single_cpu.rest * 100.0,
                batch_cpu.rest * 100.0,
                single_cpu.client * 100.0,
                batch_cpu.client * 100.0,
            );
            println!("round {round}, {active:>6} active: rules floor {rules:>7.0} ev/s");
            if let Some([by_run, by_seq, chunked]) = apply {
                println!(
                    "round {round}, {active:>6} active: apply floor {:>7.0} ev/s ({:.2}x the storage floor; {:.0} ev/s of its CPU), history by seq {:>7.0} ev/s ({:.0}), in chunks {:>7.0} ev/s ({:.0})",
                    by_run.0,
                    by_run.0 / storage,
                    by_run.1,
                    by_seq.0,
                    by_seq.1,
                    chunked.0,
                    chunked.1
                );
            }
            figures[index].push(f);
        }
        // Killed during batched writes to 10,000 active runs, at a moment
        // that differs by round: how soon is it ready again, the groups
        // logged since its last durable commit applied again.
        tag += 1;
        let writes = std::thread::spawn({
            let (addr, plan) = (
                daemon.addr,
                interleaved_plan(10_000, BATCH_CONNECTIONS, BATCH, tag),
            );
            move || run_load(addr, BATCH_CONNECTIONS, Duration::from_secs(5), plan)
        });
        std::thread::sleep(Duration::from_millis(1_000 + 1_300 * round as u64 % 3_000));
        peak_rss.push(mib(daemon.peak_rss_bytes()));
        daemon.kill9();
        let _ = writes.join();
        let spawned = Instant::now();
        let daemon = Server::daemon(dir.path());
        let ready = wait_ready(daemon.addr, spawned).as_secs_f64();
        println!("round {round}, ready {ready:.2} s after kill -9 during batched writes");
        recovery.push(ready);
        daemon.stop();
    }
    println!("\nresults (median of {rounds} rounds, lowest and highest in brackets)");
    println!("| active runs | single events / floor | single p99 | batches of 100, events/s | batches / floor | storage floor, events/s | batches / storage floor |");
    println!("|---:|---|---|---|---|---|---|");
    for (size, runs) in sizes.iter().zip(&figures) {
        println!(
            "| {size} | {}x | {} ms | {} | {}x | {} | {}x |",
            Spread::of(runs.iter().map(|f| f.single_ratio)).show(3),
            Spread::of(runs.iter().map(|f| f.single_p99)).show(2),
            Spread::of(runs.iter().map(|f| f.batch_events)).show(0),
            Spread::of(runs.iter().map(|f| f.batch_ratio)).show(3),
            Spread::of(runs.iter().map(|f| f.storage)).show(0),
            Spread::of(runs.iter().map(|f| f.batch_events / f.storage)).show(3),
        );
    }
    println!(
        "\nhow busy the daemon was, in % of one core (this machine: {})",
        machine()
    );
    println!("| active runs | writer thread, single events | other threads, single events | load client, single events | writer thread, batches | other threads, batches | load client, batches |");
    println!("|---:|---|---|---|---|---|---|");
    for (size, runs) in sizes.iter().zip(&figures) {
        let busy = |phase: usize, part: fn(&Busy) -> f64| {
            Spread::of(runs.iter().map(|f| 100.0 * part(&f.cpu[phase]))).show(0)
        };
        println!(
            "| {size} | {} | {} | {} | {} | {} | {} |",
            busy(0, |b| b.thread),
            busy(0, |b| b.rest),
            busy(0, |b| b.client),
            busy(1, |b| b.thread),
            busy(1, |b| b.rest),
            busy(1, |b| b.client)
        );
    }
    // What one event costs the machine, whoever spends it: what bounds
    // events/s once every core is busy, whatever the design of the writer.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\nCPU per batched event, in µs (medians), and the events/s this machine's {cores} cores allow at that cost"
    );
    println!("| active runs | writer thread | other threads | load client | all | events/s the cores allow | rules floor |");
    println!("|---:|---|---|---|---|---|---|");
    for (size, runs) in sizes.iter().zip(&figures) {
        let micros = |part: fn(&Busy) -> f64| {
            Spread::of(runs.iter().map(|f| 1e6 * part(&f.cpu[1]) / f.events[1]))
        };
        let all = micros(|b| b.thread + b.rest + b.client);
        println!(
            "| {size} | {} | {} | {} | {} | {:.0} | {} |",
            micros(|b| b.thread).show(1),
            micros(|b| b.rest).show(1),
            micros(|b| b.client).show(1),
            all.show(1),
            cores as f64 * 1e6 / all.median,
            Spread::of(runs.iter().map(|f| 1e6 / f.rules)).show(2),
        );
    }
    // The deferred-apply design keeps the load client, the HTTP threads
    // and the rules, and adds the apply: the least it could spend.
    if apply_per_commit.is_some() {
        println!("\nthe deferred-apply design: its apply floor in events/s, by history layout, and the CPU it takes an event; the least a batched event could cost the machine in CPU (the load client and the daemon's other threads as measured, the rules floor, the apply floor's CPU), and the events/s that allows on {cores} cores");
        println!("| active runs | layout | apply floor, events/s | apply floor, CPU per event | least CPU per event | events/s at most |");
        println!("|---:|---|---|---|---|---|");
        for (size, runs) in sizes.iter().zip(&figures) {
            for (index, name) in ["under the run's key", "appended by seq", "in chunks"]
                .into_iter()
                .enumerate()
            {
                let apply = |f: &Figures| f.apply.expect("the apply floor was asked for")[index];
                let least = Spread::of(runs.iter().map(|f| {
                    1e6 * (f.cpu[1].client + f.cpu[1].rest) / f.events[1]
                        + 1e6 / f.rules
                        + 1e6 / apply(f).1
                }));
                println!(
                    "| {size} | {name} | {} | {} µs | {} µs | {:.0} |",
                    Spread::of(runs.iter().map(|f| apply(f).0)).show(0),
                    Spread::of(runs.iter().map(|f| 1e6 / apply(f).1)).show(1),
                    least.show(1),
                    cores as f64 * 1e6 / least.median,
                );
            }
        }
    }
    if sizes.len() > 1 {
        let (first, last) = (&figures[0], &figures[sizes.len() - 1]);
        let against = |value: &dyn Fn(&Figures) -> f64| {
            Spread::of(first.iter().zip(last).map(|(a, b)| value(b) / value(a))).show(3)
        };
        println!(
            "{} active against {}: single {}x, batches {}x (target: at least 0.8)",
            sizes[sizes.len() - 1],
            sizes[0],
            against(&|f| f.single_ratio),
            against(&|f| f.batch_events),
        );
    }
    println!(
        "daemon peak RSS: {} MiB (target: under 160)",
        Spread::of(peak_rss).show(0)
    );
    let slowest = recovery.iter().cloned().fold(0.0, f64::max);
    println!(
        "ready after kill -9 during batched writes: {} s, slowest {slowest:.2} s (target: within 1 s)",
        Spread::of(recovery).show(2)
    );
}
