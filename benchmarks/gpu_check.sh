#!/usr/bin/env bash
# One prepared GPU check of bayesnas: at most 8 minutes on one GPU (default budget 450 s, every step time-limited).
# It runs (a) the test suite's CUDA cases and `bayesnas speed` (which mode --precision auto picks on the GPU, and
# each mode's images/s), (b) one short search of each method on digits with --device cuda
# (pgnas, vinnas, pcnas and gdas in auto's mode; gdas with --precision bf16 --channels-last --compile) and checks each
# summary.json, (c) benchmarks/gpu_throughput.py (images/s per method and mode at batch 64 and 256; GDAS ours
# against xautodl on the same GPU), and (d) writes OUT/gpu-check.md (GPU name, torch, CUDA and cuDNN versions,
# every figure, every failure), OUT/gpu-check.json and OUT/gpu-check.log. Exit status 0 only when every step passed.
#
# ON A CPU MACHINE WITH INTERNET (once): build the wheel folder .whl/ (git-ignored) for Python 3.12, the lent GPU
# machine's (it has torch, torchvision, numpy, scipy, pandas, xarray, h5py, matplotlib, scikit-learn, tqdm,
# opt-einsum, setuptools and pytest, but no pyro-ppl or arviz), from the repository root:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl pyro-ppl==1.9.2 pyro-api==0.1.2 arviz==0.23.4 \
#       xarray-einstats==0.9.1 h5netcdf==1.8.2 platformdirs xautodl==1.0.0
#
# (all seven are pure-Python wheels, about 2.8 MB together; arviz 0.23 (<1, as pyproject.toml pins) supports
# Python >= 3.10; xautodl goes in without its dependencies, whose numpy pin does not install on 3.11+.) This
# checkout itself is installed there from source (pip install --no-deps --no-build-isolation -e .).
#
# ON THE GPU MACHINE, from the repository root (with .whl/ beside it):
#
#   bash benchmarks/gpu_check.sh --wheels .whl OUT
#
# e.g. through the device tool: run(command="bash benchmarks/gpu_check.sh --wheels .whl $OUT", carry=[".whl"],
# timeout_s=540); the report comes back as $OUT/gpu-check.md. The script installs, into the Python that runs it
# (python3, or $PYTHON), only when something does not import: every wheel of --wheels with
# pip install --no-index --no-deps, then this checkout in editable mode. To rerun only some steps after a
# failure: --only cuda-tests,search-gdas-bf16-cl-compile (step names are in gpu-check.md).
#
# ON A CPU (the same steps, tiny sizes, about 4.5 minutes on one thread; tests/test_gpu_check.py runs one step of
# each kind with --only):
#
#   bash benchmarks/gpu_check.sh --dry-run OUT
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
