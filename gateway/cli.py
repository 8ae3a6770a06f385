"""The ``jwt-gateway`` command: serve, check, explain, test, demo.

A thin mapping from flags onto the config and the server; all behaviour lives in the library.
Exit codes: 0 success, 1 a check or policy test failed, 2 bad config or bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.errors import ConfigError

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

    demo = sub.add_parser("demo", help="run the demo: gateway, echo upstream and dev issuer")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    return parser


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
        if args.command == "demo":
            from gateway.demo import run_demo

            return run_demo(port=args.port)
    except ConfigError as exc:
        print(f"jwt-gateway: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    parser.error(f"unknown command {args.command}")  # exits with 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
