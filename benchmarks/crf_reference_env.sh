#!/usr/bin/env bash
# Separate virtualenv with the authors' 3D dense CRF (dense3dCrf, wrapped by PyPI simplecrf 0.2.1.1) for
# benchmarks/bench_crf.py. Usage: bash benchmarks/crf_reference_env.sh [VENV_DIR]  (default /tmp/crf-reference-venv)
# simplecrf's setup.py imports numpy and Cython, so it builds only without build isolation, against a
# numpy < 2 (its extension predates the numpy 2 ABI).
set -euo pipefail
venv="${1:-/tmp/crf-reference-venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
"$venv/bin/python" -m pip install --quiet "numpy==1.26.*" cython
"$venv/bin/python" -m pip install --quiet --no-build-isolation "simplecrf==0.2.1.1"
"$venv/bin/python" -c "import denseCRF3D, numpy; print('simplecrf ready:', denseCRF3D.__file__, 'numpy', numpy.__version__)"
echo "$venv/bin/python"
