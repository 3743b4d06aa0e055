#!/usr/bin/env bash
# Install everything the tests need (Debian packages, Python packages) and run them.
# Extra arguments go to pytest (e.g. -k forwarding).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
need=()
# gcc and python3-dev: `pip install -e .` compiles hub/media/_fastsend.c, _fastrecv.c and _reader.c, which the tests of the "c" path, test_fastrecv and test_reader need.
for pkg in gcc python3-dev redis-server postgresql chromium docker-compose python3-venv fonts-wqy-microhei fonts-noto-cjk \
    rtsp-server-perl coturn nftables iproute2; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    # The tests start throwaway PostgreSQL clusters of their own: the package's main cluster is not wanted.
    if [[ " ${need[*]} " == *" postgresql "* ]]; then
        $SUDO mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    # Nor is coturn's own service: the tests run turnserver themselves, inside network namespaces.
    # policy-rc.d exit 101 tells the packages' scripts not to start anything.
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    [ -z "$own_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test]"
.venv/bin/ruff check hub signaling recorder client tests bench
# The tests start their own redis-server and hub processes on 127.0.0.1.
# The slowest tests are listed at the end: where to look when the run grows.
exec .venv/bin/python -m pytest --durations=25 "$@"
