"""The ``jwt-gateway`` command: serve, check, explain, test, demo.

A thin mapping from flags onto the config and the server; all behaviour lives in the library.
Exit codes: 0 success, 1 a check or policy test failed, 2 bad config or bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.tools import OfflineRequest

EXAMPLES = """\
examples:
  jwt-gateway demo                                   # gateway + echo upstream + dev issuer on 127.0.0.1
  jwt-gateway serve --config gateway.yaml            # run the gateway
  jwt-gateway serve --config gateway.yaml --port 9000 --workers 2
  jwt-gateway check --config gateway.yaml            # validate, print providers and routes
  jwt-gateway explain --config gateway.yaml --method GET --path /admin/users \\
      --claims '{"sub": "alice", "roles": ["admin"]}'
  jwt-gateway test --config gateway.yaml policy_tests.yaml

exit codes: 0 ok, 1 check/test failure, 2 invalid configuration or usage
"""

POLICY_TEST_FORMAT = """\
policy test file:
  config: gateway.yaml                  # optional (relative to this file); --config overrides
  cases:
    - name: admins may list users       # unique
      request: {method: GET, path: "/admin/users?page=2", host: api.example.com,
                headers: {X-User-Id: mallory}}          # method, host, headers optional
      claims: {sub: alice, roles: [admin]}              # taken as verified (nothing checked), or
      # token: ${ADMIN_TOKEN}                           # a real token, verified as in production;
                                                        # neither: an anonymous request
      expect:
        status: 200                     # 200 = forwarded, else the gateway's error status
        reason: ok                      # optional: ok or the (would-be) denial reason
        outcome: allowed                # optional: allowed | denied | report_only
        route: admin                    # optional: matched route name (null: none)
        upstream_path: /admin/users     # optional: path the upstream receives
        headers: {X-User-Id: alice, X-User-Roles: null}  # optional; null: must be absent

${VAR} and ${VAR:-default} are read from the environment. Example:
config/examples/policy_tests.yaml.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jwt-gateway",
        description="A reverse-proxy JWT gateway: verifies Bearer tokens, enforces per-route "
        "claim rules and forwards verified claims as headers.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jwt-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="run the gateway", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    serve.add_argument("--config", "-c", required=True, help="path to gateway.yaml")
    serve.add_argument("--host", help="listen address (overrides listen.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="overrides logging.level"
    )

    check = sub.add_parser("check", help="validate a config; print providers and routes")
    check.add_argument("--config", "-c", required=True, help="path to gateway.yaml")

    explain = sub.add_parser(
        "explain",
        help="show, step by step, how the gateway would decide one request",
        description="Decide one request offline with the gateway's own engine and print every "
        "step: canonical path, routes considered, auth mode, verification, each rule condition, "
        "headers set and stripped, upstream target and final status. The token is never printed. "
        "Exit 0 if the request would be forwarded, 1 if denied, 2 for a config error.",
    )
    explain.add_argument("--config", "-c", required=True, help="path to gateway.yaml")
    explain.add_argument("--method", "-X", default="GET", help="request method (default GET)")
    explain.add_argument("--path", required=True, help="raw request target: path and optional ?query")
    explain.add_argument("--host", help="Host header of the request")
    credentials = explain.add_mutually_exclusive_group()
    credentials.add_argument(
        "--token", help="a real token, verified as in production (keys are fetched); '-' reads stdin"
    )
    credentials.add_argument(
        "--claims",
        help="claims as a JSON object (or @file.json), taken as verified: no signature, exp, iss, "
        "aud or provider-claim checks",
    )
    explain.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeatable)",
    )
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.add_argument(
        "--key-timeout", type=float, default=5.0, help="seconds allowed to fetch keys (default 5)"
    )

    test = sub.add_parser(
        "test",
        help="run a policy test file (requests with claims or tokens, and the expected outcome)",
        description="Run every case of a policy test file through the gateway's own engine; one "
        "PASS/FAIL line per case. Exit 0 if all pass, 1 if one fails, 2 for an invalid test file "
        "or config.",
        epilog=POLICY_TEST_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    test.add_argument("--config", "-c", help="path to gateway.yaml (default: the file's `config:`)")
    test.add_argument("tests", metavar="POLICY_TESTS.yaml", help="the policy test file")
    test.add_argument(
        "--key-timeout", type=float, default=5.0, help="seconds allowed to fetch keys (default 5)"
    )

    demo = sub.add_parser("demo", help="run the demo: gateway, echo upstream and dev issuer")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    return parser


def _offline_request(parser: argparse.ArgumentParser, args: argparse.Namespace) -> OfflineRequest:
    """The request ``explain`` decides, from its flags (bad flags: usage error, exit 2)."""
    from gateway.tools import OfflineRequest, parse_header_line

    headers: list[tuple[str, str]] = []
    for raw in args.header:
        try:
            headers.append(parse_header_line(raw))
        except ValueError as exc:
            parser.error(f"--header {raw!r}: {exc} (write 'Name: value')")
    token = args.token
    if token == "-":  # noqa: S105 - '-' means "read the token from stdin"
        token = sys.stdin.readline().strip()
    claims = None
    if args.claims is not None:
        text = args.claims
        try:
            if text.startswith("@"):
                with open(text[1:], encoding="utf-8") as file:
                    text = file.read()
            claims = json.loads(text)
        except (OSError, ValueError) as exc:
            parser.error(f"--claims: not a readable JSON object ({exc})")
        if not isinstance(claims, dict):
            parser.error("--claims: the claims must be a JSON object")
    return OfflineRequest(args.method, args.path, args.host, headers, token=token, claims=claims)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve":
            from gateway.server import serve

            return serve(
                args.config, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level
            )
        if args.command == "check":
            from gateway.tools import check

            return check(args.config)
        if args.command == "explain":
            from gateway.tools import explain

            request = _offline_request(parser, args)
            return explain(args.config, request, as_json=args.json, key_timeout=args.key_timeout)
        if args.command == "test":
            from gateway.tools import run_policy_tests

            return run_policy_tests(args.config, args.tests, key_timeout=args.key_timeout)
        if args.command == "demo":
            from gateway.demo import run_demo

            return run_demo(port=args.port)
    except ConfigError as exc:
        from gateway.tools import PolicyTestFileError

        what = "invalid test file" if isinstance(exc, PolicyTestFileError) else "config error"
        print(f"jwt-gateway: {what}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        # A port in use, an address this host does not have: one line, no traceback.
        print(f"jwt-gateway: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")  # exits with 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
