//! The read endpoints: one process, the list, a history, the stats.

use super::problem::ApiError;
use super::views::{HistoryView, ProcessView, StatsView};
use super::{blocking, json_response, AppState, Response};
use crate::domain::{parse_timestamp, Status};
use crate::store::read::{ListPosition, ListQuery};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::StatusCode;
use serde_json::json;

const DEFAULT_LIST_LIMIT: usize = 50;
const DEFAULT_HISTORY_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// The first byte of every list cursor, so the format can change later.
const CURSOR_V1: u8 = 1;

pub(super) fn not_found(process_id: &str) -> ApiError {
    ApiError::NotFound(format!("there is no process {process_id}"))
}

/// A point lookup; off the async workers all the same, since on a store
/// larger than memory it waits for the disk.
pub async fn get_process(state: &AppState, process_id: &str) -> Result<Response, ApiError> {
    let process_id = process_id.to_owned();
    blocking(state, move |snapshots| {
        let snapshot = snapshots.get()?;
        let (process, tasks) = snapshot
            .process_with_tasks(&process_id)?
            .ok_or_else(|| not_found(&process_id))?;
        Ok(json_response(
            StatusCode::OK,
            &ProcessView::with_tasks(&process, &tasks),
        ))
    })
    .await
}

pub(super) fn invalid(parameter: &str, detail: impl Into<String>) -> ApiError {
    ApiError::InvalidQuery {
        parameter: parameter.to_owned(),
        detail: detail.into(),
    }
}

pub(super) fn parse_limit(value: &str, parameter: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(|| {
            invalid(
                parameter,
                format!("`{parameter}` must be a whole number from 1 to {MAX_LIMIT}"),
            )
        })
}

pub(super) fn parse_time(value: &str, parameter: &str) -> Result<i64, ApiError> {
    parse_timestamp(value).ok_or_else(|| {
        invalid(
            parameter,
            format!("`{parameter}` must be an RFC 3339 timestamp such as 2026-11-25T10:00:00Z"),
        )
    })
}

pub fn encode_cursor(position: ListPosition) -> String {
    let mut bytes = Vec::with_capacity(17);
    bytes.push(CURSOR_V1);
    bytes.extend_from_slice(&position.created_at.to_be_bytes());
    bytes.extend_from_slice(&position.ordinal.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn decode_cursor(text: &str) -> Option<ListPosition> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    if bytes.len() != 17 || bytes[0] != CURSOR_V1 {
        return None;
    }
    Some(ListPosition {
        created_at: i64::from_be_bytes(bytes[1..9].try_into().ok()?),
        ordinal: u64::from_be_bytes(bytes[9..17].try_into().ok()?),
    })
}

/// `status=a,b`: process statuses, each once.
pub(super) fn parse_statuses(value: &str) -> Result<Vec<Status>, ApiError> {
    let mut statuses = Vec::new();
    for part in value.split(',').map(|part| part.trim_matches(' ')) {
        if part.is_empty() {
            return Err(invalid(
                "status",
                "`status` is a comma-separated list of statuses, none of them empty",
            ));
        }
        let status: Status = part
            .parse()
            .map_err(|detail: String| invalid("status", detail))?;
        if status == Status::Skipped {
            return Err(invalid(
                "status",
                "`skipped` is a task status; processes are never skipped",
            ));
        }
        if !statuses.contains(&status) {
            statuses.push(status);
        }
    }
    Ok(statuses)
}

fn parse_list_query(query: Option<&str>, indexed: &[String]) -> Result<ListQuery, ApiError> {
    let mut list = ListQuery {
        limit: DEFAULT_LIST_LIMIT,
        ..ListQuery::default()
    };
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if let Some(key) = name.strip_prefix("attr.") {
            if !indexed.iter().any(|known| known == key) {
                return Err(ApiError::AttributeNotIndexed {
                    key: key.to_owned(),
                    indexed: indexed.to_vec(),
                });
            }
            if list.attributes.iter().any(|(known, _)| known == key) {
                return Err(invalid(
                    &name,
                    format!("`{name}` is given twice; a process has one value per key"),
                ));
            }
            list.attributes.push((key.to_owned(), value.into_owned()));
            continue;
        }
        match name.as_ref() {
            "status" => list.statuses = parse_statuses(&value)?,
            "process_type" => list.process_type = Some(value.into_owned()),
            "correlation_id" => list.correlation_id = Some(value.into_owned()),
            "correlation_id_prefix" => {
                if value.is_empty() {
                    return Err(invalid(
                        "correlation_id_prefix",
                        "`correlation_id_prefix` must not be empty",
                    ));
                }
                list.correlation_id_prefix = Some(value.into_owned())
            }
            "stalled" => {
                list.stalled = match value.as_ref() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid("stalled", "`stalled` is true or false")),
                }
            }
            "created_after" => list.created_after = Some(parse_time(&value, "created_after")?),
            "created_before" => list.created_before = Some(parse_time(&value, "created_before")?),
            "limit" => list.limit = parse_limit(&value, "limit")?,
            "cursor" => {
                list.after = Some(decode_cursor(&value).ok_or_else(|| {
                    invalid("cursor", "`cursor` is not a cursor this server handed out; start again without it")
                })?)
            }
            other => {
                return Err(invalid(
                    other,
                    format!("unknown parameter `{other}`; known: status, process_type, correlation_id, correlation_id_prefix, attr.KEY, stalled, created_after, created_before, limit, cursor"),
                ))
            }
        }
    }
    Ok(list)
}

