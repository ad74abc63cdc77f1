#!/usr/bin/env bash
# Downloads (on Debian 12) the Debian packages scripts/gpu_build.sh unpacks on a GPU machine that
# has no package registry: header-only deps, GoogleTest / Benchmark, MuJoCo and OSMesa (llvmpipe)
# with their libraries (about 48 MB, .deps/debs), and the server's Boost / msgpack-cxx headers with
# Cairo (the charts) and its libraries (about 16 MB, .deps/debs_extra). A device call carries at
# most 64 MB, so the two folders travel in separate calls; gpu_build.sh unpacks what has arrived.
# Usage: scripts/fetch_gpu_debs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps/debs
cd .deps/debs
apt-get download nlohmann-json3-dev libcli11-dev libpng-dev libpng16-16 \
  libjpeg62-turbo-dev libjpeg62-turbo zlib1g-dev libgtest-dev libgmock-dev \
  libbenchmark-dev libbenchmark1debian libmujoco-dev libmujoco2.2.2 libccd2 liblodepng0 \
  libqhull-r8.0 libqhull-dev libqhull8.0 libqhullcpp8.0 libtinyxml2-9 libosmesa6 libosmesa6-dev \
  libglapi-mesa libllvm15 libz3-4 libedit2 libgl-dev mesa-common-dev libxml2 libicu72 libbsd0 libmd0
ls -s --block-size=K | tail -n +1
mkdir -p ../debs_extra && cd ../debs_extra
apt-get download libboost-dev libboost1.74-dev libmsgpack-cxx-dev \
  libcairo2-dev libcairo2 libpixman-1-0 libfontconfig1 fontconfig-config fonts-dejavu-core \
  libfreetype6 libbrotli1 libexpat1 libx11-6 libx11-data libxau6 libxcb1 libxcb-render0 \
  libxcb-shm0 libxdmcp6 libxext6 libxrender1
ls -s --block-size=K | tail -n +1
