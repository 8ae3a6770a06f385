"""Streaming both ways, never buffering: server-sent events arrive event by event, and large
bodies pass with equal sha256 at both ends while the gateway's memory stays flat.

The memory test runs the gateway as a real subprocess (``jwt-gateway serve --config``) and
reads its resident set size from /proc. bench/bench_proxy_stream.py runs the same drill with
1 GiB each way.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.proxy_servers import (
    GatewayProcess,
    StreamUpstream,
    expected_download_digest,
    rss_bytes,
    sha256_stream,
    stream_upload,
)
from tests.support.servers import GatewayServer

SIZE = 64 * 1024 * 1024
#: Allowed growth of the gateway's resident memory while 64 MiB pass through it.
RSS_BUDGET = 24 * 1024 * 1024


def config(upstream: StreamUpstream, **proxy: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "proxy": {"max_body_bytes": None, **proxy},
        "logging": {"access_log": False},
        "routes": [{"name": "all", "match": {"path": "/**"}, "auth": "public"}],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[StreamUpstream]:
    with StreamUpstream() as server:
        yield server


def test_server_sent_events_arrive_one_by_one(upstream: StreamUpstream) -> None:
    with GatewayServer(config(upstream)) as gw:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            sock.sendall(b"GET /events?gate=second HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n\r\n")
            got = b""
            while b"data: 1\n\n" not in got:
                got += sock.recv(4096)
            # The client holds event 1 while the upstream still waits to produce event 2.
            assert b"data: 2" not in got
            assert b"transfer-encoding: chunked" in got.lower()
            upstream.signal("second")
            while b"0\r\n\r\n" not in got:
                chunk = sock.recv(4096)
                assert chunk, "connection closed before the end of the stream"
                got += chunk
            assert got.index(b"data: 1") < got.index(b"data: 2")


class RSSWatch:
    """Samples a process's resident set size every few milliseconds, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        # The kernel's own peak too (reset first), so no short spike between samples escapes.
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.kernel_peak = True
        except OSError:
            self.kernel_peak = False

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> RSSWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.kernel_peak:
            self.peak = max(self.peak, rss_bytes(self.pid, "VmHWM"))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@pytest.fixture(scope="module")
def gateway_process(
    upstream: StreamUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with GatewayProcess(config(upstream), tmp_path_factory.mktemp("gw")) as gw:
        # Warm up (first connection, first request) before measuring.
        assert httpx.get(gw.url + "/download?size=1000000").status_code == 200
        stream_upload(gw.url + "/upload", 1_000_000)
        yield gw


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_large_download_streams_with_flat_memory(
    framing: str, gateway_process: GatewayProcess, upstream: StreamUpstream
) -> None:
    url = f"{gateway_process.url}/download?size={SIZE}&framing={framing}"
    with RSSWatch(gateway_process.pid) as watch, httpx.stream("GET", url, timeout=60) as r:
        assert r.status_code == 200
        size, digest = sha256_stream(r.iter_raw())
    assert size == SIZE
    assert digest == expected_download_digest(SIZE)
    assert watch.growth < RSS_BUDGET, f"gateway RSS grew by {watch.growth / 2**20:.1f} MiB"


def test_a_large_upload_streams_with_flat_memory(
    gateway_process: GatewayProcess, upstream: StreamUpstream
) -> None:
    started = time.monotonic()
    with RSSWatch(gateway_process.pid) as watch:
        r = stream_upload(gateway_process.url + "/upload", SIZE)
    assert r.status_code == 200, r.text
    assert r.json() == {"size": SIZE, "sha256": expected_download_digest(SIZE)}
    assert upstream.seen[-1].body_size == SIZE
    assert watch.growth < RSS_BUDGET, f"gateway RSS grew by {watch.growth / 2**20:.1f} MiB"
    assert time.monotonic() - started < 60


def test_a_large_upload_with_content_length_streams(
    gateway_process: GatewayProcess, upstream: StreamUpstream
) -> None:
    # The body is generated while it is sent, with an explicit Content-Length (httpx then sends
    # no chunked framing): SIZE exceeds RSS_BUDGET, so a gateway that buffered it would fail.
    with RSSWatch(gateway_process.pid) as watch:
        r = stream_upload(gateway_process.url + "/upload", SIZE, headers={"Content-Length": str(SIZE)})
    assert r.status_code == 200, r.text
    assert r.json() == {"size": SIZE, "sha256": expected_download_digest(SIZE)}
    headers = dict(upstream.seen[-1].headers)
    assert headers[b"content-length"] == str(SIZE).encode()
    assert b"transfer-encoding" not in headers
    assert watch.growth < RSS_BUDGET, f"gateway RSS grew by {watch.growth / 2**20:.1f} MiB"
