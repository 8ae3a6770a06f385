"""The ``jwt-gateway`` command line: explain, test and check, in process (``main([...])``), plus
one smoke test of the installed console script."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = str(ROOT / "config/examples/policy.yaml")
EXAMPLE_TESTS = str(ROOT / "config/examples/policy_tests.yaml")
SECRET = "a-test-hmac-secret-of-at-least-32-bytes!!"

CONFIG: dict[str, Any] = {
    "upstream": "http://127.0.0.1:9",
    "providers": {
        "hs": {"issuer": "https://hs.test", "secret": SECRET, "algorithms": ["HS256"], "audiences": ["api"]}
    },
    "headers": {"claims": {"X-User-Id": "sub"}},
    "routes": [
        {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
        {"name": "admin", "match": {"path": "/admin/**"}, "require": {"claim": "roles", "contains": "admin"}},
        {"name": "api", "match": {"path": "/api/**"}},
    ],
}


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as caught:
        main(list(argv))
    assert caught.value.code == 2
    return capsys.readouterr().err


def hs_token(**claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": "https://hs.test", "aud": "api", "sub": "alice", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


# ---------------------------------------------------------------------------------- explain


def test_explain_allowed_exits_0(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, out, _ = run(
        capsys,
        "explain",
        "--config",
        config,
        "--path",
        "/admin/x",
        "--claims",
        '{"sub": "a", "roles": ["admin"]}',
    )
    assert code == 0
    assert "MATCH [1] admin" in out and "ALLOWED" in out and "x-user-id: a" in out


def test_explain_denied_exits_1(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, out, _ = run(
        capsys, "explain", "-c", config, "-X", "DELETE", "--path", "/admin/x", "--claims", "{}"
    )
    assert code == 1
    assert "DENIED 403 rule_failed" in out and "claim absent" in out


def test_explain_json(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, out, _ = run(
        capsys,
        "explain",
        "--config",
        config,
        "--path",
        "/public/x?q=1",
        "--host",
        "gw.test",
        "-H",
        "X-User-Id: mallory",
        "--header",
        "Connection:close",
        "--json",
    )
    assert code == 0
    report = json.loads(out)
    assert report["request"] == {
        "method": "GET",
        "path": "/public/x",
        "query": "q=1",
        "host": "gw.test",
        "credentials": "none",
    }
    assert {h["name"] for h in report["stripped_headers"]} == {"host", "x-user-id", "connection"}
    assert report["upstream"]["url"] == "http://127.0.0.1:9/public/x?q=1"


def test_explain_token_from_stdin_is_never_printed(
    capsys: pytest.CaptureFixture[str], config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = hs_token(roles=["admin"])
    monkeypatch.setattr(sys, "stdin", io.StringIO(token + "\n"))
    code, out, err = run(capsys, "explain", "--config", config, "--path", "/admin/x", "--token", "-")
    assert code == 0
    assert "verified (provider hs)" in out
    assert token not in out and token not in err


def test_explain_claims_from_a_file(capsys: pytest.CaptureFixture[str], config: str, tmp_path: Path) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text('{"sub": "bob", "roles": ["admin"]}')
    code, out, _ = run(capsys, "explain", "--config", config, "--path", "/admin/x", "--claims", f"@{claims}")
    assert code == 0 and "x-user-id: bob" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--claims", "{not json"], "--claims: not a readable JSON object"),
        (["--claims", "[1, 2]"], "must be a JSON object"),
        (["--claims", "@/nonexistent/claims.json"], "--claims: not a readable JSON object"),
        (["--claims", "{}", "--token", "x"], "not allowed with argument"),
        (["-H", "X-User-Id mallory"], "write 'Name: value'"),
        (["-H", "X-User-Id : mallory"], "write 'Name: value'"),
        (["-H", ": mallory"], "write 'Name: value'"),
        (["-H", "Ünicode: x"], "is not a valid header name"),
    ],
)
def test_explain_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], config: str
) -> None:
    err = usage_error(capsys, "explain", "--config", config, "--path", "/api/x", *argv)
    assert message in err


def test_explain_config_error_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [{match: {path: admin}}]\n")
    code, out, err = run(capsys, "explain", "--config", str(bad), "--path", "/admin")
    assert code == 2 and out == ""
    assert (
        err.strip()
        == f"jwt-gateway: config error: {bad}: routes[0].match.path: a path pattern must start with /"
    )


# ------------------------------------------------------------------------------------- test


def test_policy_tests_pass_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "test", EXAMPLE_TESTS)
    assert code == 0
    assert out.count("PASS  ") >= 15 and "FAIL" not in out


def test_policy_tests_with_explicit_config(
    capsys: pytest.CaptureFixture[str], config: str, tmp_path: Path
) -> None:
    tests = tmp_path / "t.yaml"
    tests.write_text(
        "cases:\n"
        "  - {name: ok, request: {path: /public/x}, expect: {status: 200}}\n"
        "  - {name: bad, request: {path: /api/x}, expect: {status: 200, reason: ok}}\n"
    )
    code, out, _ = run(capsys, "test", "--config", config, str(tests))
    assert code == 1
    assert "PASS  ok" in out
    assert "FAIL  bad: status 401, expected 200; reason token_missing, expected ok" in out
    assert "1 passed, 1 failed" in out


def test_invalid_test_file_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], config: str, tmp_path: Path
) -> None:
    tests = tmp_path / "t.yaml"
    tests.write_text("cases:\n  - {name: a, request: {path: /x}, expect: {status: OK}}\n")
    code, out, err = run(capsys, "test", "--config", config, str(tests))
    assert code == 2 and out == ""
    assert err == (
        f"jwt-gateway: invalid test file: {tests}: cases[0].expect.status: "
        "Input should be a valid integer, unable to parse string as an integer\n"
    )


def test_policy_tests_against_an_invalid_config_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [{match: {path: /x}, auth: maybe}]\n")
    code, _, err = run(capsys, "test", "--config", str(bad), EXAMPLE_TESTS)
    assert code == 2 and err.startswith("jwt-gateway: config error: ")


# ------------------------------------------------------------------------------------ check


def test_check_warns_about_a_route_that_can_never_match(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = json.loads(json.dumps(CONFIG))
    config["routes"] += [
        {"name": "admin-users", "match": {"path": "/admin/users", "methods": ["GET"]}, "auth": "public"},
        {"name": "all-public", "match": {"path": "/**"}, "auth": "public"},
        {"name": "too-late", "match": {"path": "/anything/{id}"}},
    ]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, _ = run(capsys, "check", "--config", str(path))
    assert code == 0
    assert "warning: routes[3] (admin-users) can never match: routes[1] (admin) comes first" in out
    assert "warning: routes[5] (too-late) can never match: routes[4] (all-public) comes first" in out
    assert "2 warning(s)" in out


def test_check_without_warnings(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, out, _ = run(capsys, "check", "--config", config)
    assert code == 0 and "warning:" not in out
    assert "routes (first match in file order wins):" in out


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "check", "explain", "test", "demo"):
        assert command in out


# ---------------------------------------------------------------------- the console script


def test_console_script_smoke() -> None:
    script = Path(sys.executable).parent / "jwt-gateway"
    done = subprocess.run(
        [str(script), "explain", "--config", EXAMPLE_CONFIG, "--path", "/healthz", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decision"]["outcome"] == "allowed"
    done = subprocess.run(
        [str(script), "test", EXAMPLE_TESTS], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
