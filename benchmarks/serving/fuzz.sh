#!/usr/bin/env bash
# The longer property-based run of the server (tests/test_serve_properties.py with every example count
# x SCALE): requests generated from the app's OpenAPI schema and edge values on every route, on a tiny
# random Llama. Writes benchmarks/serving/fuzz.jsonl (one line per route group: requests, statuses,
# seconds; a 5xx, a hang, an unhealthy server or a changed answer fails the run instead).
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE="${1:-10}"
rm -f benchmarks/serving/fuzz.jsonl
DEPT_FUZZ_SCALE="$SCALE" DEPT_FUZZ_REPORT=benchmarks/serving/fuzz.jsonl \
  "${PYTHON:-.venv/bin/python}" -m pytest tests/test_serve_properties.py -q -p no:cacheprovider --timeout=3600
