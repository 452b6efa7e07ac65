#!/usr/bin/env python3
"""A TCP relay in front of one or more gateways, as a load balancer that drops
connections: it reads each connection's first request head to pick a backend, then
copies bytes both ways.

- A connection whose request is for --stream-prefix (the EventSource) goes to the
  backends in turn (round robin), and the first len(--cut-after) such connections
  are cut (both sides aborted) once that many events (blank lines) went down them.
- Any other connection (the page) goes to the first backend, and its response head
  gets `Connection: close`, so the browser never reuses it for the stream.

Writes its port to --port-file and one JSON line per connection to --log.
"""
import argparse
import asyncio
import json
import os


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", required=True, help="comma-separated HOST:PORT")
    parser.add_argument("--cut-after", default="", help="comma-separated event counts")
    parser.add_argument("--stream-prefix", default="/api/stream")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    backends = [b.rsplit(":", 1) for b in args.backends.split(",")]
    cuts = [int(n) for n in args.cut_after.split(",") if n]
    streams = {"count": 0}

    def log(entry):
        with open(args.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    async def read_head(reader):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await reader.read(65536)
            if not chunk:
                return head, b""
            head += chunk
        end = head.index(b"\r\n\r\n") + 4
        return head[:end], head[end:]

    async def handle(client_reader, client_writer):
        head, rest = await read_head(client_reader)
        if not head:
            client_writer.close()
            return
        target = head.split(b" ", 2)[1].decode("latin-1") if b" " in head else ""
        is_stream = target.startswith(args.stream_prefix)
        cut_after = None
        if is_stream:
            number = streams["count"]
            streams["count"] += 1
            host, port = backends[number % len(backends)]
            if number < len(cuts):
                cut_after = cuts[number]
        else:
            number = None
            host, port = backends[0]
        log({"target": target, "stream": number, "backend": f"{host}:{port}", "cut_after": cut_after})
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        up_writer.write(head + rest)

        async def upward():
            try:
                while chunk := await client_reader.read(65536):
                    up_writer.write(chunk)
                    await up_writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                up_writer.close()

        async def downward():
            events = 0
            response_head = b""
            in_body = False
            try:
                while chunk := await up_reader.read(65536):
                    if not in_body:
                        response_head += chunk
                        if b"\r\n\r\n" not in response_head:
                            continue
                        end = response_head.index(b"\r\n\r\n")
                        head_part, chunk = response_head[:end], response_head[end + 4:]
                        if not is_stream:
                            head_part += b"\r\nConnection: close"
                        client_writer.write(head_part + b"\r\n\r\n")
                        in_body = True
                    if cut_after is not None:
                        at = 0
                        while (found := chunk.find(b"\n\n", at)) >= 0:
                            events += 1
                            at = found + 2
                            if events >= cut_after:
                                # The event's bytes, then nothing: a cut mid-answer.
                                client_writer.write(chunk[:at])
                                await client_writer.drain()
                                log({"cut": number, "after_events": events})
                                client_writer.transport.abort()
                                up_writer.transport.abort()
                                return
                    client_writer.write(chunk)
                    await client_writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                client_writer.close()

        await asyncio.gather(upward(), downward())

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with open(args.port_file + ".tmp", "w", encoding="utf-8") as f:
            f.write(str(port))
        os.replace(args.port_file + ".tmp", args.port_file)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
