"""dpa1's C++ ops (``dpa1/accel/csrc``), built on first use with PyTorch's extension builder.

Four sources, one library (``torch.ops.dpa1``):

- ``attention_stack.cpp``: the evaluation path of the attention layers
  (:mod:`dpa1.accel.attention_op`);
- ``embedding_net.cpp``: the evaluation path of the embedding net along s(r)
  (:mod:`dpa1.accel.embedding_op`);
- ``energy_block.cpp``: the evaluation path of a whole block of centres, descriptor and fitting
  net, calling the two above, with its backward registered as the op's autograd node, so
  TorchScript (frozen models, DeePMD-kit's LAMMPS plugin) runs it too
  (:mod:`dpa1.accel.energy_block`);
- ``neighbor_list.cpp``: the sorting and truncation after vesin's pair search
  (:func:`dpa1.model.neighbor.frame_neighbors`, training and evaluation).

It is built once per machine and torch version into PyTorch's extension cache
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``; ~30 s with gcc) and loaded
from there afterwards. The library's name carries a digest of the sources, the torch version
and the compiler, so two checkouts with different sources do not rebuild over each other.
Programs outside Python (LAMMPS through DeePMD-kit's C++) load the library through a small
loader, ``csrc/plugin/ops_loader.cpp``, built beside it by :func:`plugin_path`: it checks the
process's torch release before loading the ops, so a mismatch is one clear line, not an
undefined symbol or a crash.
Without a C++ compiler, or with ``DPA1_NATIVE=0``, the same math runs as PyTorch and NumPy code
(slower, same numbers up to round-off; identical neighbour lists). A failed build is reported
as a warning and recorded in the cache (``dpa1_build_failed_<name>.txt``): later processes warn
without trying again until that file is deleted or the sources, torch or the compiler change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

import torch

_log = logging.getLogger(__name__)
_SOURCES = [
    Path(__file__).parent / "csrc" / name
    for name in (
        "attention_stack.cpp",
        "embedding_net.cpp",
        "energy_block.cpp",
        "neighbor_list.cpp",
    )
]
_LOADER_SOURCE = Path(__file__).parent / "csrc" / "plugin" / "ops_loader.cpp"
_lock = threading.Lock()
_state: dict[str, bool] = {}
_library: dict[str, Path] = {}


def native_ops() -> bool:
    """Whether ``torch.ops.dpa1`` is loaded (builds it the first time; never raises)."""
    ok = _state.get("ok")
    if ok is not None:
        return ok
    with _lock:
        if "ok" not in _state:
            _state["ok"] = _load()
    return _state["ok"]


def library_path() -> Path:
    """The compiled op library (``.so``) for this torch, building it first if needed: what
    DeePMD-kit's C++ loads from ``DP_PLUGIN_PATH`` to run models frozen with the ops.

    Raises:
        OSError: the ops are switched off (``DPA1_NATIVE=0``) or could not be built.
    """
    if switched_off():
        raise OSError("DPA1_NATIVE=0 switches the C++ ops off: unset it to build or find them")
    if not native_ops():
        raise OSError(
            "dpa1's C++ ops could not be built (see the warning above); a C++ compiler "
            f"and the headers of torch {torch.__version__} are needed"
        )
    if "path" in _library:
        return _library["path"]
    # loaded by the host process: torch.ops.load_library records the path
    found = sorted(p for p in torch.ops.loaded_libraries if Path(p).name.startswith("dpa1_native"))
    if not found:
        raise OSError("dpa1's C++ ops are loaded but torch did not record their library file")
    return Path(found[-1])


def plugin_path() -> Path:
    """The library to put in ``DP_PLUGIN_PATH``: the op loader (``csrc/plugin/ops_loader.cpp``)
    for this torch's op library, built beside it on first use (a second or so).

    Loaded by a program, it loads the op library only where the torch in that process is the
    release the library was built for; otherwise it prints one line saying which torch each
    is and how to get a matching library.

    Raises:
        OSError: the ops are switched off or could not be built, or the loader failed to build.
    """
    ops = library_path()
    h = hashlib.sha1(_LOADER_SOURCE.read_bytes() + torch.__version__.encode()).hexdigest()[:10]
    target = ops.parent / f"dpa1_ops_loader_{h}.so"
    if not target.is_file():
        build_loader(ops, torch.__version__, target)
    return target


def build_loader(ops_library: Path, torch_version: str, target: Path) -> None:
    """Compile the op loader for ``ops_library`` (built against ``torch_version``) to ``target``,
    atomically (a concurrent build leaves one complete file)."""
    for what, value in (("op library path", str(ops_library)), ("torch version", torch_version)):
        if any(c in value for c in '"\\\n'):
            raise OSError(f"cannot build the op loader: the {what} {value!r} contains a quote, "
                          "backslash or newline")
    cxx = os.environ.get("CXX", "c++")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    cmd = [cxx, "-shared", "-fPIC", "-O2", "-std=c++17",
           f'-DDPA1_OPS_LIBRARY="{ops_library}"', f'-DDPA1_TORCH_VERSION="{torch_version}"',
           str(_LOADER_SOURCE), "-o", str(tmp), "-ldl"]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        raise OSError(f"cannot build the op loader with {cxx}: {exc}") from exc
    if run.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise OSError(f"building the op loader failed: {_first_error(RuntimeError(run.stderr))}")
    os.replace(tmp, target)


def switched_off() -> bool:
    """``DPA1_NATIVE=0`` (or false/no/off): the whole of :mod:`dpa1.accel` is off."""
    return os.environ.get("DPA1_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def _ninja_on_path() -> None:
    """PyTorch's builder runs ``ninja`` from PATH; pip may have put the ``ninja`` package's
    binary in a scripts folder that is not on it (``pip install --user``)."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _vector_flags() -> tuple[str, list[str]]:
    """The SIMD level the op is compiled for: AVX2 where this CPU has it (as ATen's own
    kernels, ``at::vec`` and its vectorised ``exp``), else portable code."""
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return "avx2", ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return "default", ["-DCPU_CAPABILITY=DEFAULT"]


