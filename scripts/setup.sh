#!/usr/bin/env bash
# One idempotent setup for `make demo`, `make test` and CI: a Python 3.11 venv with the pinned stack,
# Horovod built from its sdist (Gloo, PyTorch; with its NCCL GPU operations where the CUDA toolkit and NCCL
# are found) and cached as a wheel, the Delta jars cached, and the object-storage jars cached: Hadoop's S3A
# connector for Spark and the s3proxy S3 server of the tests; and a Redis server for the serving store.
# Everything expensive is cached outside the checkout under $SIM_CACHE, keyed by version.
# Before anything is installed it checks the prerequisites and names any that is missing.
set -euo pipefail
usage() {
  cat <<'EOF'
usage: bash scripts/setup.sh [--check]   (what `make setup` runs)

Creates .venv (Python 3.11) with the pinned stack of constraints.txt, builds Horovod once and fetches
the Delta jars and the object-storage jars (hadoop-aws + AWS SDK bundle for s3a://, about 560 MB, and
the s3proxy server the tests run) once; the caches live in $SIM_CACHE (default ~/.cache/sim-pipeline).
Safe to run again. It first checks the prerequisites: Python 3.11 (with its venv module, and its
headers while Horovod still has to be built), Java 17 or later and, only while what they make is not
cached, Maven (jars), a C/C++ compiler and cmake (Horovod). If one is missing it names it with the package that
provides it and exits 1 before installing anything.

A redis-server (the serving store's server, for the tests and `make serve-demo`): the one on PATH or
$SIM_REDIS_SERVER; otherwise Debian's Redis (redis-tools with libjemalloc2 and liblzf1) is fetched once
with `apt-get download` and unpacked into $SIM_CACHE/redis-<version> (nothing installed system-wide, no
service started); without apt-get, redis-server is a prerequisite like the others.

Horovod is built with its GPU operations (HOROVOD_GPU_OPERATIONS=NCCL) when the CUDA toolkit's nvcc (on
PATH, or in $CUDA_HOME/bin or /usr/local/cuda/bin) and NCCL (nccl.h and libnccl.so, under $NCCL_HOME or
the system's directories) are found, for CPUs only otherwise; the two wheels are cached apart.

  --check   only check the prerequisites (exit 0 when all are there) and say which Horovod it builds

Environment: PYTHON (default python3.11), VENV (default .venv), SIM_CACHE, JAVA_HOME, CC, CXX, CUDA_HOME,
NCCL_HOME, HOROVOD_BUILD_CUDA_CC_LIST (GPU build: compute capabilities, default those of torch's build),
SIM_HOROVOD_GPU=0 (build for CPUs only even where CUDA and NCCL are found).
EOF
}
CHECK_ONLY=0
case "${1:-}" in
  "") ;;
  --check) CHECK_ONLY=1 ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}
CACHE=${SIM_CACHE:-$HOME/.cache/sim-pipeline}
pin() { sed -n "s/^$1==\(.*\)$/\1/p" constraints.txt; }
HVD_VER=$(pin horovod); TORCH_VER=$(pin torch); DELTA_VER=$(pin delta-spark)

# Horovod's GPU operations: built with NCCL where nvcc and NCCL are found (SIM_HOROVOD_GPU=0: never). The
# wheel's cache directory names the build (and the CUDA release), so a CPU wheel never stands in for a
# GPU build, nor one CUDA release's wheel for another's.
find_nvcc() {
  local c
  for c in "$(command -v nvcc 2>/dev/null || true)" ${CUDA_HOME:+"$CUDA_HOME/bin/nvcc"} /usr/local/cuda/bin/nvcc; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}
