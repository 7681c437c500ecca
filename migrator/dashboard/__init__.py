"""`migrator dashboard`: a read-only web page of the fleet's runs, read from Redis.

    reading.py  the keys read (runs, schedules' last firings); never a run's `:auth`
    causes.py   failure reasons normalised and grouped by cause
    sampler.py  a sample every few seconds: runs, byte series, ETA, one JSON document
    page.py     the page, its style and script (polls /api/runs)
    server.py   the Tornado server: bind policy, HTTP Basic, security headers
"""

from migrator.dashboard.server import Options, listen_problem, serve

__all__ = ["Options", "listen_problem", "serve"]
