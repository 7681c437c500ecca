"""migrator against skopeo on the same registries, in the same run.

    python benchmarks/run.py [--scenarios many-small,few-large,multi-arch,wan]
                             [--tools sync,fleet-1,fleet-2,skopeo,plain] [--repetitions 3]
                             [--quick] [--out benchmarks/results.json]

Starts a source Distribution registry on loopback, seeds it with deterministic synthetic images,
then, scenario by scenario and repetition by repetition, runs each tool in turn (the order
rotates between repetitions) into a fresh target registry: an initial copy, then a no-op re-run
into the same target. Every run is measured (wall, CPU and peak RSS of the tool's process tree,
requests per method at each registry, each registry's CPU) and checked (every tag present, every
manifest byte-identical to the source's). Writes the JSON result, the table in
benchmarks/README.md and benchmarks/wall_time.png. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.latency_proxy import LatencyProxy  # noqa: E402
from benchmarks.measure import (  # noqa: E402
    MIB,
    cpu_seconds,
    machine_busy_seconds,
    redis_cpu_seconds,
    run_measured,
    wait_for_quiet,
)
from benchmarks.scenarios import (  # noqa: E402
    FULL,
    QUICK,
    Scenario,
    Truth,
    seed_source,
    snapshot,
    verify,
)
from benchmarks.tools import (  # noqa: E402
    Endpoints,
    Fleet,
    MigratorSync,
    PlainCopier,
    Skopeo,
    Tool,
    private_redis,
    skopeo_version,
    snapshot_code,
)
from tests.support.registry import RunningRegistry, start_registry  # noqa: E402

WRITES = ("POST", "PUT", "PATCH", "DELETE")
ALL_TOOLS = ("sync", "fleet-1", "fleet-2", "skopeo", "plain")
HERE = Path(__file__).resolve().parent


class BenchmarkError(RuntimeError):
    """A prerequisite is missing: the message says what to install."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark migrator (sync and fleet) against skopeo on local registries.")
    parser.add_argument("--scenarios", default="many-small,few-large,multi-arch,wan",
                        help="comma-separated subset of: " + ", ".join(FULL))
    parser.add_argument("--tools", default=",".join(ALL_TOOLS),
                        help="comma-separated subset of: " + ", ".join(ALL_TOOLS))
    parser.add_argument("--repetitions", type=int, default=None,
                        help="runs of each tool per scenario (default 3, 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny data and 1 repetition: a correctness smoke run")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default benchmarks/results.json, "
                             "benchmarks/results-quick.json with --quick)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="README whose results block is rewritten (default "
                             "benchmarks/README.md unless --quick)")
    parser.add_argument("--no-readme", action="store_true", help="leave every README alone")
    parser.add_argument("--plot", type=Path, default=None,
                        help="plot of wall times (default benchmarks/wall_time.png unless "
                             "--quick)")
    parser.add_argument("--no-plot", action="store_true", help="draw no plot")
    parser.add_argument("--wan-rtt", type=float, default=None, metavar="SECONDS",
                        help="delay added to every request in the wan scenario (default 0.05: "
                             "25 ms each way; 0.01 with --quick)")
    parser.add_argument("--sync-workers", type=int, default=7,
                        help="migrator sync --workers (default 7, its own default)")
    parser.add_argument("--worker-concurrency", type=int, default=7,
                        help="threads per fleet worker process (default 7, as sync)")
    parser.add_argument("--skopeo-parallel", type=int, default=4,
                        help="skopeo processes at once, one per repository (default 4)")
    parser.add_argument("--redis-db", type=int, default=None,
                        help="run the fleet on this database of the Redis on "
                             "127.0.0.1:6379, FLUSHDB'd (default: a redis-server of the "
                             "benchmark's own, whose CPU is then the fleet's alone)")
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="wait up to this many seconds before each run for the machine to "
                             "be idle (default 5, 0 with --quick)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where registries and logs live (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--report", type=Path, metavar="RESULTS_JSON",
                        help="run nothing: rebuild the summary, README block and plot from "
                             "an earlier result file")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [s for s in args.scenarios if s not in FULL] + [
        t for t in args.tools if t not in ALL_TOOLS]
    if unknown:
        parser.error(f"unknown scenario or tool: {', '.join(unknown)}")
    if args.repetitions is None:
        args.repetitions = 1 if args.quick else 3
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 5.0
    report.default_outputs(args, HERE, "results", "wall_time.png")
    return args