find_nccl() {  # prints "<include dir> <lib dir>"
  local d inc lib
  for d in ${NCCL_HOME:+"$NCCL_HOME"} ${CUDA_HOME:+"$CUDA_HOME"} /usr/local/cuda /usr/local /usr; do
    inc=$d/include
    [ -f "$inc/nccl.h" ] || continue
    for lib in "$d/lib" "$d/lib64" "$d/lib/$(uname -m)-linux-gnu"; do
      if ls "$lib"/libnccl.so* >/dev/null 2>&1; then echo "$inc $lib"; return 0; fi
    done
  done
  return 1
}
HVD_GPU=0; HVD_WHY="no nvcc (CUDA toolkit) found"
if [ "${SIM_HOROVOD_GPU:-}" = 0 ]; then
  HVD_WHY="SIM_HOROVOD_GPU=0"
elif NVCC=$(find_nvcc); then
  if NCCL_DIRS=$(find_nccl); then
    CUDA_VER=$("$NVCC" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p' | head -1 || true)
    HVD_GPU=1; HVD_WHY="$NVCC (CUDA ${CUDA_VER:-unknown}) and NCCL in ${NCCL_DIRS%% *}"
  else
    HVD_WHY="$NVCC found but not NCCL (nccl.h and libnccl.so; NCCL_HOME names where it is)"
  fi
fi
if [ "$HVD_GPU" = 1 ]; then
  HVD_KIND="GPU (NCCL) and CPU (Gloo)"
  HVD_CACHE=$CACHE/horovod-$HVD_VER-torch-$TORCH_VER-cuda${CUDA_VER:-unknown}-nccl
else
  HVD_KIND="CPU (Gloo)"
  HVD_CACHE=$CACHE/horovod-$HVD_VER-torch-$TORCH_VER
fi
HVD_KEY=$(basename "$HVD_CACHE")
# The Horovod in the venv is of this build: its stamp says so (a venv set up before stamps were written
# holds the CPU build, the only one setup made then).
hvd_installed() {
  [ -d "$VENV/lib/python3.11/site-packages/horovod" ] || return 1
  [ "$(cat "$VENV/.sim-horovod" 2>/dev/null || echo "horovod-$HVD_VER-torch-$TORCH_VER")" = "$HVD_KEY" ]
}
JAR_CACHE=$CACHE/delta-$DELTA_VER
# Object storage. hadoop-aws must be the Hadoop of pyspark (pyspark/jars/hadoop-client-api-*.jar) and the
# AWS SDK bundle the one that hadoop-aws release was built against; sim/adapters/spark.py names the same
# versions (a test checks that they agree).
HADOOP_AWS_VER=3.4.1; AWS_SDK_VER=2.24.6; S3PROXY_VER=2.6.0
S3A_CACHE=$CACHE/hadoop-aws-$HADOOP_AWS_VER-sdk-$AWS_SDK_VER
S3PROXY_CACHE=$CACHE/s3proxy-$S3PROXY_VER
UV_VER=0.9.9
redis_found() {
  [ -n "${SIM_REDIS_SERVER:-}" ] || command -v redis-server >/dev/null 2>&1 \
    || ls "$CACHE"/redis-*/bin/redis-server >/dev/null 2>&1
}
start=$(date +%s)
say() { echo "[setup] $*"; }

# 0. Prerequisites, all checked before the first install, so that a missing one never stops setup
#    halfway. Maven, the compilers, cmake and Python's headers only while what they make is not cached.
delta_cached() { [ -f "$JAR_CACHE/delta-spark_2.13-$DELTA_VER.jar" ] && [ -f "$JAR_CACHE/delta-storage-$DELTA_VER.jar" ]; }
s3a_cached() { [ -f "$S3A_CACHE/hadoop-aws-$HADOOP_AWS_VER.jar" ] && [ -f "$S3A_CACHE/bundle-$AWS_SDK_VER.jar" ]; }
s3proxy_cached() { [ -f "$S3PROXY_CACHE/.complete" ]; }
py311() { "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }
check_prerequisites() {
  local missing=() pkgs=() v java why
  if ! command -v "$PY" >/dev/null 2>&1; then
    missing+=("Python 3.11: no '$PY' on PATH (PYTHON=/path/to/python3.11 names another one)")
    pkgs+=(python3.11 python3.11-venv)
  elif ! py311; then
    v=$("$PY" -V 2>&1 | head -1 || true)
    missing+=("Python 3.11: '$PY' is ${v:-not runnable} (PYTHON=/path/to/python3.11 names another one)")
    pkgs+=(python3.11 python3.11-venv)
  elif [ ! -x "$CACHE/uv-$UV_VER/bin/uv" ] && ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=("Python 3.11's venv module (with ensurepip): bootstraps uv once"); pkgs+=(python3.11-venv)
  fi
  java=${JAVA_HOME:+$JAVA_HOME/bin/}java
  if ! command -v "$java" >/dev/null 2>&1; then
    missing+=("Java 17: no java on PATH${JAVA_HOME:+ nor in JAVA_HOME=$JAVA_HOME} (Spark runs on it)")
    pkgs+=(openjdk-17-jdk-headless)
  else
    v=$("$java" -version 2>&1 | sed -n 's/.* version "\([0-9][0-9]*\).*/\1/p' | head -1 || true)
    if [ -z "$v" ] || [ "$v" -lt 17 ]; then
      missing+=("Java 17: $(command -v "$java") is version ${v:-unknown}; Spark 4 needs 17 or later")
      pkgs+=(openjdk-17-jdk-headless)
    fi
  fi
  if ! { delta_cached && s3a_cached && s3proxy_cached; } && ! command -v mvn >/dev/null 2>&1; then
    missing+=("Maven (mvn): fetches the Delta $DELTA_VER, hadoop-aws $HADOOP_AWS_VER and s3proxy $S3PROXY_VER jars once into $CACHE")
    pkgs+=(maven)
  fi
  if ! ls "$HVD_CACHE"/horovod-*.whl >/dev/null 2>&1 && ! hvd_installed; then
    why="builds Horovod $HVD_VER once (the wheel is then cached in $HVD_CACHE)"
    if [ -z "${CC:-}" ] && ! command -v gcc >/dev/null 2>&1 && ! command -v cc >/dev/null 2>&1; then
      missing+=("a C compiler (gcc): $why"); pkgs+=(gcc)
    fi
    if [ -z "${CXX:-}" ] && ! command -v g++ >/dev/null 2>&1 && ! command -v c++ >/dev/null 2>&1; then
      missing+=("a C++ compiler (g++): $why"); pkgs+=(g++)
    fi
    if ! command -v cmake >/dev/null 2>&1; then
      missing+=("cmake: $why"); pkgs+=(cmake)
    fi
    if py311 && ! "$PY" -c 'import os, sys, sysconfig
sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
      missing+=("Python 3.11's headers (Python.h): $why"); pkgs+=(python3.11-dev)
    fi
  fi
  if ! redis_found && ! command -v apt-get >/dev/null 2>&1; then
    missing+=("redis-server: the serving store's server (its tests, make serve-demo); none on PATH or in $CACHE, and no apt-get to fetch it")
    pkgs+=(redis-server)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    {
      echo "[setup] missing prerequisites (nothing was installed):"
      printf '[setup]   - %s\n' "${missing[@]}"
      echo "[setup] on Debian/Ubuntu install them with:"
      echo "[setup]   $([ "$(id -u)" = 0 ] || echo "sudo ")apt-get install -y $(printf '%s\n' "${pkgs[@]}" | awk '!seen[$0]++' | paste -sd ' ')"
      echo "[setup] (elsewhere the same tools from the system's package manager; Python 3.11 also from"
      echo "[setup] pyenv or python.org, then PYTHON=/path/to/python3.11 make setup), then run make setup again."
    } >&2
    return 1
  fi
  say "prerequisites: Python $("$PY" -c 'import platform; print(platform.python_version())'), Java $v"
  say "horovod: $HVD_KIND build ($HVD_WHY), wheel cached in $HVD_CACHE"
  if redis_found; then say "redis-server: ${SIM_REDIS_SERVER:-$(command -v redis-server || ls "$CACHE"/redis-*/bin/redis-server | tail -1)}"
  else say "redis-server: Debian's fetched with apt-get download into $CACHE/redis-<version>"; fi
}
check_prerequisites || exit 1
if [ "$CHECK_ONLY" = 1 ]; then exit 0; fi

# 1. venv + package with the constraints, installed by uv (itself cached): its cache of unpacked wheels
#    makes a new venv on a machine that has the caches take seconds instead of minutes. The stamp is
#    the hash of everything that decides the install.
UV=$CACHE/uv-$UV_VER/bin/uv
export UV_CACHE_DIR=${UV_CACHE_DIR:-$CACHE/uv-cache} UV_PYTHON_DOWNLOADS=never
if [ ! -x "$UV" ]; then
  say "installing uv $UV_VER into $CACHE/uv-$UV_VER"
  "$PY" -m venv "$CACHE/uv-$UV_VER"
  "$CACHE/uv-$UV_VER/bin/pip" install -q "uv==$UV_VER"
fi
# pyspark is on PyPI as an sdist only: uv would build it for every new venv, each time under a new cache
# entry of about 1.3 GB (the cache filled the disk that way). Its wheel is built once per version and
# installed from there.
SPARK_VER=$(pin pyspark); SPARK_WHEELS=$CACHE/pyspark-$SPARK_VER
if ! ls "$SPARK_WHEELS"/pyspark-"$SPARK_VER"-*.whl >/dev/null 2>&1; then
  say "building the pyspark $SPARK_VER wheel once into $SPARK_WHEELS"
  rm -rf "$SPARK_WHEELS.tmp"
  "$CACHE/uv-$UV_VER/bin/pip" wheel -q --no-cache-dir --no-deps "pyspark==$SPARK_VER" -w "$SPARK_WHEELS.tmp"
  mv "$SPARK_WHEELS.tmp" "$SPARK_WHEELS"
fi
# Bytecode is compiled at install: uv leaves it to the first import, which never writes it where
# PYTHONDONTWRITEBYTECODE is set, so every process (each rank, each job's driver) compiled torch, mlflow
# and pyspark again, 5-12 CPU-seconds each. Compiling the stack's 16,000 files takes 20 s on two cores, so
# it is done once per stamp into $CACHE/pyc-<stamp> and a new venv hard-links those files: uv hard-links
# the sources from its cache too, so their times match the ones the bytecode records (where they do not,
# Python compiles the module in memory as it would without bytecode: slower, never wrong).
INSTALL_FLAGS="--compile-bytecode"  # (Horovod's wheel; and part of the stamp)
STAMP_KEY=$( (cat constraints.txt setup.cfg pyproject.toml; echo "$INSTALL_FLAGS") | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$UV" venv -q --python "$(command -v "$PY")" "$VENV"
fi
if [ "$(cat "$VENV/.sim-stamp" 2>/dev/null)" != "$STAMP_KEY" ]; then
  say "installing the package and the pinned stack (first time: torch is several GB)"
  "$UV" pip install -q --python "$VENV/bin/python" -c constraints.txt --find-links "$SPARK_WHEELS" \
    "pip<25" "setuptools<80" wheel -e ".[dev]"
  SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  PYC=$CACHE/pyc-$STAMP_KEY
  # The bytecode of $PYC holds for this venv when its sources have the times it records (checked on torch).
  pyc_current() {
    "$VENV/bin/python" - "$SITE" <<'PY'
import importlib.util, os, struct, sys
src = os.path.join(sys.argv[1], "torch", "__init__.py")
with open(importlib.util.cache_from_source(src), "rb") as f:
    head = f.read(16)
sys.exit(0 if struct.unpack("<I", head[8:12])[0] == int(os.stat(src).st_mtime) & 0xFFFFFFFF else 1)
PY
  }
  if [ -d "$PYC" ]; then
    cp -al --remove-destination "$PYC/." "$SITE/"
    if pyc_current 2>/dev/null; then
      say "bytecode: hard-linked from $PYC"
    else  # the sources were copied, not linked, by uv: compile them here
      say "bytecode: compiling the stack (its sources' times differ from $PYC's)"
      "$VENV/bin/python" -m compileall -q -j 0 "$SITE" >/dev/null || true
    fi
  else
    say "bytecode: compiling the stack once into $PYC"
    "$VENV/bin/python" -m compileall -q -j 0 "$SITE" >/dev/null || true  # (a few test files of packages do not compile)
    rm -rf "$PYC.tmp" && mkdir -p "$PYC.tmp"
    ( cd "$SITE" && find . -path '*/__pycache__/*.pyc' -print0 | xargs -0 -r cp --parents -l -t "$PYC.tmp" )
    mv "$PYC.tmp" "$PYC"
  fi
  echo "$STAMP_KEY" > "$VENV/.sim-stamp"
else
  say "skipped: package install (constraints unchanged)"
fi

# 2. Horovod: build once from the sdist, patched for torch >= 2.1 (C++17) and, for the CPU build, a CUDA
#    build of torch without the CUDA toolkit; install the cached wheel afterwards.
if hvd_installed && "$VENV/bin/python" -c "import horovod.torch" 2>/dev/null; then
  say "skipped: horovod $HVD_VER already installed ($HVD_KIND)"
else
  WHEEL=$(ls "$HVD_CACHE"/horovod-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$WHEEL" ]; then
    say "building horovod $HVD_VER (torch $TORCH_VER, $HVD_KIND: $HVD_WHY); takes a few minutes"
    BUILD=$(mktemp -d)
    "$VENV/bin/pip" download -q --no-deps --no-binary :all: -d "$BUILD" "horovod==$HVD_VER"
    tar -xzf "$BUILD"/horovod-"$HVD_VER".tar.gz -C "$BUILD"
    SRC=$BUILD/horovod-$HVD_VER
    sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
    mkdir -p "$HVD_CACHE"
    if [ "$HVD_GPU" = 1 ]; then
      # Untested here (no GPU machine): the CUDA kernels for the compute capabilities torch was built for,
      # unless HOROVOD_BUILD_CUDA_CC_LIST names them.
      CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-$("$VENV/bin/python" -c "import torch
print(','.join(a.split('_')[1] for a in torch.cuda.get_arch_list() if a.startswith('sm_')))" 2>/dev/null || true)}
      ( cd "$SRC"
        if [ -n "$CC_LIST" ]; then export HOROVOD_BUILD_CUDA_CC_LIST=$CC_LIST; fi
        HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
        HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=GLOO \
        HOROVOD_GPU=CUDA HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED \
        HOROVOD_CUDA_HOME="$(dirname "$(dirname "$NVCC")")" \
        HOROVOD_NCCL_INCLUDE="${NCCL_DIRS%% *}" HOROVOD_NCCL_LIB="${NCCL_DIRS#* }" MAKEFLAGS=-j2 \
        "$VENV/bin/pip" wheel -q --no-deps --no-build-isolation -w "$HVD_CACHE" . )
    else
      # torch from PyPI reports CUDA; Horovod would then demand the CUDA toolkit. Build for CPU only.
      sed -i '/string(TOUPPER "${Pytorch_CUDA}" Pytorch_CUDA)/a set(Pytorch_CUDA FALSE)' \
        "$SRC/cmake/Modules/FindPytorch.cmake"
      grep -q "^set(Pytorch_CUDA FALSE)" "$SRC/cmake/Modules/FindPytorch.cmake" \
        || { echo "[setup] could not patch FindPytorch.cmake" >&2; exit 1; }
      ( cd "$SRC" && HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
        HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_GPU_OPERATIONS= HOROVOD_CPU_OPERATIONS=GLOO \
        MAKEFLAGS=-j2 CUDA_HOME=/nonexistent \
        "$VENV/bin/pip" wheel -q --no-deps --no-build-isolation -w "$HVD_CACHE" . )
    fi
    rm -rf "$BUILD"
    WHEEL=$(ls "$HVD_CACHE"/horovod-*.whl | head -1)
  else
    say "using cached horovod wheel $WHEEL"
  fi
  "$UV" pip install -q $INSTALL_FLAGS --python "$VENV/bin/python" --no-deps --reinstall-package horovod "$WHEEL"
  echo "$HVD_KEY" > "$VENV/.sim-horovod"
  # horovod's own runtime deps (cloudpickle, psutil, pyyaml, packaging) come from the package extras.
fi

# 3. Delta jars from Maven Central, copied to a versioned cache handed to Spark via spark.jars.
M2=${MAVEN_REPO:-$HOME/.m2/repository}
if delta_cached; then
  say "skipped: delta jars in $JAR_CACHE"
else
  say "fetching io.delta:delta-spark_2.13:$DELTA_VER with Maven"
  mvn -q -B dependency:get -Dartifact="io.delta:delta-spark_2.13:$DELTA_VER"
  mkdir -p "$JAR_CACHE"
  cp "$M2/io/delta/delta-spark_2.13/$DELTA_VER/delta-spark_2.13-$DELTA_VER.jar" \
     "$M2/io/delta/delta-storage/$DELTA_VER/delta-storage-$DELTA_VER.jar" "$JAR_CACHE/"
fi

# 4. Object storage, fetched by every setup (once; about 600 MB) rather than on request: CI runs the
#    object-storage tests through `make test`, and a lakehouse on s3a:// then needs no second setup step.
#    hadoop-aws + the AWS SDK bundle go on Spark's classpath (sim.adapters.spark). Each is fetched without
#    its transitive dependencies: Hadoop's own are in pyspark already, the bundle shades the SDK's, and
#    resolving hadoop-aws transitively fails on one of its test-scoped dependencies.
if s3a_cached; then
  say "skipped: hadoop-aws jars in $S3A_CACHE"
else
  say "fetching org.apache.hadoop:hadoop-aws:$HADOOP_AWS_VER and the AWS SDK $AWS_SDK_VER bundle (~560 MB) with Maven"
  mvn -q -B dependency:get -Dtransitive=false -Dartifact="org.apache.hadoop:hadoop-aws:$HADOOP_AWS_VER"
  mvn -q -B dependency:get -Dtransitive=false -Dartifact="software.amazon.awssdk:bundle:$AWS_SDK_VER"
  mkdir -p "$S3A_CACHE"
  # Copied under a temporary name and renamed, so an interrupted copy never looks cached.
  for jar in "org/apache/hadoop/hadoop-aws/$HADOOP_AWS_VER/hadoop-aws-$HADOOP_AWS_VER.jar" \
             "software/amazon/awssdk/bundle/$AWS_SDK_VER/bundle-$AWS_SDK_VER.jar"; do
    cp "$M2/$jar" "$S3A_CACHE/.tmp.jar" && mv "$S3A_CACHE/.tmp.jar" "$S3A_CACHE/$(basename "$jar")"
  done
fi
#    s3proxy: an S3 server (Apache jclouds behind it) for the tests and a local cluster, run from its jars
#    with `java -cp "$SIM_CACHE/s3proxy-<ver>/lib/*" org.gaul.s3proxy.Main --properties FILE`. Maven
#    Central has no runnable s3proxy jar, so a throw-away pom copies its runtime dependencies.
if s3proxy_cached; then
  say "skipped: s3proxy jars in $S3PROXY_CACHE"
else
  say "fetching org.gaul:s3proxy:$S3PROXY_VER and its dependencies with Maven"
  POM=$(mktemp -d)
  cat > "$POM/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>sim-pipeline.setup</groupId><artifactId>s3proxy-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.gaul</groupId><artifactId>s3proxy</artifactId><version>$S3PROXY_VER</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf "$S3PROXY_CACHE"
  mvn -q -B -f "$POM/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$S3PROXY_CACHE/lib"
  rm -rf "$POM"
  touch "$S3PROXY_CACHE/.complete"
fi
# 5. The Redis server of the serving store (sim.serving.redis_store; sim.local.redis_server runs it). Debian
#    ships the server binary in redis-tools as redis-check-rdb (the binary acts by its name); it needs
#    libjemalloc2 and liblzf1, unpacked beside it. `apt-get download` needs no root; where the package
#    lists are empty it needs one `apt-get update` (done here when root).
if redis_found; then
  say "skipped: redis-server ($(command -v redis-server || ls "$CACHE"/redis-*/bin/redis-server 2>/dev/null | tail -1 || echo "$SIM_REDIS_SERVER"))"
else
  say "fetching Debian's redis-tools, libjemalloc2 and liblzf1 with apt-get download"
  DEBS=$(mktemp -d); chmod 755 "$DEBS"
  get_debs() { ( cd "$DEBS" && apt-get download -q redis-tools libjemalloc2 liblzf1 ) 2>&1 | grep -v "^W: Download is performed unsandboxed" || true; ls "$DEBS"/redis-tools_*.deb >/dev/null 2>&1; }
  if ! get_debs; then
    if [ "$(id -u)" = 0 ]; then apt-get update -q >/dev/null; fi
    get_debs || { echo "[setup] could not fetch redis-tools with apt-get download: run 'apt-get update' as root, or install redis-server (apt-get install -y redis-server) and run make setup again" >&2; exit 1; }
  fi
  REDIS_VER=$(dpkg-deb -f "$DEBS"/redis-tools_*.deb Version); REDIS_VER=${REDIS_VER#*:}
  REDIS_CACHE=$CACHE/redis-$REDIS_VER
  for deb in "$DEBS"/*.deb; do dpkg-deb -x "$deb" "$DEBS/root"; done
  rm -rf "$REDIS_CACHE.tmp"; mkdir -p "$REDIS_CACHE.tmp/bin" "$REDIS_CACHE.tmp/libexec" "$REDIS_CACHE.tmp/lib"
  cp "$DEBS/root/usr/bin/redis-check-rdb" "$REDIS_CACHE.tmp/libexec/redis-server"
  cp "$DEBS/root/usr/bin/redis-cli" "$REDIS_CACHE.tmp/libexec/redis-cli"
  cp -L "$DEBS"/root/usr/lib/*/libjemalloc.so.2 "$DEBS"/root/usr/lib/*/liblzf.so.1 "$REDIS_CACHE.tmp/lib/"
  for b in redis-server redis-cli; do
    printf '#!/bin/sh\nd=$(dirname "$(dirname "$(readlink -f "$0")")")\nLD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/libexec/%s" "$@"\n' "$b" \
      > "$REDIS_CACHE.tmp/bin/$b"
    chmod 755 "$REDIS_CACHE.tmp/bin/$b"
  done
  "$REDIS_CACHE.tmp/bin/redis-server" --version >/dev/null || { echo "[setup] the fetched redis-server does not run" >&2; exit 1; }
  rm -rf "$REDIS_CACHE"; mv "$REDIS_CACHE.tmp" "$REDIS_CACHE"; rm -rf "$DEBS"
  say "redis-server $REDIS_VER cached in $REDIS_CACHE"
fi
# 6. The driver JVM's class-data archive (sim/adapters/jvm_archive.py; sim/local/jvm_archive.py builds it):
#    the classes a job loads, parsed and verified once, so each job's JVM starts with less CPU. Keyed by
#    the JVM and the class-path jars (a new venv linked from the same wheels reuses it); about a minute of
#    Spark the first time. A failure only costs that speed: the jobs run without it.
if ARCHIVE=$("$VENV/bin/python" -m sim.local.jvm_archive path) && [ -f "$ARCHIVE" ]; then
  say "skipped: JVM class-data archive $ARCHIVE"
else
  say "building the JVM class-data archive (a small pipeline run, about a minute)"
  "$VENV/bin/python" -m sim.local.jvm_archive build >/dev/null || say "warning: no JVM class-data archive (see above); the jobs run without it"
fi
say "done in $(( $(date +%s) - start ))s"
