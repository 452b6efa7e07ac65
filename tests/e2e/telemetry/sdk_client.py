#!/usr/bin/env python3
"""The official openai SDK streams a chat completion through a route with
`stream.usage: request`, with stream_options unset: it must parse every chunk, and no
chunk may be the usage-only one (empty choices) it did not ask for.

Usage: sdk_client.py BASE_URL   prints one JSON object: text, chunks, problems.
"""

import json
import sys

import openai


def main():
    client = openai.OpenAI(base_url=sys.argv[1], api_key="e2e", max_retries=0, timeout=30)
    problems = []
    chunks = 0
    text = ""
    try:
        stream = client.chat.completions.create(
            model="e2e", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        for chunk in stream:
            chunks += 1
            if not chunk.choices:
                problems.append(f"chunk {chunks} has no choices (a usage chunk?)")
                continue
            if chunk.usage is not None:
                problems.append(f"chunk {chunks} carries usage {chunk.usage}")
            text += chunk.choices[0].delta.content or ""
    except Exception as error:  # noqa: BLE001 (reported)
        problems.append(f"{type(error).__name__}: {error}")
    print(json.dumps({"text": text, "chunks": chunks, "problems": problems}))
    return 0 if not problems and text == "Hello" else 1


if __name__ == "__main__":
    sys.exit(main())
