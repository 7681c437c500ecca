"""The benchmarks (benchmarks/run.py and benchmarks/scale.py) end to end on tiny data:
correctness only, no timing.

run.py starts its own registries, seeds them, and runs `migrator sync`, the fleet with one
worker, skopeo and the plain copier (benchmarks/plain_copier.py) into fresh targets, twice each
(initial and no-op re-run). scale.py does the same for `migrator sync` and the fleet at 50 and
200 tiny tags, with the fleet's third (forced) run and the start-up measurement. The tests check
that every target ended byte-identical to the source and that the result files have every field
the README's tables and plots are built from. skopeo is required (CI installs the Debian package
`skopeo`): a missing skopeo fails the test rather than skipping it, so the comparison cannot
silently rot.
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
TOOLS = ("sync", "fleet-1", "skopeo", "plain")
# The scale smoke test runs its fleet on a database of the machine's Redis (`--redis-db`);
# the other on the benchmark's own redis-server, the default.
REDIS_DB = os.environ.get("MIGRATOR_BENCH_REDIS_DB", "12")


def test_benchmark_runs_every_tool_and_every_target_is_byte_identical(tmp_path: Path) -> None:
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed: the benchmark compares migrator against it. "
                    "Install the Debian package: apt-get install -y skopeo")
    try:
        import psutil
    except ImportError:
        pytest.fail("psutil is not installed: the benchmark measures memory and CPU with it. "
                    "pip install psutil")
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--scenarios", ",".join(SCENARIOS),
         "--tools", ",".join(TOOLS), "--out", str(out), "--no-readme",
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # The fleet ran on a redis-server of the benchmark's own, gone with it.
    assert json.loads(out.read_text())["meta"]["settings"]["redis"] == "private redis-server"
    assert not [proc for proc in psutil.process_iter(["cmdline"])
                if str(tmp_path) in " ".join(proc.info["cmdline"] or [])], "left running"

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
            assert entry["sync"]["speedup_vs_plain"]["median"] > 0
            assert entry["sync"]["cpu_vs_plain"]["median"] > 0
            assert entry["fleet-1"]["overhead_vs_sync"]["median"] > 0


def test_scale_benchmark_measures_memory_redis_and_record_at_two_sizes(tmp_path: Path) -> None:
    out, plot = tmp_path / "scale.json", tmp_path / "scale.png"
    done = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--quick", "--sizes", "50,200", "--one-repo", "0",
         "--tools", "sync,fleet-1", "--startup-runs", "1", "--out", str(out), "--no-readme",
         "--plot", str(plot), "--cache", str(tmp_path / "cache"), "--redis-db", REDIS_DB,
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert plot.stat().st_size > 0

    result = json.loads(out.read_text())
    assert result["errors"] == [] and result["meta"]["complete"]
    startup = result["startup"]
    assert startup["version_s"] > 0 and startup["first_request_s"] > 0
    assert 0 < startup["floor_s"]["python"] < startup["floor_s"]["libraries"]
    assert result["seeding"]["scale-200"]["repositories_seeded"] == 15  # 5 came with scale-50
    runs = {(r["scenario"], r["tool"], r["phase"]): r for r in result["runs"]}
    assert set(runs) == {(s, t, p) for s in ("scale-50", "scale-200") for t in ("sync", "fleet-1")
                         for p in ("initial", "noop")} | {("scale-200", "fleet-1", "force")}
    for (scenario, tool, phase), run in runs.items():
        where = f"{scenario}/{tool}/{phase}"
        assert run["correct"] and run["problems"] == [], (where, run["problems"])
        tags = int(scenario.split("-")[1])
        assert run["images"] == tags, where
        assert run["ms_per_tag"] == pytest.approx(1000 * run["wall_s"] / tags, rel=0.01), where
        assert run["tag_list_pages"]["repositories"] == tags // 10, where
        if phase == "noop":
            assert run["target_writes"] == 0, where
        if tool == "sync":
            assert run["state_bytes"] > 0, where  # the digest record on disk
            assert run["rss_by_process_mib"]["tool"] > 0, where
        else:
            redis = run["redis"]
            assert {"blob", "manifest", "run"} <= set(redis["by_kind"]), where
            # the ledger's manifest records: one key per tag or per repository, never more
            assert 0 < redis["by_kind"]["manifest"]["keys"] <= tags, where
            assert redis["bytes"] == sum(k["bytes"] for k in redis["by_kind"].values()), where
            assert redis["bytes_per_tag"] > 0 and redis["runs"], where
            assert run["worker_rss_after_mib"]["worker0"] > 0, where
            assert run["rss_by_process_mib"]["worker0"] > 0, where
    # The third, forced run wrote every manifest again.
    assert runs[("scale-200", "fleet-1", "force")]["requests"]["target"]["PUT"] == 200
    names = [t["target"] for t in result["targets"]]
    for wanted in ("migrator sync peak RSS at 200 tags", "one worker's peak RSS, every run",
                   "worker RSS growth over 3 runs (after the 3rd / after the 1st)",
                   "start-up: first request of migrator sync",
                   "re-run: fleet requests per tag, every size",
                   "Redis per tag after a first copy, every size"):
        assert wanted in names, wanted
    assert all(t["value"] is not None for t in result["targets"]), result["targets"]
