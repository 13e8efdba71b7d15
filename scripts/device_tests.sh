#!/usr/bin/env bash
# Run tvmq's tests on the lent device machine (the `device` tool: a 16-core Xeon with AVX-512,
# AVX512-BF16, AMX-INT8 and AMX-BF16, Python 3.12, pytest, hypothesis, pytest-xdist, numpy, onnx,
# onnxruntime; no TVM, no network). TVM's compiler library alone is 59.5 MB xz-compressed and a
# call carries 64 MiB with the working tree, so the kit travels in two calls on one warm machine
# (it goes back after 30 s idle: make the second call at once):
#
#   bash scripts/device_tests.sh prepare        # here, once: .devtvm/ and .devtvm_b/ (git-ignored)
#   run  carry [".devtvm"]    command: bash scripts/device_tests.sh unpack
#   run  carry [".devtvm_b"]  command: bash scripts/device_tests.sh test 400 tests/test_int8_kernels.py ...
#
# `test SECONDS FILES...` runs pytest over 16 processes for at most SECONDS, one line per test
# (so a run cut by its limit still says which tests failed), the log in $OUT/log, the failures
# at the end. Measured on 2026-12-04: the kernel test files, test_w8a8 and test_tune take about
# 200 s there; the whole suite (MobileNetV2 and tutorials aside) does not fit in 400 s.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    PY=${PY:-.venv/bin/python}
    site=$($PY -c "import os, tvm; print(os.path.dirname(os.path.dirname(tvm.__file__)))") || exit 1
    grep -qx "/.devtvm/" .git/info/exclude 2>/dev/null || printf "/.devtvm/\n/.devtvm_b/\n" >> .git/info/exclude
    mkdir -p .devtvm .devtvm_b
    xz -T0 -9 -c "$site/tvm/lib/libtvm_compiler.so" > .devtvm/compiler.so.xz
    tar -C "$site" --exclude=tvm/lib/libtvm_compiler.so --exclude=__pycache__ -cJf .devtvm_b/tvm_py.tar.xz tvm
    for pkg in apache-tvm-ffi==0.1.14.post1 xgboost-cpu tornado; do
        $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux_2_5_x86_64 -d .devtvm_b "$pkg" || exit 1
    done
    du -sh .devtvm .devtvm_b
    ;;
unpack)
    mkdir -p /tmp/tvmdev && xz -d -T16 < .devtvm/compiler.so.xz > /tmp/tvmdev/libtvm_compiler.so && ls -la /tmp/tvmdev
    ;;
test)
    limit=${2:-400}
    shift 2
    test -s /tmp/tvmdev/libtvm_compiler.so || { echo "no compiler: run 'unpack' first on the same warm machine"; exit 3; }
    mkdir -p /tmp/site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devtvm_b/*.whl || exit 4
    tar -xJf .devtvm_b/tvm_py.tar.xz -C /tmp/site && cp /tmp/tvmdev/libtvm_compiler.so /tmp/site/tvm/lib/ || exit 5
    export PYTHONPATH=/tmp/site:$PWD TVM_NUM_THREADS=1 PYTHONUNBUFFERED=1
    timeout "$limit" python3 -m pytest -v -n 16 -p no:cacheprovider -p no:benchmark "$@" > "${OUT:-/tmp}/log" 2>&1
    echo "pytest rc=$? (124: cut at ${limit} s)"
    grep -m1 "tvmq tests on" "${OUT:-/tmp}/log"
    grep -cE " PASSED " "${OUT:-/tmp}/log" | sed 's/^/passed: /'
    grep -E " (FAILED|ERROR) |^(FAILED|ERROR) " "${OUT:-/tmp}/log" | sort -u | head -40
    tail -3 "${OUT:-/tmp}/log"
    ;;
*)
    echo "usage: $0 prepare | unpack | test SECONDS FILES..." >&2
    exit 2
    ;;
esac
