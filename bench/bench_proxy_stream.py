"""Streaming drill of issue 3: 1 GiB up and 1 GiB down through the gateway, memory flat.

Starts three processes on 127.0.0.1: an upstream (this file, ``--serve-upstream``: uvicorn with
a download and an upload endpoint), the gateway (``jwt-gateway serve --config``, a public route
to that upstream, no body limit), and drives them from this process with httpx:

- download: ``GET /download?size=N`` (Content-Length framing, then chunked), sha256 of what the
  client received against the sha256 of what the upstream sent;
- upload: ``POST /upload`` with a chunked body of N bytes, sha256 computed by the upstream
  against the client's.

The gateway's resident memory is sampled from /proc every 5 ms (and its kernel peak, VmHWM,
reset before each transfer), so the report names the growth over the baseline taken after a
warm-up. The target: growth under 50 MB.

    .venv/bin/python bench/bench_proxy_stream.py                # 1 GiB each way
    .venv/bin/python bench/bench_proxy_stream.py --size 256MiB
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

BLOCK = hashlib.shake_256(b"jwt-gateway proxy tests").digest(1 << 20)
VENV_BIN = Path(sys.executable).parent
RSS_TARGET = 50 * 1000 * 1000
_UNITS = {"": 1, "k": 1 << 10, "ki": 1 << 10, "m": 1 << 20, "mi": 1 << 20, "g": 1 << 30, "gi": 1 << 30}


def parse_size(text: str) -> int:
    """``1GiB``, ``256MiB``, ``1000000`` -> bytes."""
    number = text.rstrip("KkMmGgIiBb")
    return int(number) * _UNITS[text[len(number) :].lower().rstrip("b") or ""]


def expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    full, rest = divmod(size, len(BLOCK))
    for _ in range(full):
        digest.update(BLOCK)
    digest.update(BLOCK[:rest])
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ upstream


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/download?size=N[&framing=chunked]`` and ``/upload`` (answers size and sha256)."""
    if scope["type"] != "http":
        return
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    if scope["path"] == "/download":
        size = int(query.get("size", "0"))
        headers = [(b"content-type", b"application/octet-stream")]
        if query.get("framing") != "chunked":
            headers.append((b"content-length", str(size).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        sent = 0
        view = memoryview(BLOCK)
        while sent < size:
            n = min(len(BLOCK), size - sent)
            sent += n
            await send({"type": "http.response.body", "body": bytes(view[:n]), "more_body": sent < size})
        return
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        digest.update(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(
        upstream_app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


# ----------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start listening on {port}")
        time.sleep(0.05)


@contextlib.contextmanager
def started(argv: list[str], port: int, what: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, process, what)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


class Watch:
    """Peak resident memory of a process while a transfer runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM
            self.kernel_peak = True
        except OSError:
            self.kernel_peak = False

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.kernel_peak:
            self.peak = max(self.peak, rss(self.pid, "VmHWM"))


# ---------------------------------------------------------------------------------------- drill


def download(url: str, size: int, framing: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    received = 0
    with httpx.stream("GET", f"{url}/download?size={size}&framing={framing}", timeout=120) as r:
        r.raise_for_status()
        for chunk in r.iter_raw(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    return received, digest.hexdigest()


def upload(url: str, size: int) -> dict[str, Any]:
    def body() -> Iterator[bytes]:
        sent = 0
        while sent < size:
            piece = BLOCK[: min(len(BLOCK), size - sent)]
            sent += len(piece)
            yield piece

    r = httpx.post(f"{url}/upload", content=body(), timeout=120)
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="bytes per transfer (default 1GiB)")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    size = parse_size(args.size)
    expected = expected_digest(size)
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        work = Path(tmp)
        upstream_port, gateway_port = free_port(), free_port()
        config = {
            "listen": {"host": "127.0.0.1", "port": gateway_port},
            "admin": {"enabled": False},
            "upstream": f"http://127.0.0.1:{upstream_port}",
            "proxy": {"max_body_bytes": None},
            "routes": [{"name": "all", "match": {"path": "/**"}, "auth": "public"}],
        }
        (work / "gateway.yaml").write_text(json.dumps(config))
        upstream_argv = [sys.executable, __file__, "--serve-upstream", str(upstream_port)]
        gateway_argv = [str(VENV_BIN / "jwt-gateway"), "serve", "--config", str(work / "gateway.yaml")]
        with (
            started(upstream_argv, upstream_port, "upstream", work / "upstream.log"),
            started(gateway_argv, gateway_port, "gateway", work / "gateway.log") as gateway,
        ):
            url = f"http://127.0.0.1:{gateway_port}"
            download(url, 8 << 20, "length")  # warm-up
            upload(url, 8 << 20)
            rows = []
            for name, run in (
                ("download (Content-Length)", lambda: download(url, size, "length")),
                ("download (chunked)", lambda: download(url, size, "chunked")),
                ("upload (chunked)", lambda: upload(url, size)),
            ):
                with Watch(gateway.pid) as watch:
                    began = time.perf_counter()
                    outcome = run()
                    seconds = time.perf_counter() - began
                if isinstance(outcome, dict):
                    got_size, got_digest = outcome["size"], outcome["sha256"]
                else:
                    got_size, got_digest = outcome
                ok = got_size == size and got_digest == expected
                growth = watch.peak - watch.baseline
                rows.append((name, seconds, ok, watch.baseline, watch.peak, growth))
    print(f"size per transfer: {size:,} bytes; gateway RSS target: growth < {RSS_TARGET / 1e6:.0f} MB\n")
    print("| transfer | seconds | MB/s | sha256 equal | gateway RSS before | peak | growth |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, seconds, ok, base, peak, growth in rows:
        print(
            f"| {name} | {seconds:.1f} | {size / seconds / 1e6:.0f} | {'yes' if ok else 'NO'} | "
            f"{base / 1e6:.1f} MB | {peak / 1e6:.1f} MB | {growth / 1e6:.1f} MB |"
        )
    failed = [r for r in rows if not r[2] or r[5] >= RSS_TARGET]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
