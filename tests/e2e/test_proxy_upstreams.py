"""Upstream kinds and upstream TLS over real servers: http, https (verification on by default,
CA bundle, mTLS client certificate), unix sockets, per-route upstreams; and the shared pool
never carries one user's cookies into another user's request (GHSA-7vwr-g6pm-9hc8).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.support.proxy_servers import StreamUpstream
from tests.support.servers import GatewayServer


def config(upstream_url: str, *, routes: list[dict[str, Any]] | None = None, **proxy: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream_url,
        "proxy": proxy,
        "routes": routes or [{"name": "all", "match": {"path": "/**"}, "auth": "public"}],
    }


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    wrong = ca.issue_cert("other.example")
    client = ca.issue_cert("gateway.client")
    other_ca = trustme.CA()
    files = {
        "ca": folder / "ca.pem",
        "other_ca": folder / "other-ca.pem",
        "server": folder / "server.pem",
        "wrong": folder / "wrong.pem",
        "client": folder / "client.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    other_ca.cert_pem.write_to_path(str(files["other_ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    wrong.private_key_and_cert_chain_pem.write_to_path(str(files["wrong"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    client.private_key_pem.write_to_path(str(folder / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(folder / "client.crt"))
    out = {name: str(path) for name, path in files.items()}
    out["client_key"] = str(folder / "client.key")
    out["client_crt"] = str(folder / "client.crt")
    return out


@pytest.fixture(scope="module")
def https_upstream(pki: dict[str, str]) -> Iterator[StreamUpstream]:
    with StreamUpstream(tls={"ssl_certfile": pki["server"]}) as server:
        yield server


def test_https_upstream_with_a_ca_bundle(https_upstream: StreamUpstream, pki: dict[str, str]) -> None:
    with GatewayServer(config(https_upstream.url, tls={"ca_file": pki["ca"]})) as gw:
        r = httpx.get(gw.url + "/echo")
    assert r.status_code == 200
    assert r.json()["path"] == "/echo"


@pytest.mark.parametrize("tls", [{}, {"ca_file": "other_ca"}], ids=["system_store", "wrong_ca"])
def test_https_upstream_is_verified_by_default(
    tls: dict[str, str], https_upstream: StreamUpstream, pki: dict[str, str]
) -> None:
    settings = {key: pki[value] for key, value in tls.items()}
    with GatewayServer(config(https_upstream.url, tls=settings)) as gw:
        r = httpx.get(gw.url + "/echo")
    assert r.status_code == 502
    assert r.json()["reason"] == "upstream_tls_error"


def test_https_upstream_hostname_is_checked(pki: dict[str, str]) -> None:
    with (
        StreamUpstream(tls={"ssl_certfile": pki["wrong"]}) as upstream,
        GatewayServer(config(upstream.url, tls={"ca_file": pki["ca"]})) as gw,
    ):
        r = httpx.get(gw.url + "/echo")
    assert r.status_code == 502
    assert r.json()["reason"] == "upstream_tls_error"


def test_verification_can_be_switched_off(https_upstream: StreamUpstream) -> None:
    with GatewayServer(config(https_upstream.url, tls={"verify": False})) as gw:
        assert httpx.get(gw.url + "/echo").status_code == 200


def test_mtls_client_certificate_is_presented(pki: dict[str, str]) -> None:
    tls = {"ssl_certfile": pki["server"], "ssl_ca_certs": pki["ca"], "ssl_cert_reqs": ssl.CERT_REQUIRED}
    with StreamUpstream(tls=tls) as upstream:
        with GatewayServer(config(upstream.url, tls={"ca_file": pki["ca"]})) as gw:
            refused = httpx.get(gw.url + "/echo")
        client = {"ca_file": pki["ca"], "cert_file": pki["client_crt"], "key_file": pki["client_key"]}
        with GatewayServer(config(upstream.url, tls=client)) as gw:
            accepted = httpx.get(gw.url + "/echo")
    assert refused.status_code == 502
    assert accepted.status_code == 200


def test_unix_socket_upstream(tmp_path: Path) -> None:
    path = str(tmp_path / "upstream.sock")
    with StreamUpstream(unix_path=path) as upstream, GatewayServer(config(f"unix:{path}")) as gw:
        r = httpx.get(gw.url + "/over/uds?x=1")
        download = httpx.get(gw.url + "/download?size=300000")
    assert r.status_code == 200
    assert r.json()["path"] == "/over/uds" and r.json()["query"] == "x=1"
    assert dict(upstream.seen[0].headers)[b"host"] == b"localhost"
    assert len(download.content) == 300000


def test_each_route_goes_to_its_own_upstream() -> None:
    with StreamUpstream() as orders, StreamUpstream() as users:
        routes = [
            {"name": "orders", "match": {"path": "/orders/**"}, "auth": "public", "upstream": orders.url},
            {"name": "users", "match": {"path": "/users/**"}, "auth": "public", "upstream": users.url},
            {"name": "rest", "match": {"path": "/**"}, "auth": "public"},
        ]
        with GatewayServer(config(orders.url, routes=routes)) as gw:
            assert httpx.get(gw.url + "/orders/1").status_code == 200
            assert httpx.get(gw.url + "/users/2").status_code == 200
            assert httpx.get(gw.url + "/other").status_code == 200
        assert [s.path for s in orders.seen] == ["/orders/1", "/other"]
        assert [s.path for s in users.seen] == ["/users/2"]


def test_the_shared_pool_never_carries_cookies_between_users() -> None:
    """GHSA-7vwr-g6pm-9hc8: a shared client with a cookie jar sent user A's Set-Cookie along
    with user B's requests."""
    with StreamUpstream() as upstream, GatewayServer(config(upstream.url)) as gw:
        with httpx.Client() as alice:
            r = alice.get(gw.url + "/cookie?user=alice")
            assert r.status_code == 200 and r.content == b""
            assert r.headers.get_list("set-cookie")[0].startswith("session=alice")
        with httpx.Client() as bob:
            r = bob.get(gw.url + "/cookie?user=bob")
            assert r.content == b""  # no Cookie reached the upstream with Bob's request
            r = bob.get(gw.url + "/cookie?user=bob", headers={"Cookie": "mine=bob"})
            assert r.content == b"mine=bob"
        bare = httpx.get(gw.url + "/cookie?user=carol")
        assert bare.content == b""
        assert all(not any(n == b"cookie" for n, _ in s.headers) for s in upstream.seen[:2])
