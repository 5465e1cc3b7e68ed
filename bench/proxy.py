"""A counting reverse proxy in front of the emulator: every AWS request, by caller, service and operation.

Each caller (a Lambda function, the service) gets its own listening port, so requests
are attributed without touching the caller's code: the bench points the caller's
`AWS_ENDPOINT_URL` at its port. Requests are forwarded byte for byte (their Host header too): the
emulator enforces IAM and checks each SigV4 signature, so nothing signed may change. The
emulator reaches is HTTPS (`--ca` trusts its CA), and it reports the units every DynamoDB
request consumed (`MICROPROCESS_DYNAMODB_CONSUMED_CAPACITY`, `microprocess.local.gateway`;
callers ignore the extra field).

Run: `python -m bench.proxy --upstream http://127.0.0.1:4566 --caller forwarder --caller splitter
--key-schemas '{"table": ["pk", "sk"]}'`. The first line on stdout is a JSON object with
the ports (`{"control": port, "callers": {name: port}}`). The control port answers
`GET /stats` (the tally as JSON) and `POST /reset`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import ssl
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from bench.counting import Request, measure

_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "content-length"}


class Tally:
    """Everything counted so far."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.time()
        self.requests: Counter[tuple[str, str, str]] = Counter()  # (caller, service, op) -> HTTP requests
        self.billed: Counter[tuple[str, str, str]] = Counter()  # (caller, service, op) -> billed requests
        self.write_units: Counter[tuple[str, str]] = Counter()  # (caller, op)
        self.read_units: Counter[tuple[str, str]] = Counter()
        self.computed_write_units: Counter[tuple[str, str]] = Counter()
        self.emails: Counter[tuple[str]] = Counter()
        self.errors: Counter[tuple[str, str, str]] = Counter()  # (service, op, error)
        self.item_writes: Counter[tuple[str, str]] = Counter()  # (table, pk|sk) -> write requests
        self.item_units: Counter[tuple[str, str]] = Counter()
        self.pk_writes: Counter[tuple[str, str]] = Counter()  # (table, pk)
        self.pk_units: Counter[tuple[str, str]] = Counter()
        self.proxy_errors: Counter[str] = Counter()

    def snapshot(self, top: int = 20) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)

        def rows(counter: Counter[Any], names: tuple[str, ...]) -> list[dict[str, Any]]:
            return [{**dict(zip(names, key, strict=True)), "value": value} for key, value in sorted(counter.items())]

        def hottest(writes: Counter[tuple[str, str]], units: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
            return [
                {"table": t, "key": k, "writes": n, "write_units": units[(t, k)]}
                for (t, k), n in writes.most_common(top)
            ]

        return {
            "started": self.started,
            "requests": rows(self.requests, ("caller", "service", "operation")),
            "billed": rows(self.billed, ("caller", "service", "operation")),
            "write_units": rows(self.write_units, ("caller", "operation")),
            "read_units": rows(self.read_units, ("caller", "operation")),
            "computed_write_units": rows(self.computed_write_units, ("caller", "operation")),
            "emails": rows(self.emails, ("caller",)),
            "errors": rows(self.errors, ("service", "operation", "error")),
            "hottest_items": hottest(self.item_writes, self.item_units),
            "hottest_partition_keys": hottest(self.pk_writes, self.pk_units),
            "distinct_items_written": len(self.item_writes),
            "proxy_errors": dict(self.proxy_errors),
            "proxy_cpu_s": usage.ru_utime + usage.ru_stime,
        }


class HttpError(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], *, until_close: bool) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if until_close:
        return await reader.read()
    return b""


def _head_bytes(first_line: str, headers: list[tuple[str, str]], body_len: int) -> bytes:
    kept = [(k, v) for k, v in headers if k.lower() not in _HOP_HEADERS]
    kept.append(("Content-Length", str(body_len)))
    return (first_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept) + "\r\n").encode("latin-1")


