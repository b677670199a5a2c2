#!/usr/bin/env bash
# Posts one event of this workflow run to ProcessManager, signed with
# Standard Webhooks (https://www.standardwebhooks.com).
#
#   pm-event.sh TYPE [TASK_ID] [MORE_FIELDS]
#
# MORE_FIELDS are further JSON members, without braces:
#   '"name":"Build","attributes":{"runner":"linux"}'
# Needs PM_URL, PM_WEBHOOK_SECRET (whsec_...) and PM_PROCESS_ID; uses curl,
# openssl, base64, od and sha256sum, as GitHub's runners have.
set -euo pipefail

type=$1
task=${2:-}
more=${3:-}

body="{\"type\":\"$type\",\"process_id\":\"$PM_PROCESS_ID\""
if [ -n "$task" ]; then body+=",\"task_id\":\"$task\""; fi
if [ -n "$more" ]; then body+=",$more"; fi
body+="}"

# The message id keys the event: the same event sent again (a re-run
# step, a retried request) is answered as a duplicate and stored once.
id="msg_$(printf '%s' "$body" | sha256sum | cut -c1-32)"
timestamp=$(date +%s)
key=$(printf '%s' "${PM_WEBHOOK_SECRET#whsec_}" | base64 -d | od -An -v -tx1 | tr -d ' \n')
signature=$(printf '%s' "$id.$timestamp.$body" |
    openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key" -binary | base64 -w0)

# --retry covers 429 (the daemon is busy) and 5xx; any other answer fails
# the step and shows the daemon's problem document.
curl --fail-with-body --silent --show-error --retry 5 \
    -X POST "$PM_URL/v1/events" \
    -H 'Content-Type: application/json' \
    -H "webhook-id: $id" \
    -H "webhook-timestamp: $timestamp" \
    -H "webhook-signature: v1,$signature" \
    --data-binary "$body"
echo
