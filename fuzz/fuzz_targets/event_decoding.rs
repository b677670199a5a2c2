//! Arbitrary bytes through the daemon's own body decoding (plain events,
//! and structured and batch CloudEvents): it must never panic, and
//! whatever it accepts must satisfy the contract's rules and survive the
//! store's codec unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use processmanager::domain::{is_valid_event_id, is_valid_id, Event, Scope};
use processmanager::config::CloudEventsConfig;
use processmanager::http::cloudevents;
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
    // The first byte chooses how the body came: bit 0, whether an
    // Idempotency-Key header came along (plain events); bits 1-2, as plain
    // events, a structured CloudEvent, or a CloudEvents batch.
    let (flags, body) = match data.split_first() {
        Some((flags, rest)) => (*flags, rest),
        None => (0, data),
    };
    let header = (flags % 2 == 1).then_some("header-key");
    let settings = CloudEventsConfig {
        type_prefix: "com.example.pm.".into(),
        ..CloudEventsConfig::default()
    };
    let at = 1_700_000_000_000;
    let decoded = match (flags >> 1) % 3 {
        0 => decode_body(body, header, 1000, at),
        1 => cloudevents::decode_structured(body, &settings, at).map(DecodedBody::Single),
        _ => cloudevents::decode_batch(body, 1000, &settings, at).map(DecodedBody::Batch),
    };
    match decoded {
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
