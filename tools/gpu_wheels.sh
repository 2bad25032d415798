#!/usr/bin/env bash
# Download, on a machine with registry access, the wheels bench/gpu_check.py needs on a GPU machine
# that has Python 3.12 (x86-64) and torch but no network: megatron-core and zstandard, into .whl/
# (ignored by git). bench/gpu_check.py installs them from there (pip --no-index) when they are present.
#
#   tools/gpu_wheels.sh            # then carry .whl/ with the working tree to the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=("megatron-core==0.19.2" "zstandard==0.25.0")
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --dest .whl "${WHEELS[@]}"
ls -l .whl/*.whl
