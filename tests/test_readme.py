"""README.md says what the code does: its gateway configs compile, and the metrics it lists exist.

Every fenced ``yaml`` block that is a whole gateway config (it has ``routes:``) is compiled the
way the README says it is used: a proxy or forward-auth config passes ``jwt-gateway check``
(:func:`gateway.tools.check`); a config of the "Inside an ASGI/WSGI app" sections is compiled as
the middlewares compile it (:class:`gateway.middleware.common.PolicyFactory`: no upstream
needed). Every metric of the Operations section appears, with the labels listed, in a /metrics
scrape of a gateway built as ``jwt-gateway serve`` builds it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.config.loader import load_config
from gateway.middleware.common import PolicyFactory
from gateway.tools import check
from tests.ops.harness import NamedUpstream, OpsGateway
from tests.support.jwks_server import JWKSServer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

_FENCE = re.compile(r"^```yaml\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{1,6} (?P<title>.+)$", re.MULTILINE)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class ConfigBlock:
    """A gateway config from the README: its text, the line it starts on, its section."""

    text: str
    line: int
    section: str

    @property
    def in_process(self) -> bool:
        """Documented for the ASGI/WSGI middleware (routes on the app's paths, no upstream)."""
        return "ASGI app" in self.section or "WSGI app" in self.section


def config_blocks() -> list[ConfigBlock]:
    blocks = []
    for m in _FENCE.finditer(README):
        data = yaml.safe_load(m.group("body"))
        if not isinstance(data, dict) or "routes" not in data:
            continue  # a policy test file, not a gateway config
        headings = [h.group("title") for h in _HEADING.finditer(README, 0, m.start())]
        line = README.count("\n", 0, m.start()) + 2  # the block's first line
        blocks.append(ConfigBlock(m.group("body"), line, headings[-1]))
    return blocks


BLOCKS = config_blocks()


def test_the_readme_has_its_three_configs() -> None:
    # Configuration by example (proxy), the ASGI middleware's gateway.yaml, forward-auth.yaml.
    assert [(b.section, b.in_process) for b in BLOCKS] == [
        ("Configuration by example", False),
        ("Inside an ASGI app (Starlette, FastAPI)", True),
        ("Forward-auth for nginx `auth_request` and Traefik ForwardAuth", False),
    ]


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}" for b in BLOCKS])
def test_readme_config_compiles(block: ConfigBlock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Secrets come from ${VAR}: give each a value long enough for an HMAC key.
    for name in set(_VAR.findall(block.text)):
        monkeypatch.setenv(name, f"{name.lower()}-placeholder-secret-of-32-bytes-or-more")
    path = tmp_path / "gateway.yaml"
    path.write_text(block.text)
    if block.in_process:
        policy = PolicyFactory(str(path)).build()
        assert len(policy.config.routes) == len(yaml.safe_load(block.text)["routes"])
        assert policy.config.mode == "middleware"  # so that `check` (below) agrees too
    out = io.StringIO()
    assert check(str(path), out=out) == 0
    assert f"{path}: OK" in out.getvalue() and "warning:" not in out.getvalue(), out.getvalue()
    assert load_config(path).routes  # and it is what `serve` would load


# ------------------------------------------------------------------------------------ metrics


def documented_metrics() -> dict[str, set[str]]:
    """The Operations section's metrics: full name -> the labels listed."""
    start = README.index("- **Metrics** (`jwt_gateway_` prefix):")
    section = README[start : README.index("Labels are bounded", start)]
    listed = re.findall(r"`([a-z_]+)(?:\{([a-z_,]+)\})?`", section.split(":", 1)[1])
    return {f"jwt_gateway_{name}": set(labels.split(",")) if labels else set() for name, labels in listed}


def test_the_readme_lists_the_metrics() -> None:
    documented = documented_metrics()
    assert len(documented) == 14
    assert documented["jwt_gateway_requests_total"] == {"route", "method", "status_class", "decision"}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, dict[str, str], float]]]:
    """/metrics of a served gateway after an allowed request (keys fetched from a real JWKS
    URL), the same token again (a cache hit) and a request without a token (a denial)."""
    with JWKSServer() as idp, NamedUpstream("app") as upstream:
        key = idp.add_key("RS256")
        config = {
            "upstream": upstream.url,
            "providers": {
                "idp": {
                    "issuer": idp.issuer,
                    "jwks_uri": idp.jwks_uri,
                    "algorithms": ["RS256"],
                    "audiences": ["api"],
                }
            },
            "routes": [{"name": "api", "match": {"path": "/api/**"}}],
        }
        with OpsGateway(config, tmp_path_factory.mktemp("readme") / "gateway.yaml") as gw:
            gw.wait_ready()
            token = idp.mint(key)
            statuses = [
                httpx.get(gw.url + "/api/orders", headers=headers).status_code
                for headers in ({"Authorization": f"Bearer {token}"},) * 2 + ({},)
            ]
            assert statuses == [200, 200, 401]
            yield gw.metrics()


@pytest.mark.parametrize("name", sorted(documented_metrics()))
def test_each_listed_metric_is_exposed_with_its_labels(
    name: str, scraped: list[tuple[str, dict[str, str], float]]
) -> None:
    labels = documented_metrics()[name]
    # A histogram is exposed as _bucket/_count/_sum; its _count carries the listed labels.
    samples = [s for s in scraped if s[0] in (name, f"{name}_count")]
    assert samples, f"{name} is not in the scrape"
    for _, sample_labels, _ in samples:
        assert set(sample_labels) == labels, (name, sample_labels)
