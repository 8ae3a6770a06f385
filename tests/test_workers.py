"""``serve --workers N`` (gateway/workers.py) up to the fork: the shared listening sockets, and the
failures that must stop it before any worker exists. (Forked workers, signal forwarding, restarts
and shared metrics: tests/e2e/test_ops_process.py.)"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import workers
from gateway.errors import ConfigError
from gateway.workers import run_workers


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("host", "family"),
    [
        ("127.0.0.1", socket.AF_INET),
        pytest.param(
            "::1",
            socket.AF_INET6,
            marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here"),
        ),
    ],
)
def test_bind_gives_an_inheritable_listening_socket(host: str, family: socket.AddressFamily) -> None:
    sock = workers._bind(host, 0)
    try:
        assert sock.family == family and sock.type == socket.SOCK_STREAM
        assert sock.get_inheritable()  # the forked workers accept on it
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)  # listening already
        with socket.create_connection((host, sock.getsockname()[1]), timeout=2):
            conn, _ = sock.accept()
            conn.close()
    finally:
        sock.close()


@pytest.fixture
def no_fork(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test, instead of forking, if run_workers gets as far as starting a worker."""

    def fork() -> int:
        raise AssertionError("run_workers forked a worker")

    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    yield
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # left as it was found


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


def write_config(tmp_path: Path, **top: Any) -> str:
    data = {"upstream": "http://127.0.0.1:9", "routes": [{"match": {"path": "/**"}, "auth": "public"}], **top}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


class RecordingSocketModule:
    """The ``socket`` module as gateway.workers sees it, recording every socket it makes."""

    def __init__(self) -> None:
        self.made: list[socket.socket] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    def socket(self, *args: Any, **kwargs: Any) -> socket.socket:
        sock = socket.socket(*args, **kwargs)
        self.made.append(sock)
        return sock


@pytest.fixture
def sockets(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingSocketModule]:
    recorder = RecordingSocketModule()
    monkeypatch.setattr(workers, "socket", recorder)
    yield recorder
    for sock in recorder.made:  # whatever the test found, no fd outlives it
        sock.close()


@pytest.mark.usefixtures("no_fork")
def test_an_invalid_config_stops_before_any_socket_or_worker(
    tmp_path: Path, sockets: RecordingSocketModule
) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        run_workers(str(tmp_path / "missing.yaml"), host="127.0.0.1", port=0, workers=2)
    assert sockets.made == []


def taken(tmp_path: Path, taken_port: int, which: str) -> tuple[str, int]:
    """A config and a proxied port such that ``which`` listener's port is taken."""
    if which == "proxied":
        return write_config(tmp_path, admin={"enabled": False}), taken_port
    return write_config(tmp_path, admin={"host": "127.0.0.1", "port": taken_port}), 0


@pytest.mark.usefixtures("no_fork")
@pytest.mark.parametrize("which", ["proxied", "admin"])
def test_a_taken_port_stops_before_any_worker(
    tmp_path: Path, taken_port: int, which: str, sockets: RecordingSocketModule
) -> None:
    config, port = taken(tmp_path, taken_port, which)
    with pytest.raises(OSError):
        run_workers(config, host="127.0.0.1", port=port, workers=2)
    assert len(sockets.made) == (1 if which == "proxied" else 2)


@pytest.mark.usefixtures("no_fork")
@pytest.mark.parametrize("which", ["proxied", "admin"])
def test_a_taken_port_leaves_no_socket_open(
    tmp_path: Path, taken_port: int, which: str, sockets: RecordingSocketModule
) -> None:
    config, port = taken(tmp_path, taken_port, which)
    with pytest.raises(OSError):
        run_workers(config, host="127.0.0.1", port=port, workers=2)
    assert sockets.made and [sock.fileno() for sock in sockets.made] == [-1] * len(sockets.made)
