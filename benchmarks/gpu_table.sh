#!/usr/bin/env bash
# The inference and training-step tables on a GPU, in one device command.
#
# From the repository root on the GPU machine (gpu_carry/ filled here by
# benchmarks/gpu_prep.sh and carried along; see benchmarks/README.md, "On a GPU"):
#
#   bash benchmarks/gpu_table.sh
#
# Stages, each under `timeout`, within GPU_TABLE_BUDGET seconds in all (default 420):
#   1. the machine (nvidia-smi -L, python, torch, CUDA) and the carried wheels installed
#      into /tmp/dpa1_site (nothing else is touched);
#   2. dpa1's runtime dependencies and the repository's data (examples/water/data, tests/data):
#      stops here (exit 3) naming what is missing;
#   3. tests/test_device.py: model, DeepPot, frozen model, statistics, training on the GPU
#      against the CPU (test_device.txt);
#   4. benchmarks/inference.py --device cuda: 192 / 1,536 / 12,288 / 98,304 atoms, float64,
#      attn0 (the scaling variant), float32; sizes that would not fit the budget are
#      skipped and named (inference.txt);
#   5. benchmarks/train_step.py --device cuda (train_step.txt);
#   6. with time left: larger EnergyModel.block_atoms at 12,288 / 98,304 atoms (blocks.txt).
# Outputs: $OUT if set, else ./gpu_out: env.txt, log.txt (all stderr), and the files above.
#
# Knobs: GPU_TABLE_BUDGET (seconds, 420), GPU_TABLE_SKIP (comma list of test_device,
# inference, train_step, blocks: e.g. a rerun of what an earlier call did not finish).
# Rehearsal on a CPU machine: GPU_TABLE_DEVICE=cpu GPU_TABLE_QUICK=1 bash benchmarks/gpu_table.sh
# (tiny sizes, the same code paths; the device tests then compare the CPU with itself).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEV=${GPU_TABLE_DEVICE:-cuda}
QUICK=${GPU_TABLE_QUICK:-0}
BUDGET=${GPU_TABLE_BUDGET:-420}
PY=${PYTHON:-python3}
CARRY=${GPU_CARRY:-gpu_carry}  # gpu_prep.sh's folder
[ -d "$CARRY" ] && CARRY=$(cd "$CARRY" && pwd)
OUTD=${OUT:-$ROOT/gpu_out}
mkdir -p "$OUTD"
LOG=$OUTD/log.txt
: >"$LOG"
export PYTHONUNBUFFERED=1
SKIP=",${GPU_TABLE_SKIP:-},"
T0=$SECONDS
skip() { case "$SKIP" in *",$1,"*) say "$1 skipped (GPU_TABLE_SKIP)"; return 0 ;; esac; return 1; }
left() { echo $((BUDGET - (SECONDS - T0))); }
say() { echo "=== [$((SECONDS - T0)) s] $*" | tee -a "$LOG"; }
# run NAME LIMIT CMD...: CMD's stdout to NAME.txt and to the terminal, stderr to log.txt
run() {
  local name=$1 limit=$2
  shift 2
  say "$name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" 2>>"$LOG" | tee "$OUTD/$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "($name: stopped at its ${limit} s limit)" | tee -a "$OUTD/$name.txt" "$LOG"
  [ "$rc" != 0 ] && say "$name: exit status $rc"
  return 0
}

# === 1. the machine =====================================================================
{
  say "machine"
  date -u
  uname -m
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  else
    echo "nvidia-smi: not found"
  fi
  echo "cores: $(nproc --all); python: $(command -v $PY) $($PY -V 2>&1)"
  timeout 60 $PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} 2>&1 | tee "$OUTD/env.txt"

