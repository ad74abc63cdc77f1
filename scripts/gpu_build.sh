#!/usr/bin/env bash
# Builds the WHOLE tree (simulator included) on a GPU machine without Debian packages installed:
# against the machine's PyTorch libtorch (CUDA), with the Debian packages the build needs carried
# as .debs in .deps/debs (fetch them on Debian 12 with scripts/fetch_gpu_debs.sh) and unpacked
# into .deps/root (never into /). Prints the environment line to source for running ./build-gpu/vla.
#
# Usage (repo root, on the GPU machine): scripts/gpu_build.sh [--test | --unpack-only]
#   --test          also run the whole ctest suite (GPU tests included)
#   --unpack-only   only unpack the .debs that arrived (a device call carries at most 64 MB, so
#                   .deps/debs_extra travels in a call before .deps/debs; docs/development)
#   Env: BUILD (default build-gpu), JOBS (default nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc)}
DEPS=$PWD/.deps/root
# Unpack every carried .deb once (a marker per package): .deps/debs and .deps/debs_extra arrive in
# separate calls (each call carries at most 64 MB).
mkdir -p "$DEPS/.unpacked"
for f in .deps/debs/*.deb .deps/debs_extra/*.deb; do
  [ -f "$f" ] || continue
  m="$DEPS/.unpacked/$(basename "$f")"
  [ -f "$m" ] || { dpkg -x "$f" "$DEPS" && touch "$m"; }
done
[ "${1:-}" = "--unpack-only" ] && { echo "unpacked: $(ls "$DEPS/.unpacked" | wc -l) packages"; exit 0; }
[ -f "$DEPS/usr/include/mujoco/mujoco.h" ] && [ -f "$DEPS/usr/include/cairo/cairo.h" ] ||
  { echo "missing .debs: run scripts/fetch_gpu_debs.sh on Debian 12 and carry .deps/debs and .deps/debs_extra"; exit 2; }
if [ ! -f "$DEPS/.done" ]; then
  # MuJoCo's CMake config names the system qhull include folder; point it into the tree.
  sed -i "s#/usr/include/libqhull_r/#$DEPS/usr/include/libqhull_r/#" \
    "$DEPS/usr/lib/x86_64-linux-gnu/cmake/mujoco/mujocoTargets.cmake"
  touch "$DEPS/.done"
fi
LIBS=$DEPS/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# Charts: fontconfig finds the carried DejaVu fonts through a config of our own (the machine has
# no /etc/fonts).
mkdir -p "$DEPS/var/cache/fontconfig"
cat > "$DEPS/fonts.conf" <<XML
<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig><dir>$DEPS/usr/share/fonts</dir><dir>/usr/share/fonts</dir><cachedir>$DEPS/var/cache/fontconfig</cachedir></fontconfig>
XML
export FONTCONFIG_FILE=$DEPS/fonts.conf
TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
# The carried headers come first, the multiarch folder too: Debian's jconfig.h lives there, and the
# GPU machine's own (Ubuntu, libjpeg 8) made libjpeg 62 refuse every call ("caller expects 80").
GEN=""; command -v ninja >/dev/null && GEN="-G Ninja"
cmake -S . -B "$BUILD" $GEN -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$DEPS/usr;$LIBS/cmake" \
  -DVLA_DEPS_ROOT="$DEPS" -Dnlohmann_json_DIR="$DEPS/usr/share/cmake/nlohmann_json" \
  -DGTest_DIR="$LIBS/cmake/GTest" -Dbenchmark_DIR="$LIBS/cmake/benchmark" -Dmujoco_DIR="$LIBS/cmake/mujoco" \
  -DCMAKE_CXX_FLAGS="-isystem $DEPS/usr/include/x86_64-linux-gnu -isystem $DEPS/usr/include" -DOPENGL_INCLUDE_DIR="$DEPS/usr/include" \
  -DOPENGL_gl_LIBRARY="$LIBS/libOSMesa.so" -DOPENGL_opengl_LIBRARY="$LIBS/libOSMesa.so" \
  -DOPENGL_glx_LIBRARY="$LIBS/libOSMesa.so" \
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" \
  -DCMAKE_CUDA_ARCHITECTURES=90 > "$BUILD.configure.log" 2>&1 ||
  { tail -40 "$BUILD.configure.log"; exit 1; }
grep -E -A2 "vla: |simulator disabled|OpenGL|mujoco|serve" "$BUILD.configure.log" || true
cmake --build "$BUILD" -j"$JOBS" > "$BUILD.build.log" 2>&1 ||
  { grep -E "error|Error" -A4 "$BUILD.build.log" | head -80; exit 1; }
echo "built $BUILD; run with: export LD_LIBRARY_PATH=$LD_LIBRARY_PATH FONTCONFIG_FILE=$FONTCONFIG_FILE"
if [ "${1:-}" = "--test" ]; then
  # Several test processes at once: each gets its share of the cores (torch would otherwise start
  # one thread per core in every process and the CPU tests crawl).
  CTEST_JOBS=${CTEST_JOBS:-8}
  OMP_NUM_THREADS=$(( $(nproc) / CTEST_JOBS > 0 ? $(nproc) / CTEST_JOBS : 1 )) \
    ctest --test-dir "$BUILD" --output-on-failure -j"$CTEST_JOBS" --timeout 900
fi
