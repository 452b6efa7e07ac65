"""The official `openai` Python SDK on a resumable route: its stream yields parsed
chunks, never the events' ids, so the stop button needs the stream's id from the
response head (`x-sse-gateway-stream-id`). Reads three chunks, leaves (the SDK closes
the response), then sends the stop. Prints what it saw as one JSON object.

    sdk_stop.py BASE_URL Q
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from openai import OpenAI

base, q = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=f"{base}/v1", api_key="e2e", max_retries=0)
seen = {"chunks": 0}
with client.chat.completions.with_streaming_response.create(
    model="e2e",
    messages=[{"role": "user", "content": q}],
    stream=True,
    extra_body={"q": q},
) as response:
    seen["stream_id"] = response.headers.get("x-sse-gateway-stream-id")
    for _chunk in response.parse():
        seen["chunks"] += 1
        if seen["chunks"] == 3:
            break
query = urllib.parse.urlencode({"lastEventId": seen["stream_id"] or ""})
stop = urllib.request.Request(
    f"{base}/v1/chat/completions?{query}",
    method="DELETE",
    headers={"authorization": "Bearer e2e"},
)
try:
    with urllib.request.urlopen(stop, timeout=10) as answer:
        seen["stop_status"] = answer.status
except urllib.error.HTTPError as refused:
    seen["stop_status"] = refused.code
print(json.dumps(seen))
