//! Arbitrary bytes through the daemon's own body decoding: it must never
//! panic, and whatever it accepts must satisfy the contract's rules and
//! survive the store's codec unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use processmanager::domain::{is_valid_event_id, is_valid_id, Event, Scope};
use processmanager::http::ingest::{decode_body, DecodedBody};
use processmanager::store::codec;

fn check(event: &Event) {
    assert!(is_valid_id(&event.process_id));
    match (event.kind.scope(), &event.task_id) {
        (Scope::Task, Some(task_id)) => assert!(is_valid_id(task_id)),
        (Scope::Process, None) => {}
        other => panic!("accepted an event with the wrong task id: {other:?}"),
    }
    if let Some(key) = &event.event_id {
        assert!(is_valid_event_id(key));
    }
    if let Some(percent) = event.progress.as_ref().and_then(|p| p.percent) {
        assert!((0.0..=100.0).contains(&percent));
    }
    assert!(event.attributes.len() <= 64);
    assert!(!event.kind.is_daemon_only(), "a sender's event of a daemon-only type");
    if let Some(secs) = event.heartbeat_timeout {
        assert!((1..=2_592_000).contains(&secs));
    }
    if event.deadline.is_some() {
        assert_eq!(event.kind.scope(), Scope::Process);
    }
    let decoded: Event = codec::decode(&codec::encode(event)).expect("a stored event reads back");
    assert_eq!(&decoded, event);
}

fuzz_target!(|data: &[u8]| {
    // The first byte chooses whether an Idempotency-Key header came along.
    let (header, body) = match data.split_first() {
        Some((flag, rest)) if flag % 2 == 1 => (Some("header-key"), rest),
        Some((_, rest)) => (None, rest),
        None => (None, data),
    };
    match decode_body(body, header, 1000, 1_700_000_000_000) {
        Ok(DecodedBody::Single(incoming)) => check(&incoming.event),
        Ok(DecodedBody::Batch(items)) => {
            for item in items.iter().flatten() {
                check(&item.event);
            }
        }
        Err(error) => {
            // Every refusal is a problem document with a 4xx status.
            let problem = error.to_problem();
            assert!(problem.status.is_client_error(), "{problem:?}", problem = problem.body);
        }
    }
});
