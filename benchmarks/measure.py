"""What one tool run costs: wall time, CPU, memory of its process tree, and the registries' CPU.

Why these sources:
- CPU of the tool: `os.wait4()` on the tree's root returns the user+sys time of the root and of
  every descendant it waited for (skopeo's processes under xargs), exactly, even for processes
  that lived 50 ms. Long-lived processes outside the tree (the fleet's workers) are measured as
  the difference of their own counters before and after.
- Peak RSS of the tree: a sampler (every ``interval`` s) sums the RSS of the root, its
  descendants (found with psutil) and the extra processes; the largest sum is the tree's peak.
  Short spikes between samples can be missed, so the kernel's exact per-process high-water
  mark (``VmHWM``) is kept as well; the extra processes' mark is reset before the run through
  ``/proc/PID/clear_refs`` so that it covers this run only.
- Registry CPU: each registry process's own user+sys counters, before and after.
- Redis CPU (fleet runs): ``INFO cpu`` of the server, before and after.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MIB = 1024 * 1024


def cpu_seconds(process: psutil.Process) -> float:
    """user + system seconds of one live process (0 when it is gone)."""
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    return times.user + times.system


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux ≥ 4.0, needs write access)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes(pid: int) -> int | None:
    """The kernel's high-water mark of a live process's RSS (VmHWM), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_and_peak(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of a live process in bytes, from /proc/PID/status."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line[:5]] = int(line.split()[1]) * 1024
    if "VmRSS" not in values:
        return None  # a zombie has no memory left
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, from the kernel's per-thread children lists (cheap: no scan
    of all of /proc), or from psutil where those lists are not available."""
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                text = Path(f"/proc/{current}/task/{tid}/children").read_text()
            except FileNotFoundError:
                if not Path(f"/proc/{current}/task/{tid}").exists():
                    continue
                return _psutil_descendants(pid)
            except OSError:
                continue
            for child in text.split():
                found.append(int(child))
                stack.append(int(child))
    return found


def _psutil_descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


class TreeSampler:
    """Background sampler of a process tree plus extra processes.

    Each sample sums the RSS of every live process (the tree's peak is the largest sum) and
    keeps each process's VmHWM, the kernel's exact high-water mark of its RSS since its exec
    (only growth in the last ``interval`` before a process exits can be missed). wait4's
    ru_maxrss is not used: on exec the kernel carries the parent's high-water mark into the
    child's, so a child of a big parent would report the parent's peak.
    """

    def __init__(self, root_pid: int, extra: Sequence[psutil.Process] = (),
                 interval: float = 0.05) -> None:
        self.root_pid = root_pid
        self.extra = list(extra)
        self.interval = interval
        self.peak_rss = 0
        self.samples = 0
        self.peaks: dict[int, int] = {}  # pid -> largest VmHWM seen
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _processes(self) -> list[int]:
        pids: list[int] = []
        for root in [self.root_pid, *(p.pid for p in self.extra)]:
            pids.append(root)
            pids.extend(descendants(root))
        return pids

    def sample(self) -> None:
        total = 0
        for pid in self._processes():
            values = rss_and_peak(pid)
            if values is None:
                continue
            total += values[0]
            if values[1] > self.peaks.get(pid, 0):
                self.peaks[pid] = values[1]
            with contextlib.suppress(OSError):  # a process is named by what it runs last
                self.names[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        self.samples += 1
        self.peak_rss = max(self.peak_rss, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


@dataclass
class ProcessCost:
    """What the tool's processes spent during one run."""

    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_tree_bytes: int
    max_rss_process_bytes: int
    returncode: int
    samples: int
    per_process_peak: dict[str, int] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s


def run_measured(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    extra: Iterable[tuple[str, psutil.Process]] = (),
    timeout: float = 3600.0,
    interval: float = 0.05,
) -> ProcessCost:
    """Run ``argv`` to completion while measuring it and the ``extra`` (named) processes."""
    named = list(extra)
    before = {name: proc.cpu_times() for name, proc in named}
    exact_peaks = {name: reset_peak_rss(proc.pid) for name, proc in named}
    with open(log_path, "ab") as log:
        started = time.monotonic()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        with TreeSampler(proc.pid, [p for _, p in named], interval) as sampler:
            status, usage = _wait4(proc, timeout)
            wall = time.monotonic() - started
    user, system = usage.ru_utime, usage.ru_stime
    extra_pids = {proc.pid: name for name, proc in named}
    per_process: dict[str, int] = {}
    for pid, peak in sampler.peaks.items():
        if pid in extra_pids:
            continue
        name = "tool" if pid == proc.pid else sampler.names.get(pid, str(pid))
        per_process[name] = max(per_process.get(name, 0), peak)
    for name, extra_proc in named:
        after = extra_proc.cpu_times()
        user += after.user - before[name].user
        system += after.system - before[name].system
        exact = peak_rss_bytes(extra_proc.pid) if exact_peaks[name] else None
        per_process[name] = max(exact or 0, sampler.peaks.get(extra_proc.pid, 0))
    return ProcessCost(
        wall_s=wall,
        cpu_user_s=user,
        cpu_sys_s=system,
        peak_rss_tree_bytes=max([sampler.peak_rss, *per_process.values()]),
        max_rss_process_bytes=max(per_process.values(), default=0),
        returncode=status,
        samples=sampler.samples,
        per_process_peak=per_process,
    )


def _wait4(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, os.struct_rusage]:
    """Reap ``proc`` with wait4 (its rusage covers the descendants it reaped); kill on timeout."""
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if expired.is_set():
        raise TimeoutError(f"{argv_name(proc)} ran longer than {timeout:.0f} s")
    return proc.returncode, usage


def argv_name(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args
    if isinstance(args, list | tuple):
        return " ".join(str(a) for a in args[:4])
    return str(args)


def machine_busy_seconds() -> float:
    """CPU-seconds all CPUs of the machine have spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float, busy_cores: float = 0.25, window: float = 0.5) -> float:
    """Wait (at most ``max_wait`` s) for a ``window`` in which the whole machine uses less than
    ``busy_cores`` CPUs, so a run does not start in the middle of someone else's burst.
    Returns the seconds waited."""
    started = time.monotonic()
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        if (machine_busy_seconds() - before) / window < busy_cores:
            return time.monotonic() - started
        if time.monotonic() - started >= max_wait:
            return time.monotonic() - started


def redis_cpu_seconds(url: str) -> float | None:
    """The Redis server's own user+sys seconds (INFO cpu), or None if it cannot be asked."""
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        info = client.info("cpu")
        client.close()
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except Exception:  # noqa: BLE001 - an unavailable counter is reported as missing
        return None
