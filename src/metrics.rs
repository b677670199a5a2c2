//! What the daemon counts and measures, exposed at `GET /metrics` in the
//! Prometheus text format (OpenMetrics when the scraper asks for it).
//!
//! Counters and histograms are moved where things happen (the HTTP layer,
//! the writer); gauges that describe the store (processes by status, file
//! and disk sizes, queue depth) are read when scraped, so that nothing on
//! the write path keeps them. No label ever carries a process or task id:
//! every label has a bounded set of values (process types are capped by
//! `metrics.max_process_types`, the rest count as `other`).

use crate::domain::EventOutcome;
use crate::domain::{EventType, Status};
use prometheus_client::encoding::{prometheus_text, text as openmetrics_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `Content-Type` of each exposition format.
pub const PROMETHEUS_TEXT: &str = prometheus_text::CONTENT_TYPE;
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label value of process types past `metrics.max_process_types`.
const OTHER_PROCESS_TYPE: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    r#type: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    process_type: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why the daemon turned a client away, or cut it off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A new connection found the listener full of busy ones.
    ConnectionLimit,
    /// An idle connection was closed to make room for a new one.
    IdleConnectionClosed,
    /// Request headers did not arrive in time.
    HeaderTimeout,
    /// Request headers larger than hyper takes (431).
    HeaderTooLarge,
    /// A request body did not arrive in time (408).
    BodyTimeout,
    /// A body or batch over its limit (413).
    PayloadTooLarge,
    /// The bodies in flight hold the memory budget (429).
    OverBudget,
    /// The writer's queue is full (429).
    QueueFull,
}

impl Rejection {
    const ALL: [Rejection; 8] = [
        Rejection::ConnectionLimit,
        Rejection::IdleConnectionClosed,
        Rejection::HeaderTimeout,
        Rejection::HeaderTooLarge,
        Rejection::BodyTimeout,
        Rejection::PayloadTooLarge,
        Rejection::OverBudget,
        Rejection::QueueFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::ConnectionLimit => "connection_limit",
            Rejection::IdleConnectionClosed => "idle_connection_closed",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::PayloadTooLarge => "payload_too_large",
            Rejection::OverBudget => "over_budget",
            Rejection::QueueFull => "queue_full",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Rejection::ConnectionLimit => "refused a connection: every connection is serving a request (http.max_connections)",
            Rejection::IdleConnectionClosed => "closed an idle connection to make room for a new one (http.max_connections)",
            Rejection::HeaderTimeout => "closed a connection whose request headers did not arrive in time (http.header_read_timeout_secs)",
            Rejection::HeaderTooLarge => "refused request headers too large (431)",
            Rejection::BodyTimeout => "a request body did not arrive in time: 408 (http.body_read_timeout_secs)",
            Rejection::PayloadTooLarge => "a body or batch over its limit: 413 (ingest.max_body_bytes, ingest.max_batch)",
            Rejection::OverBudget => "request bodies in flight hold the memory budget: 429 (ingest.max_inflight_bytes)",
            Rejection::QueueFull => "the writer's queue is full: 429 (ingest.queue_capacity)",
        }
    }

    fn index(self) -> usize {
        Rejection::ALL
            .iter()
            .position(|reason| *reason == self)
            .unwrap_or(0)
    }
}

/// A warning per kind of rejection at most this often; the ones in
/// between are counted in the next.
const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// When each kind of rejection was last logged, and how many since.
#[derive(Default)]
struct RejectionLog {
    last: [Option<Instant>; 8],
    unlogged: [u64; 8],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// What `/metrics` reads from the store and the disk when it is scraped.
pub struct StoreReading {
    pub processes_by_status: Vec<(Status, u64)>,
    pub store_bytes: u64,
    pub disk_free_bytes: Option<u64>,
    pub queue_depth: usize,
    /// Of `ingest.max_inflight_bytes`, what request bodies hold now.
    pub inflight_body_bytes: u64,
    pub processes_stalled: u64,
}

/// Every metric of the contract, registered once.
pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    commit_seconds: Histogram,
    commit_events: Histogram,
    apply_seconds: Histogram,
    applied_keys: Counter,
    queue_depth: Gauge,
    processes: Family<StatusLabels, Gauge>,
    processes_stalled: Gauge,
    process_seconds: Family<FinishedLabels, Histogram>,
    store_bytes: Gauge,
    disk_free_bytes: Gauge,
    /// Moved by the streams themselves as they open and close.
    feed_streams: Gauge,
    /// Requests of `/await` holding on, moved by the requests themselves.
    await_waiting: Gauge,
    inflight_body_bytes: Gauge,
    /// The process types that have a label of their own, at most
    /// `max_process_types`.
    process_types: Mutex<HashSet<String>>,
    max_process_types: usize,
    rejections: Family<ReasonLabels, Counter>,
    rejection_log: Mutex<RejectionLog>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 100 µs to about 26 s.
    exponential_buckets(0.0001, 2.0, 19)
}

