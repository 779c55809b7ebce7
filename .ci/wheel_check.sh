#!/usr/bin/env bash
# The package as a user installs it: a wheel, installed without -e into a fresh venv.
# Checks that the C++ sources and headers are in the wheel (the ops build from it and a
# 192-atom evaluation runs on them), that a second process loads them without building
# again, that `dpa1 ops-path` builds the op loader, and reports the evaluation time against
# DPA1_NATIVE=0.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip wheel --quiet --no-deps -w "$work/dist" "$repo"
# Dependencies (torch above all) come from the base environment; dpa1 itself from the wheel.
python -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --no-deps "$work"/dist/dpa1-*.whl
export TORCH_EXTENSIONS_DIR="$work/ext" OMP_NUM_THREADS=2
cd "$work"
py="$work/venv/bin/python"
"$py" "$repo/.ci/wheel_eval.py" "$repo" 1 > first.txt 2> first.err || { cat first.err; exit 1; }
grep -q "building the C++ ops" first.err || { echo "wheel check: the first process did not build the ops"; exit 1; }
native=$("$py" "$repo/.ci/wheel_eval.py" "$repo" 1 2> second.err)
if grep -q "building the C++ ops" second.err; then echo "wheel check: a second process built the ops again"; exit 1; fi
# the op loader for DP_PLUGIN_PATH builds from the wheel's sources too
loader=$("$work/venv/bin/dpa1" ops-path)
[ -f "$loader" ] || { echo "wheel check: dpa1 ops-path printed $loader, which is not a file"; exit 1; }
plain=$(DPA1_NATIVE=0 "$py" "$repo/.ci/wheel_eval.py" "$repo" 0)
python - "$native" "$plain" <<'PY'
import sys
native, plain = map(float, sys.argv[1:])
print(f"wheel check: ops built from the wheel and loaded again without a build; 192-atom evaluation "
      f"{native * 1e3:.0f} ms with the ops, {plain * 1e3:.0f} ms with DPA1_NATIVE=0 ({plain / native:.2f}x)")
PY
