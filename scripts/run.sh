#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to the main job: deps, build, then the embedded
# default (the MuJoCo needle-insertion simulator driven by the shipped policy). Extra arguments
# go to `vla run`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
exec ./build/vla run "$@"
