#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to the main job: deps, build, then the embedded
# default (the MuJoCo needle-insertion simulator driven by the shipped policy). Extra arguments
# go to `vla run`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
# Debian's OpenBLAS picks its kernels from the CPU model and falls back to generic ones on models
# it does not know (VMs often report a generic one): the VLM then runs ~2x slower. Name the kernel
# family from the CPU's flags unless the user already did.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
fi
exec ./build/vla run "$@"
