"""Where the per-tag cost of `migrator sync` and the fleet's per-task overhead go, at scale.

    python benchmarks/profile_scale.py [--tags 2000] [--per-repo 100] [--redis-db 9]
                                       [--keep DIR]

On the scale data of benchmarks/scale.py (its cached source registry):
1. `migrator sync` into a fresh target under `py-spy record --gil` (the interpreter's CPU:
   samples of the thread holding the GIL), then its no-op re-run the same way;
2. one fleet worker (`--pool threads --concurrency 7`) with py-spy attached to it, during
   `migrator enqueue --wait` (first copy, then re-run), while `redis-cli MONITOR` records every
   command of the fleet's database: commands per task by name and by client (producer or
   worker), and the worker's CPU per task.
Prints the summaries (benchmarks/profile_sync.py's) and writes a JSON next to them.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from benchmarks.measure import cpu_seconds  # noqa: E402
from benchmarks.profile_sync import parse_raw, summarise  # noqa: E402
from benchmarks.scale import parse_args as scale_args  # noqa: E402
from benchmarks.scale import scale_scenario  # noqa: E402
from benchmarks.scenarios import Scenario, SeedCache  # noqa: E402
from benchmarks.tools import Endpoints, Fleet, MigratorSync  # noqa: E402
from tests.support.registry import RunningRegistry, start_registry  # noqa: E402

MONITOR_RE = re.compile(r'^\d+\.\d+ \[(?P<db>\d+) (?P<client>[^\]]+)\] "(?P<cmd>[^"]+)"')


class Monitor:
    """`redis-cli MONITOR`, keeping the commands of one database: (client address, command)."""

    def __init__(self, db: int) -> None:
        self.db = str(db)
        self.commands: list[tuple[str, str]] = []
        self.proc = subprocess.Popen(["redis-cli", "MONITOR"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = MONITOR_RE.match(line)
            if m and m["db"] == self.db:
                self.commands.append((m["client"], m["cmd"].upper()))

    def take(self) -> list[tuple[str, str]]:
        time.sleep(0.3)  # the last commands of the run reach the pipe
        taken, self.commands = self.commands, []
        return taken

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def client_ports(pid: int) -> set[str]:
    """The local addresses (ip:port) of a process's TCP connections to Redis."""
    try:
        return {f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.Process(pid).net_connections("tcp")
                if c.raddr and c.raddr.port == 6379}
    except psutil.Error:
        return set()


