#!/usr/bin/env bash
# Developer build: compiles pyconv/_core in place (no install), so `PYTHONPATH=. pytest`
# uses this checkout. Extra arguments go to CMake (e.g. -DPYCONV_SANITIZE=ON).
set -euo pipefail
cd "$(dirname "$0")"
dir=build/dev${PYCONV_BUILD_SUFFIX:-}
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/pyconv" \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" "$@" >/dev/null
cmake --build "$dir"
