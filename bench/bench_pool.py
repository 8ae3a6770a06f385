"""Micro-benchmark of the upstream pool: small GETs through one keep-alive connection.

A raw asyncio server in a child process (uvloop, a protocol that answers every request head
with a fixed 2-byte response) stands in for the upstream, so the figure is the client side:
request head encoding, the write, httptools parsing, the wake-up and the connection's return
to the pool. ``--concurrency N`` runs N client tasks (N connections) instead of one.

    .venv/bin/python bench/bench_pool.py [--requests 20000] [--concurrency 1] [--loop uvloop]
    .venv/bin/python bench/bench_pool.py --profile   # cProfile of the client side, top 25
    .venv/bin/python bench/bench_pool.py --stream 1024   # 1 GiB down and up: MB/s, RSS growth
    .venv/bin/python bench/bench_pool.py --no-io         # the pool's own Python, no sockets

Not a timed test: figures go to bench/README.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import multiprocessing
import os
import pstats
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.proxy.http1 import UpstreamConnection
from gateway.proxy.pool import Origin, PoolLimits, UpstreamPool

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
HEADERS = [
    (b"host", b"127.0.0.1"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"x-forwarded-for", b"192.0.2.1"),
    (b"x-forwarded-proto", b"http"),
    (b"x-user-id", b"alice"),
    (b"x-request-id", b"0123456789abcdef"),
]


class _Echo(asyncio.Protocol):
    """Answers each complete request head (no bodies in this benchmark)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")
        if count:
            self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4 :]
            self.transport.write(RESPONSE * count)  # type: ignore[attr-defined]


def _serve(sock: socket.socket) -> None:
    import uvloop

    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        os.sched_setaffinity(0, {0})

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Echo, sock=sock)
        await server.serve_forever()

    uvloop.run(main())


async def _client(port: int, requests: int, concurrency: int) -> tuple[float, float]:
    pool = UpstreamPool(PoolLimits(max_connections=concurrency, max_idle=concurrency))
    origin = Origin("http", "127.0.0.1", port)

    async def one() -> None:
        response = await pool.request(origin, "GET", b"/api/orders?limit=10", HEADERS)
        async for _ in response.aiter_body():
            pass
        await response.aclose()

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # warm-up
    started = time.perf_counter()
    cpu_started = time.process_time()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    cpu = time.process_time() - cpu_started
    elapsed = time.perf_counter() - started
    await pool.aclose()
    return elapsed, cpu


class _AnsweringTransport:
    """For --no-io: every write is answered with RESPONSE on the next loop iteration."""

    def __init__(self, conn: UpstreamConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop

    def write(self, data: bytes) -> None:
        self.loop.call_soon(self.conn.data_received, RESPONSE)

    def close(self) -> None:
        pass

    abort = close


async def _no_io(requests: int) -> None:
    loop = asyncio.get_running_loop()
    pool = UpstreamPool()
    origin = Origin("http", "127.0.0.1", 9)

    async def fake_connect(*_: object) -> UpstreamConnection:
        conn = UpstreamConnection(loop, max_head=65536, max_headers=128, read_timeout=60, write_timeout=60)
        conn.connection_made(_AnsweringTransport(conn, loop))  # type: ignore[arg-type]
        return conn

    pool._connect = fake_connect  # type: ignore[method-assign,assignment]

    async def one() -> None:
        response = await pool.request(origin, "GET", b"/api/orders?limit=10", HEADERS)
        async for _ in response.aiter_body():
            pass
        await response.aclose()

    for _ in range(2000):
        await one()
    started = time.perf_counter()
    for _ in range(requests):
        await one()
    elapsed = time.perf_counter() - started
    print(
        f"no I/O: {elapsed / requests * 1e6:.1f} us/request (head encoding, parsing, two loop "
        "iterations, connection return; no syscalls)"
    )


class _Streamer(asyncio.Protocol):
    """Upstream for --stream: GET sends ``size`` bytes (flow-controlled), POST answers its sha256."""

    def __init__(self, size: int, block: bytes) -> None:
        self.size = size
        self.block = block

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.mode = ""
        self.sent = 0
        self.received = 0
        self.paused = False
        self.digest = hashlib.sha256()

    def data_received(self, data: bytes) -> None:
        if not self.mode:
            self.buffer += data
            if b"\r\n\r\n" not in self.buffer:
                return
            head, _, data = self.buffer.partition(b"\r\n\r\n")
            self.buffer = b""
            self.mode = "get" if head.startswith(b"GET") else "post"
            if self.mode == "get":
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
                self.sent = 0
                self.resume_writing()
                return
        self.received += len(data)
        self.digest.update(data)
        if self.received >= self.size:
            answer = self.digest.hexdigest().encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n" + answer)
            self.mode = ""

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        while self.sent < self.size and not self.paused:
            self.transport.write(self.block)
            self.sent += len(self.block)
        if self.sent >= self.size:
            self.mode = ""


async def _stream(size_mib: int) -> None:
    block = os.urandom(1024 * 1024)
    size = size_mib * len(block)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Streamer(size, block), "127.0.0.1", 0)
    origin = Origin("http", "127.0.0.1", server.sockets[0].getsockname()[1])
    pool = UpstreamPool()
    expected = hashlib.sha256()
    for _ in range(size_mib):
        expected.update(block)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    started = time.perf_counter()
    response = await pool.request(origin, "GET", b"/download", HEADERS)
    digest = hashlib.sha256()
    async for chunk in response.aiter_body():
        digest.update(chunk)
    await response.aclose()
    elapsed = time.perf_counter() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    assert digest.hexdigest() == expected.hexdigest()
    print(f"download {size_mib} MiB: {size_mib / elapsed:,.0f} MiB/s, max RSS growth {grown / 1024:.1f} MiB")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size_mib):
            yield block

    started = time.perf_counter()
    response = await pool.request(origin, "POST", b"/upload", HEADERS, body(), content_length=size)
    answer = b"".join([chunk async for chunk in response.aiter_body()])
    elapsed = time.perf_counter() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    assert answer.decode() == expected.hexdigest()
    print(f"upload {size_mib} MiB: {size_mib / elapsed:,.0f} MiB/s, max RSS growth {grown / 1024:.1f} MiB")
    print("(upstream in the same process; sha256 equal at both ends)")
    await pool.aclose()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--stream", type=int, metavar="MIB", help="stream MIB MiB down and up instead")
    parser.add_argument("--no-io", action="store_true", help="measure the pool without sockets")
    args = parser.parse_args()
    if args.no_io:
        with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as no_io_runner:
            no_io_runner.run(_no_io(args.requests))
        return
    if args.stream:
        with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as stream_runner:
            stream_runner.run(_stream(args.stream))
        return

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(sock,), daemon=True)
    server.start()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    try:
        runner = asyncio.Runner(loop_factory=_loop_factory(args.loop))
        with runner:
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                elapsed, cpu = runner.run(_client(port, args.requests, args.concurrency))
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            else:
                elapsed, cpu = runner.run(_client(port, args.requests, args.concurrency))
    finally:
        server.terminate()
        server.join()
    done = args.requests // args.concurrency * args.concurrency
    print(
        f"loop={args.loop} concurrency={args.concurrency} requests={done}: "
        f"{done / elapsed:,.0f} req/s, {elapsed / done * 1e6:.1f} us/request wall, "
        f"{cpu / done * 1e6:.1f} us/request client CPU (pool + event loop + syscalls)"
    )


def _loop_factory(name: str):  # type: ignore[no-untyped-def]
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


if __name__ == "__main__":
    main()
