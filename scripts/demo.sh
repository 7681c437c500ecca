#!/usr/bin/env bash
# The README's first command: install what is needed, then run the demo (two local
# registries, sample images, `migrator sync` between them, twice). With --fleet: the same
# rules through a Celery worker and the dashboard (needs Redis).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
