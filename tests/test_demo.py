"""`make run` / `jwt-gateway demo`: the printed curl commands give the documented statuses."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_demo_serves_the_documented_statuses() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        output = ""
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while "Press Ctrl-C" not in output:
            assert time.monotonic() < deadline, output
            line = proc.stdout.readline()
            assert line, output
            output += line
        user = re.search(r"USER_TOKEN=(\S+)", output)
        admin = re.search(r"ADMIN_TOKEN=(\S+)", output)
        assert user and admin
        base = f"http://127.0.0.1:{port}"
        # The commands are printed ready to paste; run their equivalents.
        assert f"curl -i {base}/public/hello" in output
        assert httpx.get(f"{base}/public/hello").status_code == 200
        r = httpx.get(f"{base}/api/orders", headers={"Authorization": f"Bearer {user.group(1)}"})
        assert r.status_code == 200
        assert r.json()["headers"]["x-user-id"] == ["alice"]
        r = httpx.get(f"{base}/api/orders")
        assert r.status_code == 401
        r = httpx.get(f"{base}/admin/users", headers={"Authorization": f"Bearer {user.group(1)}"})
        assert r.status_code == 403
        r = httpx.get(f"{base}/admin/users", headers={"Authorization": f"Bearer {admin.group(1)}"})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
    assert proc.returncode == 0
