"""Follows the change feed with requests-sse, a maintained SSE client
library, and prints each event it hands over as one JSON line: its id, its
event type and its data. The library reconnects by itself when the stream
ends, sending Last-Event-ID; the test restarts the daemon to make it do so.

usage: follow.py URL COUNT
"""

import json
import sys
from datetime import timedelta

from requests_sse import EventSource

url, count = sys.argv[1], int(sys.argv[2])
seen = 0
with EventSource(
    url,
    timeout=60,
    reconnection_time=timedelta(milliseconds=50),
    max_connect_retry=20,
) as source:
    for event in source:
        print(
            json.dumps(
                {"id": event.last_event_id, "type": event.type, "data": json.loads(event.data)}
            ),
            flush=True,
        )
        seen += 1
        if seen == count:
            break
