"""scripts/sizing.py: the sizing guide's tables are what its recorded bench run measured, and
the derivation is the arithmetic docs/sizing.md describes."""

from __future__ import annotations

import json
import pathlib
import re

from scripts.sizing import BEGIN, END, main, needs, tables

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def test_the_guide_shows_what_its_bench_run_measured() -> None:
    bench = json.loads((DOCS / "sizing-bench.json").read_text())
    guide = (DOCS / "sizing.md").read_text()
    block = re.search(re.escape(BEGIN) + "\n(.*)\n" + re.escape(END), guide, re.S)
    assert block is not None
    assert block.group(1) == tables(bench), "run scripts/sizing.py --update docs/sizing.md"


def test_what_a_rate_needs() -> None:
    cost = {
        "core_cpu_ms": 2.0,
        "bridge_cpu_ms": 0.7,
        "pg_cpu_ms": 0.5,
        "pg_transactions": 0.25,
        "pg_statements": 1.5,
        "pg_wal_bytes": 4_000,
        "request_log_bytes": 1_000,
        "redis_commands": 10,
        "redis_cpu_us": 50,
    }
    need = needs(cost, 10_000)
    assert need["cores"] == 29  # 20 CPUs of work at 70% each
    assert need["bridges"] == 10
    assert need["pg_transactions"] == 2_500 and need["pg_statements"] == 15_000
    assert need["wal_mb_s"] == 40.0
    assert need["log_gb_day"] == 864.0
    assert need["redis_commands"] == 100_000 and need["redis_thread"] == 0.5


def test_update_rewrites_only_between_the_markers(tmp_path: pathlib.Path) -> None:
    guide = tmp_path / "guide.md"
    guide.write_text(f"before\n{BEGIN}\nold\n{END}\nafter\n")
    main([str(DOCS / "sizing-bench.json"), "--update", str(guide)])
    text = guide.read_text()
    assert text.startswith(f"before\n{BEGIN}\n### Measured") and text.endswith(f"{END}\nafter\n")
    assert "old" not in text
