"""Simulated upstreams, kept apart from the serving path.

- `fake_model`: a deterministic OpenAI-compatible model (real token counts, streaming, tools,
  embeddings) behind the built-in demo model (`upstream/demo.py`) and the test upstream.
- `test_upstream`: `kyma test-upstream`, a real HTTP server around the fake model with fault
  injection (latency, errors, 429s, hangs, broken streams) for tests and benchmarks. Nothing on
  the serving path imports it (an import contract in the test suite says so).
"""
