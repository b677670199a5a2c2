//! The one integration test binary: each test starts the real daemon on a
//! free port with a temp data dir and talks HTTP to it.

mod access;
mod admin;
mod bounds;
mod cloudevents;
mod compatibility;
mod conformance;
mod deploy;
mod examples;
mod hosts;
mod ingest;
mod lifecycle;
mod live;
mod mirror;
mod operating;
#[path = "../postgres/mod.rs"]
mod pg_server;
mod power_loss;
mod progress;
mod property;
mod queries;
mod reliability;
mod retention;
mod schemathesis;
mod search;
mod soak;
mod stalls;
mod support;
