"""The benchmark (benchmarks/run.py) end to end on tiny data: correctness only, no timing.

It starts its own registries, seeds them, and runs `migrator sync`, the fleet with one worker
and skopeo into fresh targets, twice each (initial and no-op re-run). The test checks that every
target ended byte-identical to the source and that the result file has every field the README's
table and plot are built from. skopeo is required (CI installs the Debian package `skopeo`): a
missing skopeo fails the test rather than skipping it, so the comparison cannot silently rot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("many-small", "multi-arch", "wan")  # few-large is many-small with bigger layers
TOOLS = ("sync", "fleet-1", "skopeo")
# Its own Redis database: not the fleet (13) or filters (11) tests', nor benchmarks' (9, 10).
REDIS_DB = os.environ.get("MIGRATOR_BENCH_REDIS_DB", "12")


def test_benchmark_runs_every_tool_and_every_target_is_byte_identical(tmp_path: Path) -> None:
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed: the benchmark compares migrator against it. "
                    "Install the Debian package: apt-get install -y skopeo")
    try:
        import psutil  # noqa: F401
    except ImportError:
        pytest.fail("psutil is not installed: the benchmark measures memory and CPU with it. "
                    "pip install psutil")
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--scenarios", ",".join(SCENARIOS),
         "--tools", ",".join(TOOLS), "--out", str(out), "--no-readme",
         "--redis-db", REDIS_DB, "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    from benchmarks.report import METRICS, RUN_FIELDS

    result = json.loads(out.read_text())
    assert {"meta", "scenarios", "runs", "summary", "targets", "errors"} <= set(result)
    assert result["errors"] == [] and result["meta"]["complete"]
    for field in ("started", "machine", "python", "migrator", "commit", "code_sha256",
                  "registry", "skopeo", "repetitions", "quick", "settings"):
        assert field in result["meta"], field
    assert result["meta"]["skopeo"], "skopeo's version was not recorded"

    runs = result["runs"]
    expected = {(s, p, t) for s in SCENARIOS for p in ("initial", "noop") for t in TOOLS}
    assert {(r["scenario"], r["phase"], r["tool"]) for r in runs} == expected
    for run in runs:
        missing = [f for f in RUN_FIELDS if f not in run]
        assert not missing, (run["scenario"], run["tool"], missing)
        where = f"{run['scenario']}/{run['phase']}/{run['tool']}"
        assert run["correct"] and run["problems"] == [], (where, run["problems"])
        assert run["returncode"] == 0, where
        assert run["wall_s"] > 0 and run["cpu_s"] > 0, where
        assert run["peak_rss_tree_mib"] > 0 and run["max_rss_process_mib"] > 0, where
        assert set(run["requests"]) == {"source", "target"}, where
        assert set(run["registry_cpu_s"]) == {"source", "target"}, where
        assert run["requests_total"] == sum(
            n for side in run["requests"].values() for n in side.values()), where
        if run["phase"] == "initial":
            assert run["requests"]["target"].get("PUT", 0) > 0, where  # something was written
        elif run["tool"] != "skopeo":
            assert run["target_writes"] == 0, where  # our no-op re-run writes nothing
        if run["tool"].startswith("fleet"):
            assert any(k.startswith("worker") for k in run["rss_by_process_mib"]), where

    for scenario in SCENARIOS:
        for phase in ("initial", "noop"):
            entry = result["summary"][f"{scenario}/{phase}"]
            for tool in TOOLS:
                assert set(METRICS) <= set(entry[tool]), (scenario, phase, tool)
                assert entry[tool]["wall_s"]["median"] > 0
            assert entry["sync"]["speedup_vs_skopeo"]["median"] > 0
            assert entry["fleet-1"]["overhead_vs_sync"]["median"] > 0