class PortWatch:
    """The worker's connections to Redis, sampled every 0.1 s (its pools open new ones)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ports: set[str] = client_ports(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.ports |= client_ports(self.pid)

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join()
        return self.ports


def worker_stacks(path: Path) -> list[tuple[list[str], int]]:
    """A worker's stacks without `python -m celery`'s module frame, which profile_sync's
    activities would read as start-up (every stack of the main thread starts there)."""
    return [([f for f in frames if not f.startswith("<module> (celery/__main__.py")], count)
            for frames, count in parse_raw(path)]


def py_spy(args: list[str], output: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["py-spy", "record", "--rate", "100", "--format", "raw", "--gil",
                             "--output", str(output), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def profile_sync_runs(args: argparse.Namespace, scenario: Scenario, source: RunningRegistry,
                      work: Path, keep: Path, report: dict[str, Any]) -> None:
    """`migrator sync`'s first copy and re-run under py-spy (the interpreter's CPU)."""
    target = start_registry(work / "target-sync")
    try:
        sync = MigratorSync()
        sync.prepare(work / "sync", scenario, Endpoints(source.host, target.host))
        for phase in ("initial", "noop"):
            argv, env = sync.command(phase)
            raw = keep / f"sync-{phase}.txt"
            began = time.monotonic()
            subprocess.run(["py-spy", "record", "--rate", "100", "--format", "raw", "--gil",
                            "--output", str(raw), "--", *argv], env=env, cwd=sync.work,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.monotonic() - began
            text = summarise(parse_raw(raw), f"migrator sync {phase}, {scenario.images} tags, "
                             f"{wall:.1f} s under py-spy", args.top)
            print(text + "\n")
            report[f"sync-{phase}"] = {"wall_s": round(wall, 2), "summary": text}
    finally:
        target.close()
        shutil.rmtree(target.root, ignore_errors=True)


def profile_fleet_runs(args: argparse.Namespace, scenario: Scenario, source: RunningRegistry,
                       work: Path, keep: Path, report: dict[str, Any]) -> None:
    """One worker under py-spy and MONITOR during `enqueue --wait`: first copy, re-run."""
    # 2. the fleet: one worker, py-spy attached, MONITOR on its database.
    target = start_registry(work / "target-fleet")
    fleet = Fleet(1, redis_url=f"redis://127.0.0.1:6379/{args.redis_db}")
    fleet.code = ROOT
    fleet.prepare(work / "fleet", scenario, Endpoints(source.host, target.host))
    monitor = Monitor(args.redis_db)
    try:
        worker = fleet.workers[0]
        for phase in ("initial", "noop"):
            raw = keep / f"worker-{phase}.txt"
            spy = py_spy(["--pid", str(worker.pid)], raw)
            time.sleep(1.0)  # py-spy attached
            monitor.take()
            watch = PortWatch(worker.pid)
            cpu_before = cpu_seconds(psutil.Process(worker.pid))
            argv, env = fleet.command(phase)
            began = time.monotonic()
            done = subprocess.run(argv, env=env, cwd=fleet.work, capture_output=True,
                                  text=True)
            wall = time.monotonic() - began
            worker_cpu = cpu_seconds(psutil.Process(worker.pid)) - cpu_before
            commands = monitor.take()
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            worker_ports = watch.stop()
            tasks = scenario.images + scenario.repositories  # images + expansions
            by_name = collections.Counter(cmd for _, cmd in commands)
            side = {client: "worker" if client in worker_ports else "producer and others"
                    for client, _ in commands}
            by_side = collections.Counter(side[client] for client, _ in commands)
            by_side_name = collections.Counter(f"{side[client]}: {cmd}"
                                               for client, cmd in commands)
            text = summarise(worker_stacks(raw), f"fleet worker {phase}, "
                             f"{scenario.images} tags ({wall:.1f} s, rc {done.returncode})",
                             args.top)
            print(text)
            print(f"-- Redis: {len(commands)} commands in database {args.redis_db}, "
                  f"{len(commands) / scenario.images:.1f} per tag; by side {dict(by_side)}")
            print("   " + ", ".join(f"{n} {c / scenario.images:.2f}"
                                    for n, c in by_side_name.most_common(30)))
            print(f"-- worker CPU {worker_cpu:.2f} s: {1000 * worker_cpu / tasks:.2f} ms "
                  f"per task ({tasks} tasks)\n")
            report[f"fleet-{phase}"] = {
                "wall_s": round(wall, 2), "worker_cpu_s": round(worker_cpu, 2),
                "worker_cpu_ms_per_task": round(1000 * worker_cpu / tasks, 2),
                "redis_commands": len(commands),
                "redis_commands_per_tag": round(len(commands) / scenario.images, 2),
                "redis_by_side": dict(by_side),
                "redis_by_command_per_tag": {n: round(c / scenario.images, 3)
                                             for n, c in by_name.most_common()},
                "redis_by_side_and_command_per_tag": {
                    n: round(c / scenario.images, 3) for n, c in by_side_name.most_common()},
                "summary": text}
    finally:
        monitor.stop()
        fleet.finish()
        target.close()
        shutil.rmtree(target.root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=2000)
    parser.add_argument("--per-repo", type=int, default=100)
    parser.add_argument("--redis-db", type=int, default=9)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--only", choices=("sync", "fleet"), help="profile only this one")
    parser.add_argument("--keep", type=Path, help="keep raw stacks here")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "profile-scale.json")
    args = parser.parse_args(argv)
    if not shutil.which("py-spy") or not shutil.which("redis-cli"):
        print("error: needs py-spy (pip install py-spy) and redis-cli", file=sys.stderr)
        return 2
    scenario = scale_scenario(args.tags, args.per_repo)
    work = Path(tempfile.mkdtemp(prefix="migrator-profile-scale-"))
    keep = args.keep or work
    keep.mkdir(parents=True, exist_ok=True)
    cache = SeedCache(scale_args([]).cache)
    source = cache.start()
    report: dict[str, Any] = {"tags": scenario.images, "repositories": scenario.repositories}
    try:
        cache.ensure(scenario)
        # 1. migrator sync: first copy and re-run, the interpreter's CPU.
        if args.only != "fleet":
            profile_sync_runs(args, scenario, source, work, keep, report)
        if args.only != "sync":  # 2. the fleet: one worker, py-spy attached, MONITOR
            profile_fleet_runs(args, scenario, source, work, keep, report)
    finally:
        source.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