# Carried wheels (gpu_prep.sh) into a prefix of their own; --ignore-installed: pip then
# neither skips nor uninstalls any package of the image.
SITE=""
if ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
  say "installing $(ls "$CARRY"/wheels/*.whl | wc -l) carried wheels into /tmp/dpa1_site" | tee -a "$OUTD/env.txt"
  timeout 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --ignore-installed \
    --disable-pip-version-check --prefix /tmp/dpa1_site "$CARRY"/wheels/*.whl >>"$LOG" 2>&1 \
    || say "pip install of the carried wheels failed (see log.txt)" | tee -a "$OUTD/env.txt"
  SITE=$(find /tmp/dpa1_site -type d -name site-packages 2>/dev/null | head -1)
  # DeePMD-kit's compiled PyTorch ops are built for one torch build; its DPA-1 Python path
  # does not use them, and a mismatched library stops the import: hide it.
  for so in "$SITE"/deepmd/lib/libdeepmd_op_pt.so; do [ -f "$so" ] && mv "$so" "$so.disabled"; done
fi
export PYTHONPATH="$ROOT${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
# The C++ ops are CPU code (the neighbour list falls back to NumPy); building them (~30 s)
# would spend device time.
export DPA1_NATIVE=${DPA1_NATIVE:-0}
if [ -d "$CARRY/stubs" ] && ! $PY -c "import mendeleev" >/dev/null 2>&1; then
  export PYTHONPATH="$PYTHONPATH:$CARRY/stubs"
fi

# === 2. dependencies and data ===========================================================
say "dependencies" | tee -a "$OUTD/env.txt"
timeout 120 $PY - "$DEV" <<'EOF' 2>&1 | tee -a "$OUTD/env.txt"
import importlib, sys
from pathlib import Path
dev = sys.argv[1]
missing = []
for mod in ["torch", "numpy", "vesin", "ase", "h5py", "pydantic", "rich", "matplotlib", "yaml"]:
    try:
        m = importlib.import_module(mod)
        print(f"  {mod:10s} {getattr(m, '__version__', '?'):12s} {Path(m.__file__).parent}")
    except Exception as err:  # noqa: BLE001
        missing.append(mod)
        print(f"  {mod:10s} MISSING ({type(err).__name__}: {err})")
if not missing:
    try:
        import dpa1
        from dpa1.io.config import normalize_config  # pydantic schema
        from dpa1.model.build import build_model  # noqa: F401
        from dpa1.model.neighbor import build_extended_system  # noqa: F401  (vesin)
        print(f"  dpa1       imports from {Path(dpa1.__file__).parent}")
    except Exception as err:  # noqa: BLE001
        missing.append("dpa1")
        print(f"  dpa1       FAILS: {type(err).__name__}: {err}")
try:
    import deepmd.pt.model.model  # noqa: F401
    from deepmd.pt.utils import env
    print(f"  deepmd     {importlib.import_module('deepmd').__version__} on {env.DEVICE} (side by side)")
except Exception as err:  # noqa: BLE001
    print(f"  deepmd     not importable ({type(err).__name__}: {str(err)[:120]}): ours only")
for data in [Path("examples/water/data/data_0/type.raw"), Path("tests/data/tiny.dp")]:
    if not data.exists():
        missing.append(f"the repository's data ({data})")
import torch
if dev.startswith("cuda") and not torch.cuda.is_available():
    missing.append(f"a CUDA device (torch {torch.__version__} sees none)")
if missing:
    print(f"\nSTOP: missing {', '.join(missing)}.\n"
          "Fill gpu_carry/ on the development machine with `bash benchmarks/gpu_prep.sh` "
          "(wheels for CPython 3.12) and name gpu_carry in the device call's "
          "carry; see benchmarks/README.md, 'On a GPU'.")
    sys.exit(3)
print("  all present")
EOF
if [ "${PIPESTATUS[0]}" != 0 ]; then
  say "stopped: dependencies missing (see above)"
  exit 3
fi

# === 3. device tests ====================================================================
TEST_LIMIT=$([ "$QUICK" = 1 ] && echo 120 || echo 90)
skip test_device || DPA1_TEST_DEVICE=$DEV run test_device "$TEST_LIMIT" \
  $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfEs tests/test_device.py

# === 4. inference =======================================================================
if [ "$QUICK" = 1 ]; then
  INF_ARGS=(--sizes 192,1536 --variants attn0,float32 --large-variants attn0 --small-max 192 --repeat 2
            --budget 5 --deepmd-max-atoms 192)
  INF_SHARE=200
else
  INF_ARGS=(--sizes 192,1536,12288,98304 --variants float64,attn0,float32 --large-variants float64,attn0,float32
            --repeat 5 --budget 10)
  INF_SHARE=220
fi
lim=$(( $(left) - 120 < INF_SHARE ? $(left) - 120 : INF_SHARE ))
[ "$lim" -lt 60 ] && lim=60
skip inference || run inference "$lim" $PY benchmarks/inference.py --device "$DEV" "${INF_ARGS[@]}" \
  --total-budget $((lim - 15)) --child-timeout $((lim - 15))

# === 5. training step ===================================================================
if [ "$QUICK" = 1 ]; then
  TR_ARGS=(--variants attn0 --steps 3 --budget 20)
else
  TR_ARGS=(--steps 20 --budget 20)
fi
lim=$(( $(left) - 20 ))
[ "$lim" -gt 110 ] && lim=110
if skip train_step; then
  :
elif [ "$lim" -ge 40 ]; then
  run train_step "$lim" $PY benchmarks/train_step.py --device "$DEV" "${TR_ARGS[@]}" --child-timeout $((lim - 10))
else
  say "train_step skipped: $(left) s left of GPU_TABLE_BUDGET=$BUDGET"
fi

# === 6. larger centre blocks (EnergyModel.block_atoms; the default 64 was tuned on 2 CPU cores)
lim=$(( $(left) - 10 ))
if skip blocks; then
  :
elif [ "$lim" -ge 45 ]; then
  if [ "$QUICK" = 1 ]; then
    BL_ARGS=(--sizes 192 --variants attn0 --repeat 2 --budget 3)
    BLOCKS=(512)
  else
    BL_ARGS=(--sizes 12288,98304 --variants float64,float32,attn0 --large-variants float64,float32,attn0
             --repeat 3 --budget 5)
    BLOCKS=(1024 8192)
  fi
  : >"$OUTD/blocks.txt"
  for b in "${BLOCKS[@]}"; do
    lim=$(( $(left) - 10 ))
    [ "$lim" -lt 30 ] && break
    say "blocks: block_atoms $b (limit $lim s)"
    echo -e "\n### EnergyModel.block_atoms = $b (--eval-chunk $b)\n" | tee -a "$OUTD/blocks.txt"
    timeout --kill-after=10 "$lim" $PY benchmarks/inference.py --device "$DEV" --no-deepmd "${BL_ARGS[@]}" \
      --eval-chunk "$b" --total-budget $((lim - 10)) --child-timeout $((lim - 10)) 2>>"$LOG" \
      | grep -v '^# ' | tee -a "$OUTD/blocks.txt"
  done
else
  say "blocks skipped: $(left) s left of GPU_TABLE_BUDGET=$BUDGET"
fi
say "done in $((SECONDS - T0)) s; files in $OUTD: $(ls "$OUTD" | tr '\n' ' ')"
