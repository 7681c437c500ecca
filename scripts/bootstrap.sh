#!/usr/bin/env bash
# Installs what running and testing migrator needs: Debian's docker-registry (the test and demo
# registries) and a virtualenv in .venv with the project and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker-registry >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq docker-registry
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq docker-registry
    fi
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
