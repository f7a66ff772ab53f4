#!/usr/bin/env bash
# Long kill/resume soak (CI runs 3 cycles): SIGKILL `vaelab train` at random moments N times, resume each time,
# and check the final weights equal an uninterrupted run's.   usage: benchmarks/soak_kill.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
VAELAB_KILL_CYCLES="${1:-30}" "${PYTHON:-.venv/bin/python}" -m pytest -q tests/test_crash.py
