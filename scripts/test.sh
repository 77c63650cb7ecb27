#!/usr/bin/env bash
# The whole test suite: set up, lint and format check (ruff), types (mypy), then pytest
# (unit, contract, integration and end-to-end tests against a real broker and Redis that
# the suite starts and stops itself).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
