"""Process-level tuning of the blob streams."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import threading
from migrator.process import limit_malloc_arenas
assert limit_malloc_arenas(2) is True

def churn():
    for _ in range(200):
        blocks = [bytes(256 * 1024) for _ in range(4)]
        del blocks

threads = [threading.Thread(target=churn) for _ in range(16)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
import ctypes
ctypes.CDLL(None).malloc_stats()
"""


def test_copying_threads_share_two_malloc_arenas() -> None:
    """16 threads churning 256 KiB buffers: glibc would give each its own arena (up to 8 per
    core); after `limit_malloc_arenas(2)` its statistics list two."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60, check=True)
    arenas = done.stderr.count("Arena ")
    assert arenas == 2, done.stderr
