//! ProcessManager: the source of truth for the state of long-running
//! processes and their tasks.
//!
//! The data path:
//!
//! ```text
//! orchestrator --POST /v1/events--> http (hyper on tokio)
//!     parse + validate (domain), no store access
//!     try_send on a bounded crossbeam channel      -- full: 429 + Retry-After
//! writer (one thread, the only one that decides)
//!     drain the queue, decide every event with the domain rules against
//!     the store file under the pending layers, into the active layer;
//!     append the group to a write log with one fdatasync, make it
//!     visible, then answer each request (store::durability)
//! applier (one thread, the only one that writes the store file)
//!     about once a second, the frozen layer into redb in one durable
//!     commit, each table in key order and each key once
//! dashboards --GET--> http: the store file under the pending layers up to
//!     the last answered group, never blocked by the writer
//! ```
//!
//! Modules: `domain` (rules and the writer's vocabulary, no I/O), `codec`
//! (the one byte format), `store` (redb tables, pending layers, queries),
//! `writer` (the channel, the writer and applier threads), `http` (API),
//! `config`, `cli` and `commands` (one per subcommand), `logging`.

pub mod cli;
pub mod codec;
pub mod commands;
pub mod config;
pub mod domain;
pub mod http;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod progress;
pub mod store;
pub mod writer;