def _load() -> bool:
    if switched_off():
        return False
    if hasattr(torch.ops, "dpa1") and hasattr(torch.ops.dpa1, "attention_stack"):
        return True  # loaded by the host (e.g. from DP_PLUGIN_PATH)
    try:
        from torch.utils import cpp_extension

        _ninja_on_path()
        isa, flags = _vector_flags()
        name = f"dpa1_native_{isa}_{_digest()}"
        build_dir = _build_directory(cpp_extension, name)
        failed = None if build_dir is None else build_dir.parent / f"dpa1_build_failed_{name}.txt"
        if failed is not None and failed.is_file():
            raise RuntimeError(
                f"{failed.read_text().strip()} (recorded in {failed}; delete it to try again)"
            )
        names = (name, name + "_noomp")
        root = build_dir.parent if build_dir is not None else None
        if root is None or not any((root / n / f"{n}.so").is_file() for n in names):
            _log.warning(
                "dpa1: building the C++ ops (once per machine and torch version, ~30-60 s)..."
            )
        try:
            _build(cpp_extension, name, flags, openmp=True)
            built = name
        except Exception as exc:  # noqa: BLE001 (a compiler without OpenMP, e.g. Apple clang)
            try:
                _build(cpp_extension, name + "_noomp", flags, openmp=False)
                built = name + "_noomp"
            except Exception:  # noqa: BLE001
                _record_failure(failed, exc)
                raise
        if root is not None:
            _library["path"] = root / built / f"{built}.so"
        for op in ("attention_stack", "embedding_tangent", "energy_block", "sorted_nlist"):
            getattr(torch.ops.dpa1, op)  # raises if the library did not register it
        return True
    except Exception as exc:  # noqa: BLE001 (any build failure means: use the PyTorch ops)
        warnings.warn(
            f"dpa1: the C++ ops are not available ({_first_error(exc)}); using PyTorch ops "
            "(same numbers, slower on a CPU). Set DPA1_NATIVE=0 to skip the build.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


def _digest() -> str:
    """Sources (headers included), torch version and compiler: what a build depends on; and
    where the sources lie (the build recipe names them: two checkouts sharing a cache would
    otherwise rebuild each other's library)."""
    h = hashlib.sha1(torch.__version__.encode())
    h.update(str(Path(__file__).resolve().parent).encode())
    for path in sorted((Path(__file__).parent / "csrc").iterdir()):
        if path.suffix in (".cpp", ".h"):
            h.update(path.name.encode() + path.read_bytes())
    h.update(_compiler_version().encode())
    return h.hexdigest()[:10]


def _compiler_version() -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return "no compiler"


def _build_directory(cpp_extension, name: str) -> Path | None:
    try:
        return Path(cpp_extension._get_build_directory(name, False))
    except Exception:  # noqa: BLE001 (a private helper of torch: without it, no failure record)
        return None


def _record_failure(path: Path | None, exc: Exception) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"the last build failed: {_first_error(exc)}\n")
    except OSError:
        pass


def _build(cpp_extension, name: str, flags: list[str], openmp: bool) -> None:
    """Build (or load from the cache) the library. With OpenMP, an op called on several intra-op
    threads splits its centre groups (or row tiles) between them: what one evaluation block on
    all threads uses (small systems, ``thread_blocks = False``); without, only the vector loops."""
    omp = ["-fopenmp"] if openmp else ["-fopenmp-simd"]
    cpp_extension.load(
        name=name,
        sources=[str(p) for p in _SOURCES],
        extra_cflags=["-O3", *omp, *flags],
        extra_ldflags=omp if openmp else [],
        is_python_module=False,
        verbose=False,
    )


def _first_error(exc: Exception) -> str:
    """The compiler's first error line of a failed build (its whole log is in the message)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [
        ln for ln in lines if "error:" in ln.lower()
    ]  # gcc/clang: "file:line:col: error: ..."
    return f"{type(exc).__name__}: {(errors or lines or [repr(exc)])[0]}"
