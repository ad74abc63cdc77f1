#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a full test run: deps, build, ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
ctest --test-dir build --output-on-failure -j"$(nproc 2>/dev/null || echo 2)" --timeout 900
