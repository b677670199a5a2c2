"""Builds CloudEvents HTTP messages with the official Python SDK
(`cloudevents`, its `core` API) for the daemon's tests.

Reads a JSON list of requests on stdin, each
    {"mode": "structured" | "binary" | "batch",
     "events": [{"attributes": {...}, "data": {...} | "text" | null}, ...]}
and prints a JSON list of messages, each {"headers": {...}, "body": "..."},
as the SDK makes them. A batch is the SDK's structured JSON of each event
in one JSON array (the SDK has no batch writer).
"""

import json
import sys

from cloudevents.core.bindings import http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent


def build(request):
    events = [
        CloudEvent(attributes=dict(item["attributes"]), data=item.get("data"))
        for item in request["events"]
    ]
    mode = request["mode"]
    if mode == "structured":
        message = http.to_structured_event(events[0])
        return message.headers, message.body
    if mode == "binary":
        message = http.to_binary_event(events[0])
        return message.headers, message.body
    if mode == "batch":
        body = b"[" + b",".join(JSONFormat().write(event) for event in events) + b"]"
        return {"content-type": "application/cloudevents-batch+json; charset=utf-8"}, body
    raise ValueError(f"unknown mode {mode}")


def main():
    messages = []
    for request in json.load(sys.stdin):
        headers, body = build(request)
        messages.append({"headers": headers, "body": body.decode("utf-8")})
    json.dump(messages, sys.stdout)


if __name__ == "__main__":
    main()
