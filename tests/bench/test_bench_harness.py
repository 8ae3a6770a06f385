"""Static checks of bench/run_proxy_bench.py and bench/naive_proxy.py: no servers are started.

The configs the harness writes are checked with ``nginx -t`` and ``apache2 -t`` when those
binaries are installed (``bash bench/setup.sh``), and skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config.models import GatewayConfig

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve their module through sys.modules while the class is created.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load("bench_run_proxy_bench", BENCH_DIR / "run_proxy_bench.py")


@pytest.fixture(scope="module")
def keys(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> object:
    return bench.make_key_material(tmp_path_factory.mktemp("keys"))


WRK_SAMPLE = """\
Running 10s test @ http://127.0.0.1:8080/api/bench
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.08ms  151.52us   5.03ms   91.86%
    Req/Sec    29.71k     1.06k   31.02k    80.00%
  Latency Distribution
     50%  862.00us
     75%    1.10ms
     90%    1.20ms
     99%    1.60ms
  295620 requests in 10.00s, 42.01MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  29559.46
Transfer/sec:      4.20MB
"""


def test_parse_wrk_output_reads_every_figure(bench: ModuleType) -> None:
    result = bench.parse_wrk_output(WRK_SAMPLE)
    assert result.requests_per_sec == pytest.approx(29559.46)
    assert result.p50_ms == pytest.approx(0.862)
    assert result.p75_ms == pytest.approx(1.10)
    assert result.p90_ms == pytest.approx(1.20)
    assert result.p99_ms == pytest.approx(1.60)
    assert result.requests == 295620
    assert result.duration_s == pytest.approx(10.0)
    assert result.non_2xx == 12
    assert result.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert not result.valid


def test_parse_wrk_output_clean_run_with_second_latencies(bench: ModuleType) -> None:
    text = (
        WRK_SAMPLE.replace("  Socket errors: connect 0, read 2, write 0, timeout 1\n", "")
        .replace("  Non-2xx or 3xx responses: 12\n", "")
        .replace("99%    1.60ms", "99%    1.25s")
        .replace("in 10.00s,", "in 1.00m,")
    )
    result = bench.parse_wrk_output(text)
    assert result.valid
    assert result.non_2xx == 0
    assert result.socket_errors == {}
    assert result.p99_ms == pytest.approx(1250.0)
    assert result.duration_s == pytest.approx(60.0)


@pytest.mark.parametrize(
    "text",
    ["", "wrk: command not found", WRK_SAMPLE.replace("     99%    1.60ms\n", "")],
)
def test_parse_wrk_output_refuses_incomplete_output(bench: ModuleType, text: str) -> None:
    with pytest.raises(ValueError, match="wrk --latency"):
        bench.parse_wrk_output(text)


def test_wrk_argv_sends_the_token_with_latency(bench: ModuleType) -> None:
    argv = bench.wrk_argv("http://127.0.0.1:1/api/bench", "tok", 5.0, 32, 1)
    assert argv[:5] == ["wrk", "-t1", "-c32", "-d5s", "--latency"]
    assert argv[-3:] == ["-H", "Authorization: Bearer tok", "http://127.0.0.1:1/api/bench"]
    assert bench.pinned(argv, 0)[:3] == ["taskset", "-c", "0"]
    assert bench.pinned(argv, None) == argv


def test_summary_uses_medians_of_valid_runs_only(bench: ModuleType) -> None:
    def run(rps: float, p99: float, non_2xx: int = 0) -> object:
        return bench.WrkResult(rps, 1.0, 1.5, 2.0, p99, int(rps * 10), 10.0, non_2xx)

    runs = [run(100, 5), run(300, 9), run(200, 7), run(10_000, 1, non_2xx=3)]
    summary = bench.summarize("apache", runs)
    assert (summary.runs, summary.valid_runs) == (4, 3)
    assert summary.median_rps == 200
    assert summary.p99_ms == 7
    assert (summary.min_rps, summary.max_rps) == (100, 300)
    assert bench.summarize("naive", [run(1, 1, non_2xx=1)]).median_rps is None


def test_ratios_and_table(bench: ModuleType) -> None:
    def summary(name: str, rps: float | None) -> object:
        return bench.Summary(name, 5, 5 if rps else 0, rps, 1.0, 2.0, rps, rps)

    summaries = {
        "nginx-proxy": summary("nginx-proxy", 30_000),
        "apache": summary("apache", 4_000),
        "naive": summary("naive", 250),
        "gateway": summary("gateway", 8_000),
    }
    ratios = bench.ratios(summaries)
    assert ratios == {
        "gateway/apache": pytest.approx(2.0),
        "gateway/naive": pytest.approx(32.0),
        "gateway/nginx-proxy": pytest.approx(8_000 / 30_000),
    }
    assert bench.ratios({"apache": summaries["apache"]}) == {}
    table = bench.markdown_table(
        ["backend", "apache", "gateway"],
        summaries,
        {"backend": "SKIPPED: not started"},
        ratios,
    )
    assert "| apache |" in table and "| 4,000 |" in table
    assert "| backend |" in table and "SKIPPED" in table
    assert "gateway/apache: **2.00x**" in table


def test_key_material_tokens(bench: ModuleType, keys: object) -> None:
    public_pem = keys.public_key_file.read_text()
    claims = jwt.decode(
        keys.token, public_pem, algorithms=["RS256"], audience=bench.AUDIENCE, issuer=bench.ISSUER
    )
    assert claims["sub"] == bench.SUBJECT
    assert jwt.get_unverified_header(keys.token)["alg"] == "RS256"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(keys.bad_signature_token, public_pem, algorithms=["RS256"], audience=bench.AUDIENCE)
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(keys.wrong_audience_token, public_pem, algorithms=["RS256"], audience=bench.AUDIENCE)
    public_key = serialization.load_pem_public_key(public_pem.encode())
    assert public_key.key_size == 2048
    cert = x509.load_pem_x509_certificate(keys.cert_file.read_bytes())
    assert cert.public_key() == public_key
    assert keys.private_key_file.stat().st_mode & 0o077 == 0


def test_gateway_config_is_valid_for_the_gateway_schema(bench: ModuleType, keys: object) -> None:
    text = bench.gateway_config_yaml(8080, 9901, 8000, keys.public_key_file)
    config = GatewayConfig.model_validate(yaml.safe_load(text))
    assert config.listen.port == 8080
    assert config.upstream == "http://127.0.0.1:8000"
    provider = config.providers["bench"]
    assert provider.issuer == bench.ISSUER
    assert provider.algorithms == ["RS256"]
    assert provider.audiences == [bench.AUDIENCE]
    assert config.routes[0].match.path == "/api/**"
    assert config.logging.access_log is True
    # Issue 3's targets hold with every production feature on: metrics (the admin listener),
    # the access log, the token cache, forwarding headers (always regenerated).
    assert config.admin.enabled is True and config.admin.port == 9901
    assert config.logging.format == "json"
    assert config.token_cache.enabled is True


def test_gateway_command_template(bench: ModuleType, tmp_path: Path) -> None:
    argv = bench.gateway_argv(bench.GATEWAY_COMMAND, tmp_path / "g.yaml")
    assert argv[1:] == ["serve", "--config", str(tmp_path / "g.yaml")]
    assert argv[0].endswith("/jwt-gateway")
    custom = bench.gateway_argv("{bin}/python -m gateway serve --config {config}", tmp_path / "g.yaml")
    assert custom[1:4] == ["-m", "gateway", "serve"]


def test_parse_args(bench: ModuleType) -> None:
    args = bench.parse_args(["--quick", "--targets", "gateway,apache"])
    assert (args.rounds, args.duration) == (1, 2.0)
    assert args.selected == ["apache", "gateway"]  # always in the canonical order
    assert bench.parse_args([]).selected == list(bench.TARGET_NAMES)
    with pytest.raises(SystemExit):
        bench.parse_args(["--targets", "envoy"])


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (bench/setup.sh)")
@pytest.mark.parametrize("kind", ["backend", "proxy"])
def test_nginx_configs_pass_nginx_t(bench: ModuleType, tmp_path: Path, kind: str) -> None:
    (tmp_path / "tmp").mkdir()
    conf = (
        bench.nginx_backend_conf(tmp_path, 18080)
        if kind == "backend"
        else bench.nginx_proxy_conf(tmp_path, 18081, 18080)
    )
    conf_file = tmp_path / "nginx.conf"
    conf_file.write_text(conf)
    done = subprocess.run(
        ["nginx", "-t", "-q", "-p", f"{tmp_path}/", "-c", str(conf_file), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _apache_ready(bench: ModuleType) -> bool:
    return os.path.exists(bench.APACHE_BIN) and (bench.APACHE_MODULES_DIR / "mod_auth_openidc.so").exists()


def test_apache_conf_passes_apache_t(bench: ModuleType, keys: object, tmp_path: Path) -> None:
    if not _apache_ready(bench):
        pytest.skip("apache2 / mod_auth_openidc not installed (bench/setup.sh)")
    (tmp_path / "run").mkdir()
    conf = bench.apache_conf(tmp_path, 18082, 18080, keys.cert_file)
    assert "AuthType oauth20" in conf
    assert f"OIDCOAuthVerifyCertFiles {keys.cert_file}" in conf
    # Require lines outside RequireAll would be alternatives, not conditions.
    assert conf.index("<RequireAll>") < conf.index("Require claim iss:") < conf.index("</RequireAll>")
    assert conf.index("<RequireAll>") < conf.index("Require claim aud:") < conf.index("</RequireAll>")
    conf_file = tmp_path / "httpd.conf"
    conf_file.write_text(conf)
    done = subprocess.run(
        [bench.APACHE_BIN, "-t", "-f", str(conf_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Syntax OK" in done.stderr + done.stdout


@pytest.fixture
def naive(keys: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("NAIVE_PUBLIC_KEY_FILE", str(keys.public_key_file))
    # Nothing listens there: the refusals below never reach the upstream.
    monkeypatch.setenv("NAIVE_UPSTREAM", "http://127.0.0.1:9")
    yield _load("bench_naive_proxy", BENCH_DIR / "naive_proxy.py")
    sys.modules.pop("bench_naive_proxy", None)


async def test_naive_proxy_refuses_missing_and_forged_tokens(naive: ModuleType, keys: object) -> None:
    transport = httpx.ASGITransport(app=naive.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        missing = await client.get("/api/bench")
        forged = await client.get(
            "/api/bench", headers={"Authorization": f"Bearer {keys.bad_signature_token}"}
        )
        wrong_aud = await client.get(
            "/api/bench", headers={"Authorization": f"Bearer {keys.wrong_audience_token}"}
        )
    await naive.client.aclose()
    assert [missing.status_code, forged.status_code, wrong_aud.status_code] == [401, 401, 401]
