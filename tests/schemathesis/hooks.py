"""Schemathesis hooks: the rules of docs/openapi.yaml that JSON Schema cannot
state (its x-rules), so that a schema-valid case the server must refuse is
not sent as a positive one.

JSON Schema counts characters where the API counts UTF-8 bytes, cannot
compare two fields, and cannot say "in years 0000-9999 once in UTC". Only
positive cases are filtered: a negative case already breaks a rule that
the schema states, and the server must refuse it whatever else it holds.
"""

import itertools
import re
import time
from datetime import datetime, timedelta, timezone

import schemathesis
from schemathesis import GenerationMode

LABELS = ("name", "process_type", "correlation_id")


def _bytes(text):
    return len(text.encode("utf-8")) if isinstance(text, str) else 0


RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|([+-])(\d{2}):(\d{2}))$"
)


def _utc_year_ok(text):
    """False for an RFC 3339 time whose UTC instant falls outside years 0000-9999."""
    match = RFC3339.match(text) if isinstance(text, str) else None
    if match is None:
        # Not a time at all: left to the schema's format check.
        return True
    year = int(match.group(1))
    # Python's calendar starts at year 1: shift by the Gregorian cycle of
    # 400 years, which keeps every date and leap day where it was.
    shift = 400 if year < 5000 else -400
    try:
        local = datetime(
            year + shift, int(match.group(2)), int(match.group(3)),
            int(match.group(4)), int(match.group(5)), min(int(match.group(6)), 59),
        )
    except ValueError:
        return True
    offset = timedelta(0)
    if match.group(9):
        offset = timedelta(hours=int(match.group(10)), minutes=int(match.group(11)))
        if match.group(9) == "-":
            offset = -offset
    utc_year = (local - offset).year - shift
    return 0 <= utc_year <= 9999


def _event_ok(event):
    if not isinstance(event, dict):
        return True
    if any(_bytes(event.get(label)) > 200 for label in LABELS):
        return False
    progress = event.get("progress")
    if isinstance(progress, dict):
        if _bytes(progress.get("message")) > 1024:
            return False
        current, total = progress.get("current"), progress.get("total")
        if isinstance(current, (int, float)) and isinstance(total, (int, float)) and current > total:
            return False
    error = event.get("error")
    if isinstance(error, dict) and _bytes(error.get("code")) + _bytes(error.get("message")) > 4096:
        return False
    attributes = event.get("attributes")
    if isinstance(attributes, dict):
        if any(_bytes(key) > 128 or _bytes(value) > 4096 for key, value in attributes.items()):
            return False
    if not _utc_year_ok(event.get("occurred_at")):
        return False
    # The idempotency headers are not filtered here: the API document
    # states their rule, so a schema-valid key the server refused would
    # fail the run.
    return True


def _query_ok(query):
    return all(_utc_year_ok((query or {}).get(name)) for name in ("created_after", "created_before"))


KEY_HEADER = re.compile(r"^[ -~]{1,200}$")


def _unused_bad_key(case):
    """A negative case of POST /v1/events whose idempotency header breaks its
    declared rule where the server does not use that header (docs/api.md:
    judged only where it is used): the body takes no key from headers (an
    event with its own event_id, a batch, a CloudEvent), or `webhook-id`
    beside an `Idempotency-Key`, which comes first. The server does not
    judge what it does not use, so such a case is not one it must refuse;
    one whose header in use is bad is, and stays."""
    if not (case.operation.method.upper() == "POST" and case.path == "/v1/events"):
        return False
    body = case.body
    takes_key = (
        "cloudevents" not in (case.media_type or "").lower()
        and isinstance(body, dict)
        and body.get("event_id") is None
    )
    present = [
        value
        for name in ("idempotency-key", "webhook-id")
        for header, value in (case.headers or {}).items()
        if header.lower() == name
    ]
    bad = [not (isinstance(value, str) and KEY_HEADER.match(value)) for value in present]
    used_bad = takes_key and bool(bad) and bad[0]
    unused_bad = any(bad[1:]) or (not takes_key and any(bad))
    return unused_bad and not used_bad


@schemathesis.hook
def filter_case(context, case):
    if case.meta is None:
        return True
    if case.meta.generation.mode != GenerationMode.POSITIVE:
        return not _unused_bad_key(case)
    if not _query_ok(case.query):
        return False
    if case.operation.method.upper() == "POST" and case.path == "/v1/events":
        body = case.body
        if "cloudevents" in (case.media_type or "").lower():
            items = body if isinstance(body, list) else [body]
            return all(_event_ok(_as_event(item)) for item in items)
        if isinstance(body, list):
            return all(_event_ok(event) for event in body)
        return _event_ok(body)
    return True


