"""The container image, without a Docker engine: the Dockerfile passes hadolint; the build
context (.dockerignore) holds what the Dockerfile copies; and the image's install steps —
deploy/image/install-kyma, which the Dockerfile runs — give, run here from the files the
builder stage copies, a fresh virtual environment whose `kyma serve core` starts (migrations
and all) and answers `kyma health`."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import signal
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL = ROOT / "deploy" / "image" / "install-kyma"
LIVENESS = 300.0  # seconds: installing some forty wheels on a busy machine


def builder_copies() -> list[str]:
    """The sources the builder stage COPYs from the build context."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = pathlib.Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and r[0] != "#"]
    assert rules[0] == "*"  # everything out, then each thing the image needs back in
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = {source.rstrip("/") for source in builder_copies()}
    assert copied <= allowed | {"deploy/image/install-kyma"}, copied - allowed
    assert "deploy/image" in allowed
    for source in copied:
        assert (ROOT / source).exists(), source


async def test_the_images_install_steps_give_a_working_kyma(tmp_path: pathlib.Path) -> None:
    context = tmp_path / "src"
    context.mkdir()
    for source in builder_copies():
        path = ROOT / source
        target = context / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, target)
    # `python` is this virtual environment's (the image's is the base image's): it has pip.
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith("KYMA_")}
    for step in (
        ["wheels", str(tmp_path / "wheels")],
        ["venv", str(tmp_path / "kyma"), str(tmp_path / "wheels")],
    ):
        result = await asyncio.to_thread(
            subprocess.run,
            ["sh", str(INSTALL), *step],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=LIVENESS,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    kyma = tmp_path / "kyma" / "bin" / "kyma"
    # Nothing of the source tree or of this environment: the installed package alone.
    clean = {**env, "PATH": f"{kyma.parent}:/usr/bin:/bin", "PYTHONPATH": ""}
    serving = {
        **clean,
        "KYMA_DATA_DIR": str(tmp_path / "data"),
        "KYMA_GRPC_PORT": "0",
        "KYMA_METRICS_PORT": "0",
    }
    core = await asyncio.create_subprocess_exec(
        str(kyma),
        "serve",
        "core",
        cwd=tmp_path,
        env=serving,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert core.stdout is not None
        line = (await asyncio.wait_for(core.stdout.readline(), 120)).decode()
        assert "kyma core listening on" in line, line
        port = line.strip().rsplit(":", 1)[1]
        health = await asyncio.create_subprocess_exec(
            str(kyma),
            "health",
            "core",
            env={**clean, "KYMA_GRPC_PORT": port},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await health.communicate()
        assert (health.returncode, out.decode()) == (0, "core: ok\n")
    finally:
        core.send_signal(signal.SIGTERM)
        await asyncio.wait_for(core.wait(), 60)