def commit_label() -> str:
    """The checkout's commit, marked when `migrator/` or `workers/` differ from it."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "migrator",
                            "workers"], capture_output=True, text=True).stdout.strip()
    return commit + ("+uncommitted changes" if dirty else "")


def check_prerequisites(tools: list[str], redis_db: int | None) -> None:
    """Fail early, saying what to install, rather than half-way through a long run."""
    from tests.support.registry import registry_binary

    try:
        registry_binary()
    except RuntimeError as exc:
        raise BenchmarkError(str(exc)) from None
    if "skopeo" in tools and not shutil.which("skopeo"):
        raise BenchmarkError("skopeo not found: apt-get install skopeo (Debian package "
                             "`skopeo`), or leave it out with --tools")
    if not any(t.startswith("fleet") for t in tools):
        return
    if redis_db is None and not shutil.which("redis-server"):
        raise BenchmarkError("redis-server not found: the fleet runs start one (apt-get "
                             "install redis-server), or give --redis-db, or leave them out "
                             "with --tools")
    if redis_db is not None and redis_cpu_seconds(SHARED_REDIS.format(db=0)) is None:
        raise BenchmarkError("no Redis on 127.0.0.1:6379 for --redis-db")


SHARED_REDIS = "redis://127.0.0.1:6379/{db}"


def make_tools(args: argparse.Namespace, work: Path) -> list[Tool]:
    tools: list[Tool] = []
    redis_url = None
    for name in args.tools:
        if name == "sync":
            tools.append(MigratorSync(args.sync_workers))
        elif name.startswith("fleet-"):
            if redis_url is None:
                redis_url = (private_redis(work / "redis") if args.redis_db is None
                             else SHARED_REDIS.format(db=args.redis_db))
            tools.append(Fleet(int(name.split("-")[1]), redis_url=redis_url,
                               concurrency=args.worker_concurrency))
        elif name == "skopeo":
            tools.append(Skopeo(args.skopeo_parallel))
        elif name == "plain":
            tools.append(PlainCopier(args.sync_workers))
    return tools


def by_method(entries: list[tuple[str, str, int]]) -> dict[str, int]:
    return dict(sorted(collections.Counter(method for method, _, _ in entries).items()))


def registry_cpu(registry: RunningRegistry) -> float:
    import psutil

    proc = registry._proc  # the registry process itself (setpriv execs it)
    return cpu_seconds(psutil.Process(proc.pid)) if proc is not None else 0.0


class Benchmark:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.scenarios: dict[str, Scenario] = dict(QUICK if args.quick else FULL)
        if args.wan_rtt is not None:
            wan = self.scenarios["wan"]
            self.scenarios["wan"] = dataclasses.replace(
                wan, rtt=args.wan_rtt, description=wan.description.replace(
                    "50 ms", f"{args.wan_rtt * 1000:g} ms").replace(
                    "25 ms each way", f"{args.wan_rtt * 500:g} ms each way"))
        self.code, self.code_sha = snapshot_code(work / "code")
        self.commit = commit_label()  # of the code copied, not of the tree at the end
        self.tools = make_tools(args, work)
        for tool in self.tools:
            tool.code = self.code
        self.runs: list[dict[str, Any]] = []
        self.seeded: dict[str, float] = {}
        self.errors: list[str] = []
        self.source: RunningRegistry | None = None
        self.started = dt.datetime.now(dt.UTC)

    def log(self, text: str) -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        print(f"[{stamp}] {text}", flush=True)

    def run(self) -> dict[str, Any]:
        self.started = dt.datetime.now(dt.UTC)
        self.source = start_registry(self.work / "source")
        try:
            for name in self.args.scenarios:
                try:
                    self.run_scenario(self.scenarios[name])
                except Exception as exc:  # noqa: BLE001 - the other scenarios still run
                    self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                    self.log(f"scenario {name} aborted: {type(exc).__name__}: {exc}")
        finally:
            self.source.close()
        return self.result(complete=True)

    def result(self, *, complete: bool) -> dict[str, Any]:
        summary = report.summarise(self.runs)
        return {
            "meta": {**self.meta(self.started), "complete": complete},
            "scenarios": {name: self.scenarios[name].describe()
                          for name in self.args.scenarios},
            "seeding_s": self.seeded,
            "errors": self.errors,
            "runs": self.runs,
            "summary": summary,
            "targets": report.targets(summary, self.runs) if not self.args.quick else [],
        }

    def checkpoint(self) -> None:
        """Write what is measured so far (meta.complete = false): a long run that dies late
        still leaves its numbers."""
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        self.args.out.write_text(json.dumps(self.result(complete=False), indent=1) + "\n")

    def meta(self, started: dt.datetime) -> dict[str, Any]:
        registry = subprocess.run(["docker-registry", "--version"], capture_output=True,
                                  text=True).stdout.split()[-1:] or ["?"]
        skopeo = next((t for t in self.tools if isinstance(t, Skopeo)), None)
        return {
            "started": started.isoformat(timespec="seconds"),
            "duration_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.system()} "
                       f"{platform.release()}",
            "python": platform.python_version(),
            "migrator": _version(self.code),
            "commit": self.commit,
            "code_sha256": self.code_sha,
            "registry": registry[0],
            "skopeo": skopeo_version() if skopeo else None,
            "skopeo_blob_info_cache": skopeo.isolation if skopeo else None,
            "quick": self.args.quick,
            "repetitions": self.args.repetitions,
            "tools": self.args.tools,
            "settings": {"sync_workers": self.args.sync_workers,
                         "worker_concurrency": self.args.worker_concurrency,
                         "worker_pool": "threads",
                         "skopeo_parallel": self.args.skopeo_parallel,
                         "redis": ("private redis-server" if self.args.redis_db is None
                                   else SHARED_REDIS.format(db=self.args.redis_db))},
            "out": _relative(self.args.out),
        }

    def run_scenario(self, scenario: Scenario) -> None:
        assert self.source is not None
        if scenario.data not in self.seeded:
            self.log(f"seeding {scenario.name}: {scenario.description}")
            began = time.monotonic()
            seed_source(self.source, scenario)
            self.seeded[scenario.data] = round(time.monotonic() - began, 1)
        truth = snapshot(self.source, scenario)
        source_proxy = LatencyProxy(self.source.url, scenario.rtt) if scenario.rtt else None
        try:
            for rep in range(self.args.repetitions):
                shift = rep % len(self.tools)
                order = self.tools[shift:] + self.tools[:shift]
                for position, tool in enumerate(order):
                    self.run_tool(scenario, truth, tool, rep, position, source_proxy)
                    self.checkpoint()
        finally:
            if source_proxy is not None:
                source_proxy.stop()

    def run_tool(self, scenario: Scenario, truth: Truth, tool: Tool, rep: int, position: int,
                 source_proxy: LatencyProxy | None) -> None:
        assert self.source is not None
        slot = f"{scenario.name}-r{rep}-{tool.name}"
        target = start_registry(self.work / "targets" / slot)
        target_proxy = LatencyProxy(target.url, scenario.rtt) if scenario.rtt else None
        endpoints = Endpoints(source=source_proxy.host if source_proxy else self.source.host,
                              target=target_proxy.host if target_proxy else target.host)
        try:
            tool.prepare(self.work / "runs" / slot, scenario, endpoints)
            try:
                for phase in report.PHASES:
                    record = self.measure(scenario, truth, tool, phase, target)
                    record.update(repetition=rep, position=position)
                    self.runs.append(record)
                    self.log(f"{scenario.name:<10} {phase:<7} rep {rep} {tool.name:<8} "
                             f"{record['wall_s']:7.2f} s  cpu {record['cpu_s']:6.2f} s  "
                             f"rss {record['peak_rss_tree_mib']:6.1f} MiB  "
                             f"req/img {record['requests_per_image']:5.2f}  "
                             f"{'ok' if record['correct'] else 'FAILED'}")
                    if not record["correct"]:
                        for problem in record["problems"][:10]:
                            self.log(f"    {problem}")
                        break  # a failed initial copy makes its re-run meaningless
            finally:
                tool.finish()
        finally:
            if target_proxy is not None:
                target_proxy.stop()
            target.close()
            shutil.rmtree(target.root / "storage", ignore_errors=True)

    def measure(self, scenario: Scenario, truth: Truth, tool: Tool, phase: str,
                target: RunningRegistry) -> dict[str, Any]:
        assert self.source is not None
        argv, env = tool.command(phase)
        src_mark, dst_mark = self.source.mark(), target.mark()
        waited = wait_for_quiet(self.args.quiet_wait) if self.args.quiet_wait else 0.0
        src_cpu, dst_cpu = registry_cpu(self.source), registry_cpu(target)
        fleet = isinstance(tool, Fleet)
        redis_before = redis_cpu_seconds(tool.redis_url) if isinstance(tool, Fleet) else None
        busy_before = machine_busy_seconds()
        cost = run_measured(argv, env=env, cwd=tool.work, log_path=tool.work / f"{phase}.out",
                            extra=tool.extra_processes())
        busy = machine_busy_seconds() - busy_before
        registry_cpu_s = {"source": registry_cpu(self.source) - src_cpu,
                          "target": registry_cpu(target) - dst_cpu}
        redis_after = redis_cpu_seconds(tool.redis_url) if isinstance(tool, Fleet) else None
        src_requests, dst_requests = self.source.requests(src_mark), target.requests(dst_mark)
        redis_s = (redis_after - redis_before
                   if fleet and redis_after is not None and redis_before is not None else None)
        # Everything else the machine did meanwhile: this script's sampler, the WAN proxies
        # and whatever else runs on the machine (noise: it competes for the same 2 cores).
        other = busy - cost.cpu_s - sum(registry_cpu_s.values()) - (redis_s or 0.0)
        problems: list[str] = []
        if cost.returncode != 0:
            problems.append(f"exit code {cost.returncode}:\n"
                            + _tail(tool.work / f"{phase}.out") + "\n" + tool.diagnostics())
        problems += verify(target, truth)
        writes = sum(1 for m, _, _ in dst_requests if m in WRITES)
        if phase == "noop" and writes and not isinstance(tool, Skopeo):
            problems.append(f"the no-op re-run wrote to the target ({writes} requests)")
        total = len(src_requests) + len(dst_requests)
        return {
            "scenario": scenario.name,
            "phase": phase,
            "tool": tool.name,
            "images": scenario.images,
            "wall_s": round(cost.wall_s, 3),
            "cpu_s": round(cost.cpu_s, 3),
            "cpu_user_s": round(cost.cpu_user_s, 3),
            "cpu_sys_s": round(cost.cpu_sys_s, 3),
            "peak_rss_tree_mib": round(cost.peak_rss_tree_bytes / MIB, 1),
            "max_rss_process_mib": round(cost.max_rss_process_bytes / MIB, 1),
            "rss_by_process_mib": {k: round(v / MIB, 1) for k, v in
                                   cost.per_process_peak.items()},
            "rss_samples": cost.samples,
            "requests": {"source": by_method(src_requests), "target": by_method(dst_requests)},
            "requests_total": total,
            "requests_per_image": round(total / scenario.images, 3),
            "target_writes": writes,
            "registry_cpu_s": {k: round(v, 3) for k, v in registry_cpu_s.items()},
            "redis_cpu_s": None if redis_s is None else round(redis_s, 3),
            "other_cpu_s": round(other, 3),
            "quiet_wait_s": round(waited, 1),
            "returncode": cost.returncode,
            "correct": not problems,
            "problems": problems,
        }


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _version(code: Path) -> str:
    text = (code / "migrator" / "__init__.py").read_text()
    found = [line.split("=", 1)[1].strip().strip("\"'") for line in text.splitlines()
             if line.startswith("__version__")]
    return found[0] if found else "?"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def rebuild(args: argparse.Namespace) -> dict[str, Any]:
    """An earlier result with its summary and targets computed again from its runs."""
    result = json.loads(args.report.read_text())
    result["summary"] = report.summarise(result["runs"])
    result["targets"] = ([] if result["meta"].get("quick")
                         else report.targets(result["summary"], result["runs"]))
    args.out = args.report
    result["meta"]["out"] = _relative(args.report)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        result = rebuild(args)
        return publish(args, result)
    try:
        check_prerequisites(args.tools, args.redis_db)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="migrator-bench-", dir=args.workdir))
    try:
        bench = Benchmark(args, work)
        result = bench.run()
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return publish(args, result)


def publish(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """Write the result file, the plot and the README block; print the tables."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {args.out}")
    if args.plot and report.plot(result["summary"], args.plot):
        print(f"plot: {args.plot}")
    if args.readme:
        report.update_readme(args.readme, result)
        print(f"table: {args.readme}")
    print(report.markdown_table(result["summary"], result["runs"]))
    if result["targets"]:
        print()
        print(report.targets_table(result["targets"]))
    failed = [r for r in result["runs"] if not r["correct"]]
    if failed:
        print(f"{len(failed)} run(s) did not produce a byte-identical target", file=sys.stderr)
    for error in result["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if failed or result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
