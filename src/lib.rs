//! ProcessManager: the source of truth for the state of long-running
//! processes and their tasks.
//!
//! The data path:
//!
//! ```text
//! orchestrator --POST /v1/events--> http (hyper on tokio)
//!     parse + validate (domain), no store access
//!     try_send on a bounded crossbeam channel      -- full: 429 + Retry-After
//! writer (one thread, the only one that writes)
//!     drain the queue, apply every event with the domain rules inside one
//!     redb write transaction, append the group to the write log with
//!     one fdatasync, commit without redb's own durability, then answer
//!     each request; every 500 groups or 2 MiB of log a durable redb
//!     commit instead (all of it in store::durability)
//! dashboards --GET--> http: a redb read snapshot, never blocked by the writer
//! ```
//!
//! Modules: `domain` (rules, no I/O), `store` (redb tables, codec, queries),
//! `writer` (the channel and the writer thread), `http` (API), `config`,
//! `cli` and `commands` (one per subcommand), `logging`.

pub mod cli;
pub mod commands;
pub mod config;
pub mod domain;
pub mod http;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod store;
pub mod writer;
