"""Run the fault matrix (tests/integration/test_fault_matrix.py) N times per fault class and
print its figures as a markdown table, the one in docs/reliability.md.

    python scripts/fault_matrix.py --runs 5 [--json report.json]

Needs what the integration tests need: Debian's docker-registry and a Redis on
127.0.0.1:6379 (the fleet classes use its DB 10). Exit code: pytest's (0 when every class
held: nothing written wrong, every image correct or failed with the right reason).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [("runs", "runs"), ("images", "images"), ("correct", "correct"),
           ("failed_right", "failed, right reason"), ("written_wrong", "written wrong"),
           ("faults", "faults injected")]


def table(report: dict[str, dict]) -> str:
    """The figures per fault class as a markdown table."""
    lines = ["| fault class | " + " | ".join(title for _, title in COLUMNS) + " |",
             "| --- |" + " ---: |" * len(COLUMNS)]
    for name, figures in report.items():
        lines.append(f"| {name} | " + " | ".join(str(figures[key]) for key, _ in COLUMNS)
                     + " |")
    other = {name: f for name, f in report.items()
             if f["failed_wrong_reason"] or f["lost"] or f["problems"]}
    for name, figures in other.items():
        lines.append(f"\n{name}: {figures['failed_wrong_reason']} failed with a wrong reason, "
                     f"{figures['lost']} lost: " + "; ".join(figures["problems"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per fault class (default 5)")
    parser.add_argument("--json", metavar="FILE", help="keep the raw figures there too")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, e.g. -k 429")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(args.json or Path(scratch) / "fault-report.json")
        env = {**os.environ, "MIGRATOR_FAULT_RUNS": str(args.runs),
               "MIGRATOR_FAULT_REPORT": str(report_path)}
        # Each run of a class gets its own seeds; a class's runs stay within pytest's timeout.
        code = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-o", f"timeout={300 + 60 * args.runs}",
             "tests/integration/test_fault_matrix.py", *args.pytest_args], cwd=ROOT, env=env)
        if not report_path.exists():
            print("no report was written", file=sys.stderr)
            return code or 1
        print(table(json.loads(report_path.read_text())))
    return code


if __name__ == "__main__":
    sys.exit(main())
