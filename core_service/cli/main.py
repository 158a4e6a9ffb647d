"""The `kyma` command: `serve`, `admin …`, `health` and `test-upstream`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from core_service.cli import admin, health


def _logging(level: str) -> None:
    from core_service.logging_setup import configure

    configure(level)


def _serve(args: argparse.Namespace) -> int:
    if args.part == "core":
        import uvloop

        from core_service.serve import run_core
        from core_service.settings import Settings

        settings = Settings()
        _logging(settings.log_level)
        uvloop.run(run_core(settings))
        return 0
    if args.part == "bridge":
        from core_service.settings import Settings
        from http_bridge.serve import run_bridge

        settings = Settings()
        _logging(settings.log_level)
        run_bridge(settings)
        return 0
    return _serve_all()


def _serve_all() -> int:
    """Core and bridge as two processes (each on its own core of the machine); when one ends,
    the other is stopped; SIGTERM/SIGINT stop both gracefully."""
    command = [sys.executable, "-m", "core_service.cli.main", "serve"]
    core = subprocess.Popen([*command, "core"])
    bridge = subprocess.Popen([*command, "bridge"])
    children = (core, bridge)

    def stop(_signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        try:
            os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
    stop(signal.SIGTERM, None)
    codes = [child.wait() for child in children]
    return max((abs(code) for code in codes), default=0)


def _test_upstream(argv: list[str]) -> int:
    from core_service.simulators.test_upstream.server import main as upstream_main

    upstream_main(argv)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kyma", description="Kyma: one OpenAI-compatible endpoint for open-source models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run Kyma (core and bridge, or one of them)")
    serve.add_argument("part", nargs="?", choices=["all", "core", "bridge"], default="all")
    serve.set_defaults(run=_serve)
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
    args = build_parser().parse_args(argv)
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
