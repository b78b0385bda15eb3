#!/usr/bin/env bash
# Install everything the tests need into .venv and run the whole suite (lint included).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The Mooncake wheel's extension modules and master link libibverbs.so.1 (even over TCP).
# No grep -q: with pipefail, an early exit would SIGPIPE ldconfig and read as "missing".
if ! ldconfig -p | grep 'libibverbs\.so\.1 ' >/dev/null && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libibverbs1 >/dev/null
fi
# The dashboard test drives Debian's chromium headless through Playwright (no browser download).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
