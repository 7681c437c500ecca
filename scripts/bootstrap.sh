#!/usr/bin/env bash
# Installs what running and testing migrator needs: Debian packages and a virtualenv in .venv
# with the project and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

# docker-registry: the registries of the demo and the tests; skopeo: the peer the benchmark
# (and its smoke test) measures against; redis-server: the fleet's broker where none runs;
# chromium: the headless browser that tests/integration/test_dashboard.py drives through
# Playwright (Debian's build: `playwright install` would download one, which CI cannot).
missing=""
command -v docker-registry >/dev/null || missing="$missing docker-registry"
command -v skopeo >/dev/null || missing="$missing skopeo"
command -v redis-server >/dev/null || missing="$missing redis-server"
command -v chromium >/dev/null || missing="$missing chromium"
command -v tmux >/dev/null || missing="$missing tmux"  # the terminal of tests/integration/test_terminal.py
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq $missing
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
