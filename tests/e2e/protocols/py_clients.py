#!/usr/bin/env python3
"""The official Python SDKs stream every scenario through the gateway, as a user's code
would, and record what each one showed (report.py judges it):

  openai-chat       openai: client.chat.completions.create(..., stream=True)
  openai-responses  openai: client.responses.create(..., stream=True)
  anthropic         anthropic: client.messages.stream(...), text_stream, get_final_message()

  py_clients.py --base http://127.0.0.1:PORT --log upstream.jsonl --out py.json \
      [--scenarios clean,...] [--clients openai-chat,...]

The scenario is the `model`; `502` goes to the routes under /down (an upstream that
refuses connections) with model `clean`; `504` is model `hang_headers`. Clients are made
with max_retries=0. Each call runs in its own thread, all at once; a call not ended
after HANG_SECONDS is recorded as a hang.
"""

import argparse
import json
import threading
import time
import traceback
import uuid

import anthropic
import openai

HANG_SECONDS = 15


def model_and_base(scenario, base):
    if scenario == "502":
        return "clean", base + "/down"
    if scenario == "504":
        return "hang_headers", base
    return scenario, base


def describe(e):
    """What a user's `except Exception as e` sees: class, message, status, body."""
    body = getattr(e, "body", None)
    etype = None
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        etype = inner.get("type") or inner.get("code")
    response = getattr(e, "response", None)
    return {
        "kind": "raised",
        "class": "%s.%s" % (type(e).__module__.split(".")[0], type(e).__name__),
        "message": str(e),
        "status": getattr(e, "status_code", None),
        "type": etype,
        "body": body,
        "header": response.headers.get("x-sse-gateway-error") if response is not None else None,
    }


def openai_chat(base, scenario, nonce, obs):
    model, url = model_and_base(scenario, base)
    client = openai.OpenAI(base_url=url + "/v1", api_key="test", max_retries=0)
    obs["finish"] = None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "e2e " + nonce}], stream=True)
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta and choice.delta.content:
                obs["parts"].append(choice.delta.content)
            if choice.finish_reason:
                obs["finish"] = choice.finish_reason
    # Iteration ended without an exception: the SDK reports success; a finish_reason
    # is what says the answer is whole.
    obs["complete"] = True


def openai_responses(base, scenario, nonce, obs):
    model, url = model_and_base(scenario, base)
    client = openai.OpenAI(base_url=url + "/v1", api_key="test", max_retries=0)
    stream = client.responses.create(model=model, input="e2e " + nonce, stream=True)
    obs["events"] = []
    for event in stream:
        obs["events"].append(event.type)
        if event.type == "response.output_text.delta":
            obs["parts"].append(event.delta)
        elif event.type in ("response.completed", "response.incomplete"):
            obs["finish"] = event.type
        elif event.type == "error":
            # The SDK yields the error event; it does not raise (see README.md).
            obs["error"] = {"kind": "event", "class": type(event).__name__, "message": event.message,
                            "status": None, "type": event.code, "body": event.to_dict()}
        elif event.type == "response.failed":
            err = event.response.error
            obs["error"] = {"kind": "event", "class": type(event).__name__,
                            "message": err.message if err else "response.failed",
                            "status": None, "type": err.code if err else None, "body": event.to_dict()}
    obs["complete"] = obs.get("finish") == "response.completed" and obs.get("error") is None


def anthropic_messages(base, scenario, nonce, obs):
    model, url = model_and_base(scenario, base)
    client = anthropic.Anthropic(base_url=url, api_key="test", max_retries=0)
    with client.messages.stream(model=model, max_tokens=256,
                                messages=[{"role": "user", "content": "e2e " + nonce}]) as stream:
        for text in stream.text_stream:
            obs["parts"].append(text)
        message = stream.get_final_message()
    obs["finish"] = message.stop_reason
    obs["final_text"] = "".join(b.text for b in message.content if b.type == "text")
    obs["complete"] = True


CLIENTS = {"openai-chat": openai_chat, "openai-responses": openai_responses, "anthropic": anthropic_messages}


def run_one(fn, base, scenario):
    nonce = uuid.uuid4().hex[:12]
    obs = {"nonce": nonce, "parts": [], "complete": False, "error": None, "finish": None}
    started = time.monotonic()

    def target():
        try:
            fn(base, scenario, nonce, obs)
        except Exception as e:  # noqa: BLE001 - what the SDK raises is the observation
            obs["raised"] = describe(e)
            obs["error"] = obs.get("error") or obs["raised"]  # an error event seen first stays first
            obs["complete"] = False
            obs["traceback_tail"] = traceback.format_exc().splitlines()[-3:]
        obs["seconds"] = round(time.monotonic() - started, 2)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(HANG_SECONDS)
    obs["hung"] = worker.is_alive()
    obs["text"] = "".join(obs["parts"])
    return obs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenarios", required=True)
    ap.add_argument("--clients", default=",".join(CLIENTS))
    args = ap.parse_args()
    scenarios = args.scenarios.split(",")
    results = {c: {} for c in args.clients.split(",")}
    threads = []
    for client in results:
        for scenario in scenarios:
            def job(c=client, s=scenario):
                results[c][s] = run_one(CLIENTS[c], args.base, s)
            t = threading.Thread(target=job, daemon=True)
            t.start()
            threads.append(t)
    for t in threads:
        t.join(HANG_SECONDS + 5)
    time.sleep(0.3)  # let a retry, had there been one, reach the upstream's log
    with open(args.log, encoding="utf-8") as f:
        log = [json.loads(line) for line in f if line.strip()]
    for client, by_scenario in results.items():
        for scenario in scenarios:
            obs = by_scenario.setdefault(scenario, {"hung": True, "text": "", "error": None,
                                                    "complete": False, "note": "runner stuck"})
            nonce = obs.get("nonce")
            obs["upstream_requests"] = sum(1 for e in log if e.get("event") == "request" and nonce
                                           and nonce in json.dumps(e.get("body"), ensure_ascii=False))
            obs.pop("parts", None)
    versions = {"openai": openai.__version__, "anthropic": anthropic.__version__}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"versions": versions, "results": results}, f, indent=2, ensure_ascii=False, default=str)


if __name__ == "__main__":
    main()
