"""A WAN stand-in: tests.support.proxy.FaultProxy with a delay on every request, in its own process.

    python -m benchmarks.latency_proxy UPSTREAM_URL SECONDS_PER_REQUEST

Prints ``listening 127.0.0.1:PORT`` once ready and serves until stdin closes or SIGTERM. A
process of its own keeps the proxy's Python threads away from the benchmark's sampler (and its
GIL). Every request waits SECONDS_PER_REQUEST before it is forwarded: one round trip of a link
with that RTT (25 ms each way = 0.05). TCP and TLS handshakes are not delayed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class LatencyProxy:
    """Handle on a running proxy subprocess."""

    def __init__(self, upstream_url: str, seconds: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.latency_proxy", upstream_url, str(seconds)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            self.stop()
            raise RuntimeError(f"latency proxy for {upstream_url} did not start: {line}")
        self.host: str = line[1]
        self.url = f"http://{self.host}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.support.proxy import FaultProxy

    upstream, seconds = argv[0], float(argv[1])
    proxy = FaultProxy(upstream, timeout=600.0)
    if seconds > 0:
        proxy.delay(seconds, times=None)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print(f"listening {proxy.host}", flush=True)
    done.wait()
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
