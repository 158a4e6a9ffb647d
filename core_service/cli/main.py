"""The `kyma` command: `serve`, `admin …`, `health` and `test-upstream`."""

from __future__ import annotations

import argparse
import os
import sys

# Nothing heavy at the top: `kyma serve` runs as a small parent process that imports only the
# standard library (see core_service/workers.py); the other commands import what they use.


def _logging(level: str) -> None:
    from core_service.logging_setup import configure

    configure(level)


def _serve(args: argparse.Namespace) -> int:
    from core_service.workers import serve

    if args.part == "all":
        return serve("all")
    from core_service.settings import read_settings
    from core_service.workers import worker_count

    settings = read_settings()
    if worker_count(settings.workers, args.part) > 1:
        # Several workers: handed to the small parent, in a fresh interpreter so that it
        # carries none of what this one imported.
        os.execv(sys.executable, [sys.executable, "-m", "core_service.workers", args.part])
    _logging(settings.log_level)
    if args.part == "core":
        import uvloop

        from core_service.serve import run_core

        uvloop.run(run_core(settings))
        return 0
    from http_bridge.serve import run_bridge

    run_bridge(settings)
    return 0


def _test_upstream(argv: list[str]) -> int:
    from core_service.simulators.test_upstream.server import main as upstream_main

    upstream_main(argv)
    return 0


def build_parser(*, serve_only: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kyma", description="Kyma: one OpenAI-compatible endpoint for open-source models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run Kyma (core and bridge, or one of them)")
    serve.add_argument("part", nargs="?", choices=["all", "core", "bridge"], default="all")
    serve.set_defaults(run=_serve)
    if serve_only:
        return parser
    from core_service.cli import admin, health

    admin.add_commands(commands)
    health.add_command(commands)
    commands.add_parser(
        "test-upstream", help="run the OpenAI-compatible test upstream (see --help)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["test-upstream"]:
        sys.exit(_test_upstream(argv[1:]))
    args = build_parser(serve_only=argv[:1] == ["serve"]).parse_args(argv)
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
