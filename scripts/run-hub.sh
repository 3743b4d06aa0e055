#!/usr/bin/env bash
# Install the hub into ./.venv and run it with embedded defaults:
# 127.0.0.1:8080, SQLite and the demo site tree in ./hub-data, live state in memory.
# Extra arguments go to `python -m hub serve` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
    need+=(python3-venv python3-pip)
fi
# The one-file export draws Chinese names with this font (recorder/export.py).
dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || need+=(fonts-wqy-microhei)
# The compiled send path (hub/media/_fastsend.c, HUB_FORWARD=c); without them the hub forwards through Python.
for pkg in gcc python3-dev; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need[@]}"
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e .
exec .venv/bin/python -m hub serve "$@"