impl Metrics {
    pub fn new(max_process_types: usize) -> Metrics {
        let mut registry = Registry::with_prefix("pm");
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Events posted, by type and by what became of them (accepted, stale, duplicate, conflict, invalid, key_reused, over_limit)",
            events.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status code",
            requests.clone(),
        );
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its answer's headers, by route",
            Unit::Seconds,
            request_seconds.clone(),
        );
        let commit_seconds = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "commit_duration",
            "Time to decide one group of writes and make it durable in the write log, its sync included",
            Unit::Seconds,
            commit_seconds.clone(),
        );
        let apply_seconds = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "apply_duration",
            "Time of one apply step: pending groups written into the store file, durably",
            Unit::Seconds,
            apply_seconds.clone(),
        );
        let applied_keys = Counter::default();
        registry.register(
            "applied_keys",
            "Table entries written (or removed) in the store file by apply steps, each key once a step",
            applied_keys.clone(),
        );
        let commit_events = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        registry.register(
            "commit_events",
            "Events (and deletions) applied by one commit",
            commit_events.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "writer_queue_depth",
            "Requests waiting for the writer",
            queue_depth.clone(),
        );
        let processes = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "processes",
            "Processes in the store, by status",
            processes.clone(),
        );
        let processes_stalled = Gauge::default();
        registry.register(
            "processes_stalled",
            "Processes that are stalled (no event within their heartbeat timeout)",
            processes_stalled.clone(),
        );
        let process_seconds = Family::<FinishedLabels, Histogram>::new_with_constructor(|| {
            // 1 s to about 48 days.
            Histogram::new(exponential_buckets(1.0, 4.0, 13))
        });
        registry.register_with_unit(
            "process_duration",
            "Duration of the processes that finished, from start (or creation) to their terminal event, by process type and status",
            Unit::Seconds,
            process_seconds.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register_with_unit(
            "store",
            "Size of the store file",
            Unit::Bytes,
            store_bytes.clone(),
        );
        let disk_free_bytes = Gauge::default();
        registry.register_with_unit(
            "disk_free",
            "Free space on the store's disk, for this user",
            Unit::Bytes,
            disk_free_bytes.clone(),
        );
        let feed_streams = Gauge::default();
        registry.register(
            "feed_streams",
            "Change-feed streams open",
            feed_streams.clone(),
        );
        let await_waiting = Gauge::default();
        registry.register(
            "await_waiting",
            "Requests of /v1/processes/{id}/await waiting for their process to end",
            await_waiting.clone(),
        );
        let rejections = Family::<ReasonLabels, Counter>::default();
        for reason in Rejection::ALL {
            // Every reason from the start, zeros included: an alert on a
            // rate needs the series before the first rejection.
            let _ = rejections.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        registry.register(
            "rejections",
            "Clients turned away or cut off, by reason",
            rejections.clone(),
        );
        let inflight_body_bytes = Gauge::default();
        registry.register_with_unit(
            "ingest_inflight",
            "Of ingest.max_inflight_bytes, what request bodies hold now (each counted four times its size)",
            Unit::Bytes,
            inflight_body_bytes.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The running build, as labels; always 1",
            build_info,
        );
        Metrics {
            registry,
            events,
            requests,
            request_seconds,
            commit_seconds,
            commit_events,
            apply_seconds,
            applied_keys,
            queue_depth,
            processes,
            processes_stalled,
            process_seconds,
            store_bytes,
            disk_free_bytes,
            feed_streams,
            await_waiting,
            inflight_body_bytes,
            process_types: Mutex::new(HashSet::new()),
            max_process_types,
            rejections,
            rejection_log: Mutex::new(RejectionLog::default()),
        }
    }

    /// A client turned away or cut off: counted, and logged as a warning
    /// at most once per kind every ten seconds.
    pub fn rejected(&self, reason: Rejection) {
        self.rejections
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
        let mut log = self
            .rejection_log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let slot = reason.index();
        let due = log.last[slot].is_none_or(|last| last.elapsed() >= REJECTION_LOG_INTERVAL);
        if due {
            let also = std::mem::take(&mut log.unlogged[slot]);
            log.last[slot] = Some(Instant::now());
            drop(log);
            tracing::warn!(
                reason = reason.as_str(),
                more_since_last_warning = also,
                "{}",
                reason.what()
            );
        } else {
            log.unlogged[slot] += 1;
        }
    }

    /// One HTTP request answered.
    pub fn request(&self, route: &'static str, code: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route, code })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    pub fn feed_stream_opened(&self) {
        self.feed_streams.inc();
    }

    pub fn feed_stream_closed(&self) {
        self.feed_streams.dec();
    }

    /// Counts one waiter of `/await` until the guard is dropped.
    pub fn await_waiting(&self) -> impl Drop + '_ {
        struct Waiting<'a>(&'a Gauge);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.await_waiting.inc();
        Waiting(&self.await_waiting)
    }

    /// One group of writes committed.
    pub fn commit(&self, events: usize, elapsed: Duration) {
        self.commit_seconds.observe(elapsed.as_secs_f64());
        self.commit_events.observe(events as f64);
    }

    /// One apply step done: `keys` written into the store file.
    pub fn applied(&self, keys: u64, elapsed: Duration) {
        self.apply_seconds.observe(elapsed.as_secs_f64());
        self.applied_keys.inc_by(keys);
    }

    /// An event refused before it reached the writer (422, or 400 in a batch).
    pub fn event_invalid(&self, kind: Option<EventType>) {
        self.count_event(kind.map_or("unknown", EventType::as_str), "invalid");
    }

    /// What the writer decided for an event that was answered.
    pub fn event_outcome(&self, kind: EventType, outcome: &EventOutcome) {
        let result = match outcome {
            EventOutcome::Stored { result, .. } => result.as_str(),
            EventOutcome::Duplicate { .. } => "duplicate",
            EventOutcome::Conflict { .. } => "conflict",
            EventOutcome::KeyReused { .. } => "key_reused",
            EventOutcome::OverLimit(_) => "over_limit",
        };
        self.count_event(kind.as_str(), result);
        if let EventOutcome::Stored {
            finished: Some(finished),
            process_status,
            ..
        } = outcome
        {
            if let Some(duration_ms) = finished.duration_ms {
                let process_type = self.process_type_label(finished.process_type.as_deref());
                self.process_seconds
                    .get_or_create(&FinishedLabels {
                        process_type,
                        status: process_status.as_str(),
                    })
                    .observe(duration_ms.max(0) as f64 / 1000.0);
            }
        }
    }

    fn count_event(&self, kind: &'static str, result: &'static str) {
        self.events
            .get_or_create(&EventLabels {
                r#type: kind,
                result,
            })
            .inc();
    }

    /// The label of a process type: its own name for the first
    /// `max_process_types` types seen, `other` after.
    fn process_type_label(&self, process_type: Option<&str>) -> String {
        let name = process_type.unwrap_or("");
        let mut known = self
            .process_types
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if known.contains(name) || known.len() < self.max_process_types && known.insert(name.into())
        {
            name.to_owned()
        } else {
            OTHER_PROCESS_TYPE.to_owned()
        }
    }

    /// The exposition, in OpenMetrics text when `openmetrics`, else in the
    /// Prometheus text format 0.0.4.
    pub fn render(&self, reading: &StoreReading, openmetrics: bool) -> String {
        for (status, count) in &reading.processes_by_status {
            self.processes
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        self.store_bytes
            .set(i64::try_from(reading.store_bytes).unwrap_or(i64::MAX));
        if let Some(free) = reading.disk_free_bytes {
            self.disk_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        self.queue_depth
            .set(i64::try_from(reading.queue_depth).unwrap_or(i64::MAX));
        self.inflight_body_bytes
            .set(i64::try_from(reading.inflight_body_bytes).unwrap_or(i64::MAX));
        self.processes_stalled
            .set(i64::try_from(reading.processes_stalled).unwrap_or(i64::MAX));
        let mut text = String::with_capacity(16 * 1024);
        let encoded = if openmetrics {
            openmetrics_text::encode(&mut text, &self.registry)
        } else {
            prometheus_text::encode(&mut text, &self.registry)
        };
        // Writing into a String cannot fail, and no metric refuses.
        if let Err(error) = encoded {
            tracing::error!(%error, "the metrics could not be encoded");
        }
        text
    }
}

/// True when an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept
            .split(',')
            .any(|range| range.trim().starts_with("application/openmetrics-text"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_types_past_the_cap_count_as_other() {
        let metrics = Metrics::new(2);
        assert_eq!(metrics.process_type_label(Some("a")), "a");
        assert_eq!(metrics.process_type_label(None), "");
        assert_eq!(metrics.process_type_label(Some("b")), "other");
        assert_eq!(metrics.process_type_label(Some("a")), "a");
    }

    #[test]
    fn openmetrics_is_chosen_only_when_asked_for() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
