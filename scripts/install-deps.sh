#!/usr/bin/env bash
# Installs every build and test dependency of dualrate from Debian 12 packages.
# Used by the README, CI (.ci/run) and developers alike. Safe to re-run.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PKGS=(build-essential cmake git pkg-config
      libtorch-dev libopenblas0-pthread
      libmujoco-dev libqhull-dev libosmesa6-dev
      libpng-dev libjpeg62-turbo-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
      libcairo2-dev fonts-dejavu-core                    # charts (src/plot)
      libgtest-dev libgmock-dev libbenchmark-dev
      libboost-dev libmsgpack-cxx-dev                    # vla serve (Boost.Beast, msgpack)
      python3-websockets python3-msgpack python3-numpy  # the Python client and its test
      clang)  # libFuzzer + sanitizers for scripts/fuzz.sh
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[install-deps] installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "[install-deps] all packages present"
fi
