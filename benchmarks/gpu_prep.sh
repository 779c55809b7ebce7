#!/usr/bin/env bash
# Fill gpu_carry/ (git-ignored) with what benchmarks/gpu_table.sh needs on the GPU machine
# and cannot fetch there (it has no network; the data it reads, examples/water/data and
# tests/data, travel with the repository):
#
#   gpu_carry/wheels/        wheels of dpa1's runtime dependencies that its image lacks
#                            (vesin, ase, pydantic and pydantic's own), for CPython 3.12
#   with --deepmd:           also DeePMD-kit 3.2.0 and what it imports that the image lacks,
#                            and gpu_carry/stubs/mendeleev (see below), for the side-by-side
#
# Run here (where pip reaches PyPI), from anywhere:
#   bash benchmarks/gpu_prep.sh [--deepmd]
# then name gpu_carry in the device call's carry (see benchmarks/README.md, "On a GPU").
# Only `pip download` is used: nothing is installed here.
#
# Versions are pinned to those tested on the CPU. GPU_PREP_PYVER=3.11 fetches wheels for
# this machine's Python instead (to rehearse gpu_table.sh here).
set -euo pipefail
cd "$(dirname "$0")/.."

DEEPMD=0
for arg in "$@"; do
  case "$arg" in
    --deepmd) DEEPMD=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_prep.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

CARRY=${GPU_CARRY:-gpu_carry}
PYVER=${GPU_PREP_PYVER:-3.12}
PY=${PYTHON:-python3}

# dpa1's runtime dependencies (pyproject.toml) that the GPU image does not have; torch, numpy,
# h5py, rich, matplotlib, pyyaml and scipy are there (/work/.library/device/KINDS.md).
# typing-extensions is there too, but pydantic 2.13 needs >= 4.14.1: bring a known one.
PKGS=(vesin==0.6.2 ase==3.29.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.8.0
      typing-inspection==0.4.5 typing-extensions==4.16.0)
# DeePMD-kit's PyTorch backend: what `import deepmd.pt` and its DeepPot need beyond the image
# (which has e3nn, opt-einsum(-fx), einops, ml-dtypes, msgpack, h5py, pyyaml, scipy). mpich
# because the wheel loads libmpi at import.
DP_PKGS=(deepmd-kit==3.2.0 mpich==5.0.2 dargs==0.5.1 wcmatch==12.0.1 bracex==3.2.3
         array-api-compat==1.16.0 lmdb==3.0.0)

rm -rf "$CARRY/wheels" "$CARRY/stubs"
mkdir -p "$CARRY/wheels"
want=("${PKGS[@]}")
[ "$DEEPMD" = 1 ] && want+=("${DP_PKGS[@]}")
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  plat+=(--platform "$p")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp "${plat[@]}" -d "$CARRY/wheels" "${want[@]}"

if [ "$DEEPMD" = 1 ]; then
  # deepmd.pt.infer imports mendeleev (electronic-configuration tables), whose own
  # dependencies (SQLAlchemy, pint, pyfiglet, ...) are not on the image. A DPA-1 model
  # without use_econf_tebd never calls it: gpu_table.sh puts this stand-in on the path
  # only when no real mendeleev imports.
  mkdir -p "$CARRY/stubs/mendeleev"
  cat > "$CARRY/stubs/mendeleev/__init__.py" <<'EOF'
"""Stand-in for mendeleev on the GPU machine (benchmarks/gpu_prep.sh --deepmd): DeePMD-kit
imports ``element`` at import time; only electronic-configuration type embeddings call it."""


def element(*args, **kwargs):
    raise RuntimeError("mendeleev is a stand-in here (benchmarks/gpu_prep.sh): "
                       "electronic-configuration features are unavailable")
EOF
fi

echo "gpu_carry ready (Python $PYVER wheels$([ "$DEEPMD" = 1 ] && echo ', DeePMD-kit')):"
ls -1 "$CARRY/wheels"
for d in "$CARRY/wheels" "$CARRY"; do du -sh "$d" | sed 's/^/  /'; done
total=$(du -sb "$CARRY" | cut -f1)
if [ "$total" -gt $((56 * 1024 * 1024)) ]; then
  echo "WARNING: $CARRY is $((total / 1024 / 1024)) MiB; the device call carries 64 MiB in all" >&2
fi
