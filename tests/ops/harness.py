"""Test harness for the operations work: the gateway with its metrics and admin listener, in a
thread (:class:`OpsGateway`) or as a real ``jwt-gateway serve`` process (:class:`GatewayProcess`),
an upstream that says who it is (:class:`NamedUpstream`), and /metrics parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway import logs
from gateway.asgi_types import Receive, Scope, Send
from gateway.config.loader import load_config
from gateway.http.admin import AdminApp
from gateway.reload import Reloader
from gateway.server import build_app, uvicorn_config
from tests.support.servers import ServerThread, free_socket

__all__ = [
    "GatewayProcess",
    "NamedUpstream",
    "OpsGateway",
    "capture_access",
    "free_port",
    "metric",
    "parse_metrics",
    "wait_until",
]

JWT_GATEWAY = Path(sys.executable).with_name("jwt-gateway")


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with contextlib.closing(free_socket()) as sock:
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Any, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true (TimeoutError after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------------- metrics

Samples = list[tuple[str, dict[str, str], float]]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, labels, value)."""
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


# ----------------------------------------------------------------------------------- upstream


class NamedUpstream(ServerThread):
    """An upstream answering JSON ``{"upstream": name, "path": ..., "headers": {...},
    "header_names": [...]}``.

    Paths containing ``/slow`` wait ``delay`` seconds first. ``active`` counts requests being
    answered, ``count`` every request received.
    """

    def __init__(self, name: str, *, delay: float = 1.0) -> None:
        self.name = name
        self.delay = delay
        self.active = 0
        self.count = 0
        self.requests: list[dict[str, Any]] = []
        super().__init__(self._app)

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.count += 1
        self.active += 1
        try:
            while (await receive()).get("more_body"):
                pass
            headers: dict[str, str] = {}
            for raw_name, raw_value in scope["headers"]:
                headers[raw_name.decode("latin-1")] = raw_value.decode("latin-1")
            self.requests.append({"path": scope["path"], "headers": headers})
            if "/slow" in scope["path"]:
                await asyncio.sleep(self.delay)
            names = [raw_name.decode("latin-1") for raw_name, _ in scope["headers"]]
            answer = {"upstream": self.name, "path": scope["path"], "headers": headers, "header_names": names}
            body = json.dumps(answer).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            self.active -= 1

    def __enter__(self) -> NamedUpstream:
        self.start()
        return self


# ------------------------------------------------------------------------------ in a thread


@contextlib.contextmanager
def capture_access(fmt: str = "json") -> Iterator[io.StringIO]:
    """Collect the access lines written while the block runs (in this process)."""
    buffer = io.StringIO()
    previous = logs._writer
    logs._writer = logs.AccessWriter(buffer, fmt)
    try:
        yield buffer
    finally:
        logs._writer = previous


class OpsGateway:
    """The gateway as ``jwt-gateway serve`` builds it (metrics, observer, admin app), served by
    real uvicorn in threads. The config is written to ``path`` so that reloads can read it."""

    def __init__(self, config: Mapping[str, Any], path: Path) -> None:
        self.path = path
        path.write_text(yaml.safe_dump(json.loads(json.dumps(config))))
        cfg = load_config(str(path))
        self.config = cfg
        self.app = build_app(cfg, str(path))
        self.admin_app = AdminApp(self.app)
        self.server = ServerThread(self.app, config=uvicorn_config(self.app, "127.0.0.1", 0, cfg))
        self.admin = ServerThread(self.admin_app, config=uvicorn_config(self.admin_app, "127.0.0.1", 0, cfg))
        self.reloader = Reloader(self.app, str(path))

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def admin_url(self) -> str:
        return self.admin.url

    def metrics(self) -> Samples:
        response = httpx.get(self.admin_url + "/metrics")
        assert response.status_code == 200
        return parse_metrics(response.text)

    def reload(self, config: Mapping[str, Any] | str) -> bool:
        """Write ``config`` (a mapping, or raw text) and reload it on the server's loop."""
        text = config if isinstance(config, str) else yaml.safe_dump(json.loads(json.dumps(config)))
        self.path.write_text(text)
        result: bool = self.server.call(self.reloader.reload_once())
        return result

    def wait_ready(self, timeout: float = 10.0) -> None:
        wait_until(
            lambda: httpx.get(self.admin_url + "/readyz").status_code == 200, timeout, what="readiness"
        )

    def __enter__(self) -> OpsGateway:
        self.server.start()
        self.admin.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.admin.stop()
        self.server.stop()


# --------------------------------------------------------------------------- as a process


class GatewayProcess:
    """``jwt-gateway serve --config FILE`` in a subprocess, its output captured in files.

    ``config`` must set ``listen`` and ``admin`` ports (see :func:`free_port`).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        folder: Path,
        *,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.config_path = folder / "gateway.yaml"
        out = folder / "out"
        out.mkdir(exist_ok=True)
        self.stdout_path = out / "stdout.log"
        self.stderr_path = out / "stderr.log"
        self.write_config(config)
        self.port: int = config["listen"]["port"]
        self.admin_port: int = config["admin"]["port"]
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def write_config(self, config: Mapping[str, Any] | str) -> None:
        """Replace the config file (atomically: a reload never reads half a file)."""
        text = config if isinstance(config, str) else yaml.safe_dump(json.loads(json.dumps(config)))
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        command = [str(JWT_GATEWAY), "serve", "--config", str(self.config_path)]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=self.env)

        def alive() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited ({self.process.returncode}):\n{self.stderr()}")
            try:
                return httpx.get(self.admin_url + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(alive, timeout, interval=0.05, what="the gateway process")
        return self

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait. Returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def metrics(self) -> Samples:
        response = httpx.get(self.admin_url + "/metrics", timeout=5)
        assert response.status_code == 200
        return parse_metrics(response.text)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def access_lines(self) -> list[dict[str, Any]]:
        """The JSON access lines written so far."""
        return [json.loads(line) for line in self.stdout().splitlines() if line.startswith("{")]

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop(timeout=10)
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_in_threads(count: int, target: Any) -> list[threading.Thread]:
    """Start ``count`` daemon threads running ``target(index)``."""
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads
