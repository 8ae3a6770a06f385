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

#: The five commands the banner prints (``{base}`` is the gateway's URL), with the status each
#: one's comment promises; README's Quick start table documents the same five.
CURL_LINES = [
    ("curl -i {base}/public/hello", 200),
    ('curl -i -H "Authorization: Bearer $USER_TOKEN" {base}/api/orders', 200),
    ("curl -i {base}/api/orders", 401),
    ('curl -i -H "Authorization: Bearer $USER_TOKEN" {base}/admin/users', 403),
    ('curl -i -H "Authorization: Bearer $ADMIN_TOKEN" {base}/admin/users', 200),
]
_CURL = re.compile(
    r'^\s*curl -i (?:-H "(?P<header>[^"]+)" )?(?P<url>\S+)\s+# (?P<status>\d{3}):', re.MULTILINE
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listing(folder: Path) -> list[str]:
    """Every file and directory below ``folder`` (relative paths, sorted)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_demo_serves_the_documented_statuses(tmp_path: Path) -> None:
    # The demo runs in an empty working directory with a private TMPDIR: its issuer key must
    # live in memory only, so neither may gain a file.
    cwd, tmpdir = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmpdir.mkdir()
    before = listing(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmpdir)},
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
        tokens = {"$USER_TOKEN": user.group(1), "$ADMIN_TOKEN": admin.group(1)}
        base = f"http://127.0.0.1:{port}"

        # All five commands are printed ready to paste, each with the status it will give.
        printed = [(m.group(0).split("#")[0].strip(), int(m.group("status"))) for m in _CURL.finditer(output)]
        assert printed == [(line.format(base=base), status) for line, status in CURL_LINES], output

        # Run each printed command's equivalent and get the status its comment promises.
        for match in _CURL.finditer(output):
            headers = {}
            if match.group("header"):
                name, _, value = match.group("header").partition(": ")
                for variable, token in tokens.items():
                    value = value.replace(variable, token)
                headers[name] = value
            r = httpx.get(match.group("url"), headers=headers)
            assert r.status_code == int(match.group("status")), (match.group(0), r.text)

        # The documented details of each answer.
        r = httpx.get(f"{base}/api/orders", headers={"Authorization": f"Bearer {user.group(1)}"})
        assert r.status_code == 200
        assert r.json()["headers"]["x-user-id"] == ["alice"]
        r = httpx.get(f"{base}/api/orders")
        assert r.status_code == 401
        # No token: a bare challenge (RFC 6750 section 3.1), no error attribute.
        assert r.headers["www-authenticate"] == 'Bearer realm="jwt-gateway"'
        assert r.headers["content-type"] == "application/problem+json"
        r = httpx.get(f"{base}/admin/users", headers={"Authorization": f"Bearer {user.group(1)}"})
        assert r.status_code == 403
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="jwt-gateway", ')
        assert 'error="insufficient_scope"' in challenge
        assert r.json()["reason"] == "rule_failed"
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
    assert listing(tmp_path) == before, "the demo wrote files"
