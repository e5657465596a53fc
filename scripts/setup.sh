#!/usr/bin/env bash
# One idempotent setup for `make demo`, `make test` and CI: a Python 3.11 venv with the pinned stack,
# Horovod built from its sdist (CPU, Gloo, PyTorch) and cached as a wheel, and the Delta jars cached.
# Everything expensive is cached outside the checkout under $SIM_CACHE, keyed by version.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}
CACHE=${SIM_CACHE:-$HOME/.cache/sim-pipeline}
pin() { sed -n "s/^$1==\(.*\)$/\1/p" constraints.txt; }
HVD_VER=$(pin horovod); TORCH_VER=$(pin torch); DELTA_VER=$(pin delta-spark)
HVD_CACHE=$CACHE/horovod-$HVD_VER-torch-$TORCH_VER
JAR_CACHE=$CACHE/delta-$DELTA_VER
start=$(date +%s)
say() { echo "[setup] $*"; }

# 1. venv + package with the constraints, installed by uv (itself cached): its cache of unpacked wheels
#    makes a new venv on a machine that has the caches take seconds instead of minutes. The stamp is
#    the hash of everything that decides the install.
UV_VER=0.9.9
UV=$CACHE/uv-$UV_VER/bin/uv
export UV_CACHE_DIR=${UV_CACHE_DIR:-$CACHE/uv-cache} UV_PYTHON_DOWNLOADS=never
if [ ! -x "$UV" ]; then
  say "installing uv $UV_VER into $CACHE/uv-$UV_VER"
  "$PY" -m venv "$CACHE/uv-$UV_VER"
  "$CACHE/uv-$UV_VER/bin/pip" install -q "uv==$UV_VER"
fi
STAMP_KEY=$(cat constraints.txt setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$UV" venv -q --python "$(command -v "$PY")" "$VENV"
fi
if [ "$(cat "$VENV/.sim-stamp" 2>/dev/null)" != "$STAMP_KEY" ]; then
  say "installing the package and the pinned stack (first time: torch is several GB)"
  "$UV" pip install -q --python "$VENV/bin/python" -c constraints.txt "pip<25" "setuptools<80" wheel \
    -e ".[dev]"
  echo "$STAMP_KEY" > "$VENV/.sim-stamp"
else
  say "skipped: package install (constraints unchanged)"
fi

# 2. Horovod: build once from the sdist, patched for torch >= 2.1 (C++17) and a CUDA build of torch
#    without the CUDA toolkit; install the cached wheel afterwards.
if "$VENV/bin/python" -c "import horovod.torch" 2>/dev/null; then
  say "skipped: horovod $HVD_VER already installed"
else
  WHEEL=$(ls "$HVD_CACHE"/horovod-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$WHEEL" ]; then
    say "building horovod $HVD_VER (torch $TORCH_VER, CPU, Gloo); takes a few minutes"
    BUILD=$(mktemp -d)
    "$VENV/bin/pip" download -q --no-deps --no-binary :all: -d "$BUILD" "horovod==$HVD_VER"
    tar -xzf "$BUILD"/horovod-"$HVD_VER".tar.gz -C "$BUILD"
    SRC=$BUILD/horovod-$HVD_VER
    sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
    # torch from PyPI reports CUDA; Horovod would then demand the CUDA toolkit. We build for CPU only.
    sed -i '/string(TOUPPER "${Pytorch_CUDA}" Pytorch_CUDA)/a set(Pytorch_CUDA FALSE)' \
      "$SRC/cmake/Modules/FindPytorch.cmake"
    grep -q "^set(Pytorch_CUDA FALSE)" "$SRC/cmake/Modules/FindPytorch.cmake" \
      || { echo "[setup] could not patch FindPytorch.cmake" >&2; exit 1; }
    mkdir -p "$HVD_CACHE"
    ( cd "$SRC" && HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
      HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_GPU_OPERATIONS= HOROVOD_CPU_OPERATIONS=GLOO \
      MAKEFLAGS=-j2 CUDA_HOME=/nonexistent \
      "$VENV/bin/pip" wheel -q --no-deps --no-build-isolation -w "$HVD_CACHE" . )
    rm -rf "$BUILD"
    WHEEL=$(ls "$HVD_CACHE"/horovod-*.whl | head -1)
  else
    say "using cached horovod wheel $WHEEL"
  fi
  "$UV" pip install -q --python "$VENV/bin/python" --no-deps "$WHEEL"
  # horovod's own runtime deps (cloudpickle, psutil, pyyaml, packaging) come from the package extras.
fi

# 3. Delta jars from Maven Central, copied to a versioned cache handed to Spark via spark.jars.
if [ -f "$JAR_CACHE/delta-spark_2.13-$DELTA_VER.jar" ] && [ -f "$JAR_CACHE/delta-storage-$DELTA_VER.jar" ]; then
  say "skipped: delta jars in $JAR_CACHE"
else
  say "fetching io.delta:delta-spark_2.13:$DELTA_VER with Maven"
  mvn -q -B dependency:get -Dartifact="io.delta:delta-spark_2.13:$DELTA_VER"
  M2=${MAVEN_REPO:-$HOME/.m2/repository}
  mkdir -p "$JAR_CACHE"
  cp "$M2/io/delta/delta-spark_2.13/$DELTA_VER/delta-spark_2.13-$DELTA_VER.jar" \
     "$M2/io/delta/delta-storage/$DELTA_VER/delta-storage-$DELTA_VER.jar" "$JAR_CACHE/"
fi
say "done in $(( $(date +%s) - start ))s"
