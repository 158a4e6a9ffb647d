"""Regenerate generated/ from protos/: Python messages, gRPC stubs and .pyi type stubs.

Run through ./scripts/gen-protos. tests/test_generated.py runs the same generation into a
temporary folder and fails when the committed files differ, so the two never drift.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def proto_files() -> list[pathlib.Path]:
    return sorted(PROTOS.rglob("*.proto"))


def generate(out: pathlib.Path) -> None:
    """Write the generated tree for every proto under protos/ into `out` (emptied first)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTOS)) for p in proto_files()),
    ]
    # protoc finds the mypy plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH.
    bin_dir = str(pathlib.Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Every directory of generated code becomes a package, so setuptools ships it as `kyma.*`.
    for directory in [out / "kyma", *(p for p in (out / "kyma").rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    (out / "kyma" / "py.typed").touch()


def main() -> None:
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "generated"
    generate(target)
    print(f"generated {len(proto_files())} protos into {target}")


if __name__ == "__main__":
    main()
