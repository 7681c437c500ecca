"""Where `migrator sync` spends its time and CPU on a benchmark scenario (py-spy).

    python benchmarks/profile_sync.py [--scenario many-small] [--quick] [--keep DIR]

Seeds a fresh source registry like benchmarks/run.py does, then runs `migrator sync` twice
into fresh targets under `py-spy record`: once sampling only the thread holding the GIL (where
the interpreter's CPU goes), once every thread, idle ones too (where the wall time of the
copying threads goes: waiting for which request). Prints both summaries; --keep DIR also
keeps the raw stacks and speedscope files (open them at https://www.speedscope.app).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.scenarios import FULL, QUICK, seed_source, target_repository  # noqa: E402
from benchmarks.tools import clean_env  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

# Which request (or other activity) a copying thread's stack is in, innermost match first.
ACTIVITIES = (
    ("blob stream GET -> PUT", ("finish_upload", "open_blob", "VerifyingReader")),
    ("mount / mount-probe POST", ("mount_blob",)),
    ("upload POST", ("start_upload",)),
    ("manifest PUT", ("put_manifest",)),
    ("manifest GET (source)", ("get_manifest",)),
    ("manifest HEAD", ("head_manifest",)),
    ("blob HEAD", ("blob_exists",)),
    ("tag list GET", ("list_tags",)),
    ("ping GET /v2/", ("ping",)),
    ("ledger (SQLite) and single-flight lock", ("blob_lock", "ledger", "Ledger")),
    ("start-up: imports, argument and file parsing", ("<module>", "_find_and_load",
                                                      "load_inputs")),
)
# Threads waiting for other threads: left out of the shares, counted apart.
WAITING = (
    ("idle pool thread (no work queued)", "_worker (concurrent/futures/thread.py)", True),
    ("image thread waiting for its blob threads", "_copy_blobs", False),
    ("main thread waiting for image threads", "_run_all", False),
)
FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")


def parse_raw(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def func_of(frame: str) -> str:
    m = FRAME_RE.match(frame)
    if not m:
        return frame
    file = m["file"] or ""
    return f"{m['func']} ({file})"


def waiting(frames: list[str]) -> str | None:
    """The kind of wait a stack is in, if its thread is only waiting for other threads."""
    for name, needle, leaf_only in WAITING:
        if leaf_only and func_of(frames[-1]) == needle:
            return name
        if not leaf_only and any(needle in f for f in frames) and (
                "wait" in frames[-1].lower() or "result" in frames[-1]
                or "exception" in frames[-1] or "as_completed" in frames[-1]):
            return name
    return None


def activity(frames: list[str]) -> str:
    for name, needles in ACTIVITIES:
        if any(needle in frame for frame in frames for needle in needles):
            return name
    return "other"


def summarise(stacks: list[tuple[list[str], int]], title: str, top: int) -> str:
    waits: collections.Counter[str] = collections.Counter()
    working = []
    for frames, count in stacks:
        kind = waiting(frames)
        if kind:
            waits[kind] += count
        else:
            working.append((frames, count))
    total = sum(c for _, c in working) or 1
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_activity: collections.Counter[str] = collections.Counter()
    for frames, count in working:
        self_time[func_of(frames[-1])] += count
        for func in {func_of(f) for f in frames}:
            inclusive[func] += count
        by_activity[activity(frames)] += count
    out = [f"== {title}: {total} samples of working threads; left out, waiting for others: "
           + (", ".join(f"{n} {c}" for n, c in waits.most_common()) or "none"),
           "", "-- by activity (share of samples)"]
    out += [f"{100 * c / total:5.1f}%  {name}" for name, c in by_activity.most_common()]
    out += ["", f"-- top {top} functions by self samples"]
    out += [f"{100 * c / total:5.1f}%  {name}" for name, c in self_time.most_common(top)]
    out += ["", f"-- top {top} migrator functions by inclusive samples"]
    mine = [(n, c) for n, c in inclusive.most_common() if "migrator" in n]
    out += [f"{100 * c / total:5.1f}%  {name}" for name, c in mine[:top]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="many-small", choices=sorted(FULL))
    parser.add_argument("--quick", action="store_true", help="the tiny data of --quick")
    parser.add_argument("--keep", type=Path, help="keep raw stacks and speedscope files here")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if not shutil.which("py-spy"):
        print("error: py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    scenario = (QUICK if args.quick else FULL)[args.scenario]
    work = Path(tempfile.mkdtemp(prefix="migrator-profile-"))
    out_dir = args.keep or work
    out_dir.mkdir(parents=True, exist_ok=True)
    source = start_registry(work / "source")
    try:
        seed_source(source, scenario)
        for mode, flags in (("cpu", ["--gil"]), ("wall", ["--idle"])):
            target = start_registry(work / f"target-{mode}")
            try:
                images = {f"{source.host}/{r}": f"{target.host}/{target_repository(r)}"
                          for r in scenario.source_repositories()}
                auth = {source.host: {"insecure": True}, target.host: {"insecure": True}}
                (work / "images.json").write_text(json.dumps(images))
                (work / "auth.json").write_text(json.dumps(auth))
                for fmt, suffix in (("raw", "txt"), ("speedscope", "speedscope.json")):
                    if fmt == "speedscope" and not args.keep:
                        continue
                    if fmt == "speedscope":  # a second run into a third, fresh target
                        target.close()
                        target = start_registry(work / f"target-{mode}-2")
                        images = {k: v.replace(v.split("/")[0], target.host)
                                  for k, v in images.items()}
                        auth = {source.host: {"insecure": True}, target.host: {"insecure": True}}
                        (work / "images.json").write_text(json.dumps(images))
                        (work / "auth.json").write_text(json.dumps(auth))
                        shutil.rmtree(work / f"state-{mode}", ignore_errors=True)
                    output = out_dir / f"sync-{scenario.name}-{mode}.{suffix}"
                    subprocess.run(
                        ["py-spy", "record", "--rate", str(args.rate), "--format", fmt,
                         "--output", str(output), *flags, "--", sys.executable, "-m",
                         "migrator", "sync", "--images", str(work / "images.json"),
                         "--auth", str(work / "auth.json"), "--state",
                         str(work / f"state-{mode}"), "--log", str(work / f"sync-{mode}.log")],
                        cwd=work, env=clean_env(), check=True, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
                    if fmt == "raw":
                        title = ("CPU: samples of the thread holding the GIL" if mode == "cpu"
                                 else "wall: every thread, waiting included")
                        print(summarise(parse_raw(output), f"{scenario.name}, {title}",
                                        args.top))
                        print()
            finally:
                target.close()
    finally:
        source.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
