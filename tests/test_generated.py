"""generated/ must be exactly what scripts/gen_protos.py makes from protos/ (commit both)."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_matches_protos(tmp_path: pathlib.Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path / "generated")
    fresh = _files(tmp_path / "generated")
    committed = _files(ROOT / "generated")
    assert sorted(fresh) == sorted(committed), "run ./scripts/gen-protos and commit generated/"
    drifted = [name for name in fresh if fresh[name] != committed[name]]
    assert not drifted, f"generated/ drifted from protos/ in {drifted}: run ./scripts/gen-protos"