def _as_event(cloudevent):
    """The event a structured CloudEvent maps to, as far as the rules
    above look: its data, and `time` as `occurred_at`."""
    if not isinstance(cloudevent, dict):
        return cloudevent
    data = cloudevent.get("data")
    event = dict(data) if isinstance(data, dict) else {}
    event["occurred_at"] = cloudevent.get("time")
    return event


# The calls, numbered in the order they were answered (one at a time).
_calls = itertools.count()
# When each process was last deleted (answered 204), by id: the call's
# number, and the clock in milliseconds.
_deleted = {}
# The number of the last call whose answer said an event of each process
# was stored, by id.
_stored = {}


def _stored_processes(answer):
    """The ids of the processes an ingest answer (one event's, or a batch's
    `results`) says it stored an event of."""
    if isinstance(answer, dict) and isinstance(answer.get("results"), list):
        items = answer["results"]
    else:
        items = [answer]
    return [
        item["process_id"]
        for item in items
        if isinstance(item, dict)
        and item.get("result") in ("accepted", "stale")
        and isinstance(item.get("process_id"), str)
    ]


@schemathesis.hook
def after_call(context, case, response):
    call = next(_calls)
    if case.method.upper() == "DELETE" and response.status_code == 204:
        _deleted[case.path_parameters["id"]] = (call, int(time.time() * 1000))
    if case.method.upper() == "POST" and case.path == "/v1/events" and 200 <= response.status_code < 300:
        try:
            answer = response.json()
        except ValueError:
            return
        for process_id in _stored_processes(answer):
            _stored[process_id] = call


def _recreated(case, response):
    """True for a process that an event made anew after its id's last
    deletion, as the contract says any event for an unknown process does
    (ids are the sender's): an event stored by a call after the DELETE, or
    (in a GET's answer) a process younger than the deletion. A HEAD's
    answer has no body, so only the first can tell."""
    process_id = (case.path_parameters or {}).get("id")
    if process_id not in _deleted:
        return False
    deleted_call, deleted_ms = _deleted[process_id]
    if _stored.get(process_id, -1) > deleted_call:
        return True
    try:
        process = response.json()
        created = datetime.fromisoformat(process["created_at"].replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    created_ms = int(created.astimezone(timezone.utc).timestamp() * 1000)
    return created_ms >= deleted_ms - 1


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep every failure but these, which depend on what the store was
    sent earlier rather than on the request, like the 409 conflict that
    the checks already expect:

    - a schema-valid event refused because its idempotency key was used
      before for a different body (422 idempotency_key_reused), or because
      its process already holds what the caps allow (422 limit_exceeded):
      generated cases reuse keys and process ids such as "0" all the time
      (in a CloudEvents batch, the batch's 400 for such items alone, or
      for items that conflict with a finished status, 409 when single);
    - a deleted process found again (use after free) when an event for its
      id came after the DELETE and made it anew."""
    if failure.code == "ST301" and response.status_code == 200:
        return not _recreated(case, response)
    if failure.code != "ST202" or response.status_code not in (400, 422):
        return True
    try:
        answer = response.json()
    except ValueError:
        return True
    if not isinstance(answer, dict):
        return True
    if response.status_code == 422:
        return answer.get("code") not in STATEFUL_REFUSALS
    # A CloudEvents batch is 400 when an item is refused: the same rule,
    # item by item.
    refused = [
        item.get("error") or {}
        for item in answer.get("results") or []
        if isinstance(item, dict) and item.get("result") == "rejected"
    ]
    return not refused or not all(_stateful(error) for error in refused)


def _stateful(problem):
    """A refusal that depends on what the store holds: a conflict with a
    finished status (409, which the checks expect of a single event), or
    one of STATEFUL_REFUSALS."""
    return problem.get("status") == 409 or problem.get("code") in STATEFUL_REFUSALS


STATEFUL_REFUSALS = ("idempotency_key_reused", "limit_exceeded")


# Long polls and waits answer at once when something happens, and only
# then; against a quiet test daemon each would hold its full `wait` (up to
# 60 s, past the client's read timeout). The schema's range stays as it
# is; every phase's cases are sent with waits of at most one second.
@schemathesis.hook
def before_call(context, case, **kwargs):
    query = case.query
    if isinstance(query, dict):
        wait = query.get("wait")
        if isinstance(wait, int) and not isinstance(wait, bool) and 1 < wait <= 60:
            query["wait"] = 1
        elif isinstance(wait, str) and wait.isdigit() and 1 < int(wait) <= 60:
            query["wait"] = "1"