class Proxy:
    def __init__(self, upstream: str, key_schemas: dict[str, tuple[str, ...]], ca: str | None = None) -> None:
        parts = urlsplit(upstream)
        self.host = parts.hostname or "127.0.0.1"
        self.tls = ssl.create_default_context(cafile=ca) if parts.scheme == "https" else None
        self.port = parts.port or (443 if self.tls else 80)
        self.key_schemas = key_schemas
        self.tally = Tally()

    async def serve_caller(self, caller: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    first, headers = await _read_head(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                h = {k.lower(): v for k, v in headers}
                if h.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await _read_body(reader, h, until_close=False)
                method, target, _ = first.split(" ", 2)
                path, _, query = target.partition("?")
                req = Request(method, path, query, h, body)
                sent_body = body
                out_headers = headers  # signed: the Host and the body stay as the caller sent them
                for attempt in range(2):
                    if up is None:
                        up = await asyncio.open_connection(
                            self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
                        )
                    try:
                        up[1].write(_head_bytes(first, out_headers, len(sent_body)) + sent_body)
                        await up[1].drain()
                        status_line, resp_headers = await _read_head(up[0])
                        break
                    except (asyncio.IncompleteReadError, ConnectionError):
                        # The emulator closed an idle keep-alive connection: reconnect once.
                        up[1].close()
                        up = None
                        if attempt:
                            raise
                rh = {k.lower(): v for k, v in resp_headers}
                status = int(status_line.split(" ", 2)[1])
                no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
                closing = rh.get("connection", "").lower() == "close"
                resp_body = b"" if no_body else await _read_body(up[0], rh, until_close=closing)
                if no_body and "content-length" in rh:
                    # HEAD: pass the length through as is.
                    head = (
                        status_line
                        + "\r\n"
                        + "".join(
                            f"{k}: {v}\r\n"
                            for k, v in resp_headers
                            if k.lower() not in _HOP_HEADERS - {"content-length"}
                        )
                        + "\r\n"
                    ).encode("latin-1")
                else:
                    head = _head_bytes(status_line, resp_headers, len(resp_body))
                # Counted before the caller sees the answer, so a snapshot taken after it includes it.
                self._count(caller, req, status, resp_body)
                writer.write(head + resp_body)
                await writer.drain()
                if closing:
                    up[1].close()
                    up = None
                if h.get("connection", "").lower() == "close":
                    return
        except Exception as exc:  # never take the caller down silently: count it, close the connection
            self.tally.proxy_errors[type(exc).__name__] += 1
        finally:
            if up is not None:
                up[1].close()
            writer.close()

    def _count(self, caller: str, req: Request, status: int, resp_body: bytes) -> None:
        try:
            m = measure(req, status, resp_body, self.key_schemas)
        except Exception as exc:
            self.tally.proxy_errors[f"measure: {type(exc).__name__}: {exc}"[:120]] += 1
            return
        t = self.tally
        t.requests[(caller, m.service, m.operation)] += 1
        t.billed[(caller, m.service, m.operation)] += m.billed_requests
        if m.write_units:
            t.write_units[(caller, m.operation)] += m.write_units
            if m.units_computed:
                t.computed_write_units[(caller, m.operation)] += m.write_units
        if m.read_units:
            t.read_units[(caller, m.operation)] += m.read_units
        if m.emails:
            t.emails[(caller,)] += m.emails
        if m.error:
            t.errors[(m.service, m.operation, m.error)] += 1
        for table, pk, key, units in m.key_writes:
            t.item_writes[(table, key)] += 1
            t.item_units[(table, key)] += units
            t.pk_writes[(table, pk)] += 1
            t.pk_units[(table, pk)] += units

    async def serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first, headers = await _read_head(reader)
            await _read_body(reader, {k.lower(): v for k, v in headers}, until_close=False)
            method, path, _ = first.split(" ", 2)
            status = "200 OK"
            try:
                if method == "POST" and path == "/reset":
                    self.tally.reset()
                    body = b'{"reset": true}'
                elif path == "/stats":
                    body = json.dumps(self.tally.snapshot()).encode()
                else:
                    body = b'{"paths": ["GET /stats", "POST /reset"]}'
            except Exception as exc:
                status, body = "500 Internal Server Error", json.dumps({"error": repr(exc)}).encode()
            head = _head_bytes(f"HTTP/1.1 {status}", [("Content-Type", "application/json")], len(body))
            writer.write(head + body)
            await writer.drain()
        except Exception:  # a broken control connection never stops the proxy
            pass
        finally:
            writer.close()


async def _main(args: argparse.Namespace) -> None:
    proxy = Proxy(args.upstream, {k: tuple(v) for k, v in json.loads(args.key_schemas).items()}, args.ca or None)
    ports: dict[str, int] = {}
    servers = []
    for caller in args.caller:
        server = await asyncio.start_server(
            lambda r, w, c=caller: proxy.serve_caller(c, r, w), "127.0.0.1", 0, limit=1 << 20, backlog=512
        )
        ports[caller] = server.sockets[0].getsockname()[1]
        servers.append(server)
    control = await asyncio.start_server(proxy.serve_control, "127.0.0.1", 0)
    servers.append(control)
    announce = json.dumps({"control": control.sockets[0].getsockname()[1], "callers": ports})
    if args.ports_file:
        tmp = args.ports_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(announce)
        os.replace(tmp, args.ports_file)
    print(announce, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the emulator's endpoint URL")
    parser.add_argument("--caller", action="append", default=[], help="a caller name; one port each")
    parser.add_argument("--key-schemas", default="{}", help="JSON: table name -> key attribute names")
    parser.add_argument("--ports-file", default="", help="also write the ports JSON to this file")
    parser.add_argument("--ca", default="", help="the CA that signed an https upstream's certificate")
    args = parser.parse_args(argv)
    if not args.caller:
        parser.error("name at least one --caller")
    asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