pub async fn list_processes(state: &AppState, query: Option<&str>) -> Result<Response, ApiError> {
    let list = parse_list_query(query, &state.indexed_attributes)?;
    blocking(state, move |snapshots| {
        let page = snapshots.get()?.list(&list)?;
        let items: Vec<ProcessView<'_>> = page.items.iter().map(ProcessView::summary).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"items": items, "next_cursor": page.next.map(encode_cursor)}),
        ))
    })
    .await
}

pub async fn history(
    state: &AppState,
    process_id: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let mut after_seq = 0u64;
    let mut limit = DEFAULT_HISTORY_LIMIT;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            // `cursor` is the `next_cursor` of the previous page: the last seq shown.
            "after_seq" | "cursor" => {
                after_seq = value
                    .parse()
                    .map_err(|_| invalid(&name, format!("`{name}` must be a sequence number")))?
            }
            "limit" => limit = parse_limit(&value, "limit")?,
            other => {
                return Err(invalid(
                    other,
                    format!("unknown parameter `{other}`; known: after_seq, cursor, limit"),
                ))
            }
        }
    }
    let process_id = process_id.to_owned();
    blocking(state, move |snapshots| {
        let page = snapshots
            .get()?
            .history(&process_id, after_seq, limit)?
            .ok_or_else(|| not_found(&process_id))?;
        let items: Vec<HistoryView<'_>> = page.items.iter().map(HistoryView::from).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"items": items, "next_cursor": page.next_after_seq.map(|seq| seq.to_string())}),
        ))
    })
    .await
}

pub async fn stats(state: &AppState) -> Result<Response, ApiError> {
    blocking(state, |snapshots| {
        let snapshot = snapshots.get()?;
        let counters = snapshot.counters()?;
        let store_id = snapshot.store_id()?;
        Ok(json_response(
            StatusCode::OK,
            &StatsView(&counters, &store_id),
        ))
    })
    .await
}

/// The window `GET /v1/stats/durations` covers when none is given.
const DEFAULT_DURATIONS_WINDOW_MS: i64 = 24 * 3_600_000;

/// `GET /v1/stats/durations`: counts and duration quantiles of the
/// processes that ended in a window, from the writer's running summaries
/// (`store::durations`).
pub async fn durations(state: &AppState, query: Option<&str>) -> Result<Response, ApiError> {
    let mut process_type = None;
    let (mut after, mut before) = (None, None);
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "process_type" => process_type = Some(value.into_owned()),
            "finished_after" => after = Some(parse_time(&value, "finished_after")?),
            "finished_before" => before = Some(parse_time(&value, "finished_before")?),
            other => {
                return Err(invalid(
                    other,
                    format!("unknown parameter `{other}`; known: process_type, finished_after, finished_before"),
                ))
            }
        }
    }
    let now = crate::writer::now_millis();
    let before = before.unwrap_or(now);
    let after = after.unwrap_or(before.saturating_sub(DEFAULT_DURATIONS_WINDOW_MS));
    let window = crate::store::durations::window(after, before, now);
    blocking(state, move |snapshots| {
        let summaries = snapshots
            .get()?
            .durations(process_type.as_deref(), window)?;
        Ok(json_response(
            StatusCode::OK,
            &super::views::durations_json(&summaries, process_type.as_deref(), window),
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let position = ListPosition {
            created_at: 1_700_000_000_123,
            ordinal: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(position)), Some(position));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(""), None);
    }
}
