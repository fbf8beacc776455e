"""The C++ decode step on CPU: build on first use, cache, and call it like the torch one.

Why a C++ step: on CPU the sampling step is a visible slice of a decode step (HF's
processors, with their sort-based top-p, were 17% and 27% of HF's step with the default
model at batch 8 and 32 in the README's runs), and the
torch reference spends its time in ~40 small ops and int64 Philox arithmetic. The C++
version (``csrc/sample_step_cpu.cpp``) makes two passes over each row, never sorts the
vocabulary, and reproduces :func:`proxdecode.step.sample_step`: the same candidate sets,
draws and tokens. Two documented exceptions, both where the reference leaves a choice or
rounds coarsely (the header of that file has the details): ties are ranked by lower token
id, and top-p without top-k uses an exact softmax denominator.

Why build at first use rather than at install: the package stays a pure-Python wheel, and
the extension is compiled with ``-march=native`` for the machine that runs it.

The build cache: ``<cache_dir()>/ext/<name>`` where ``name`` hashes the sources and the
headers named after them, torch's version, the compiler's name (``$CXX``), the flags
and, for ``-march=native`` builds, the CPU (model name and feature flags from ``/proc/cpuinfo``). A
home directory shared by machines with different CPUs (a cluster's NFS home) therefore
never loads a binary built for another CPU: each CPU gets its own build. If
``-march=native`` or OpenMP is refused, a generic build is tried (named without the CPU),
then one without OpenMP. A failed build leaves ``<name>.failed`` beside it with the
compiler's error, so later processes warn at once instead of compiling again (delete it
to retry).

Concurrency: each build runs under an exclusive ``flock`` on ``<name>.lock``, released by
the kernel even if the process dies, so two processes never compile into the same folder;
the second waits and then loads the first one's result.

No compiler, no ninja, or a failed build: one ``warnings.warn`` that says why, then
:func:`available` is False and callers (``step.select_step``) use the torch step.

The CUDA source of the same step (``csrc/sample_step_cuda.cu``) builds the same way through
:func:`sample_step_cuda`. It is built and linked in the tests where ``nvcc`` is present, but
has never run: no machine it was written on had a GPU, and nothing selects it by default
(the Triton step is the CUDA path).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import platform
import shutil
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .step import StepOutput

__all__ = ["available", "sample_step_cpp", "cuda_available", "sample_step_cuda"]

# -ffp-contract=off: no FMA contraction (the reference rounds a*b, then adds);
# -fno-trapping-math: GCC may vectorise selects whose arms could raise FP flags (no result
# changes: nothing reads the flags).
_BASE_FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math"]
_OMP = ["-fopenmp"]  # ATen's parallel_for is OpenMP in torch's CPU builds; inline in headers
# A build failure that a plainer variant may not hit: a refused flag, or no OpenMP.
_FLAG_TROUBLE = ("march", "unrecognized", "unknown argument", "omp", "openmp", "gomp")

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_UNSET = object()
_loaded: dict[str, object] = {}  # "cpu" / "cuda" -> module, or None once a build failed


def available() -> bool:
    """True when the C++ CPU step is built (building it now if needed) and loaded."""
    return _load("cpu") is not None


def cuda_available() -> bool:
    """True when CUDA is usable and the CUDA step built (a source never run on a GPU, see module doc)."""
    return torch.cuda.is_available() and _load("cuda") is not None


# ---------------------------------------------------------------------------------------
# Building.

def _cpu_id() -> str:
    """What ``-march=native`` depends on: the architecture, CPU model and feature flags."""
    parts = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            seen = set()
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("model name", "flags", "features", "cpu part", "cpu implementer") and key not in seen:
                    seen.add(key)
                    parts.append(line.strip())
    except OSError:
        pass
    return "\n".join(parts)


def _source_dir() -> Path:
    return Path(str(importlib.resources.files("proxdecode.csrc")))


def _spec(kind: str) -> tuple[list[str], list[tuple[str, dict, str]]]:
    """Sources and build variants, best first: (label, load() keyword arguments, key extra)."""
    if kind == "cpu":
        return ["sample_step_cpu.cpp"], [
            ("native", dict(extra_cflags=_BASE_FLAGS + _OMP + ["-march=native"], extra_ldflags=_OMP), _cpu_id()),
            ("generic", dict(extra_cflags=_BASE_FLAGS + _OMP, extra_ldflags=_OMP), ""),
            ("serial", dict(extra_cflags=_BASE_FLAGS), ""),
        ]
    major, minor = torch.cuda.get_device_capability()
    return ["sample_step_cuda.cpp", "sample_step_cuda.cu"], [
        ("sm%d%d" % (major, minor), dict(extra_cflags=["-O3"], extra_cuda_cflags=["-O3"]),
         f"{torch.version.cuda} {major}.{minor}"),
    ]


def _build_name(kind: str, label: str, kwargs: dict, extra: str, sources: list[Path]) -> str:
    h = hashlib.sha256()
    # the headers a source includes are named after it (sample_step_cpu_*.h): an edit rebuilds
    headers = sorted(h for src in sources for h in src.parent.glob(f"{src.stem}_*.h"))
    for src in list(sources) + headers:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update(torch.__version__.encode())
    h.update(os.environ.get("CXX", "c++").encode())
    h.update(repr(sorted(kwargs.items())).encode())
    h.update(extra.encode())
    return f"proxdecode_step_{kind}_{label}_{h.hexdigest()[:16]}"


@contextmanager
def _file_lock(path: Path):
    """An exclusive lock held until the block ends (or the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own FileBaton in the build folder still applies
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _why_unbuildable() -> str | None:
    """A reason no extension can be built here, or None."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler found (looked for {cxx!r}; set CXX)"
    if shutil.which("ninja") is None:
        try:  # the pip package `ninja` (a dependency) ships the binary beside Python, maybe off PATH
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            return "ninja is not installed (pip install ninja)"
    return None


def _first_error(e: Exception) -> str:
    """The compiler's first ``error`` line (torch's message ends with ninja's summary)."""
    text = str(e)
    for line in text.splitlines():
        if "error" in line.lower() and "ninja" not in line and "subcommand failed" not in line:
            return line.strip()[:300]
    return (text.strip().splitlines() or [type(e).__name__])[-1][:300]


def _build(kind: str):
    from torch.utils.cpp_extension import load

    from .models import cache_dir

    reason = _why_unbuildable()
    if reason is not None:
        raise RuntimeError(reason)
    names, variants = _spec(kind)
    sources = [_source_dir() / name for name in names]
    root = cache_dir() / "ext"
    root.mkdir(parents=True, exist_ok=True)
    errors = []
    for label, kwargs, extra in variants:
        name = _build_name(kind, label, kwargs, extra, sources)
        build_dir = root / name
        failed = root / f"{name}.failed"
        with _file_lock(root / f"{name}.lock"):
            if failed.exists():
                error = failed.read_text(errors="replace").strip()
            else:
                build_dir.mkdir(exist_ok=True)
                stale = build_dir / "lock"  # torch's baton, left behind by a killed build
                if stale.exists():
                    stale.unlink()
                if not any(build_dir.glob("*.so")):
                    _log.info("proxdecode: building the %s step (%s) in %s, once", kind, label, build_dir)
                try:
                    # load() appends torch's own flags to the lists it is given: hand it copies,
                    # so the next variant's flags (and build name) stay what _spec says
                    flags = {k: list(v) for k, v in kwargs.items()}
                    return load(name=name, sources=[str(s) for s in sources], build_directory=str(build_dir),
                                verbose=False, **flags)
                except Exception as e:
                    error = _first_error(e)
                    failed.write_text(error + "\n")
        errors.append(f"{label} build: {error} (remembered in {failed}; delete it to retry)")
        if not any(key in error.lower() for key in _FLAG_TROUBLE):
            break  # a plainer variant would fail the same way
    raise RuntimeError("; ".join(errors))


def _load(kind: str):
    ext = _loaded.get(kind, _UNSET)
    if ext is _UNSET:
        with _lock:
            ext = _loaded.get(kind, _UNSET)
            if ext is _UNSET:
                try:
                    ext = _build(kind)
                except Exception as e:
                    ext = None
                    what = "C++ decode step" if kind == "cpu" else "CUDA decode step (csrc/sample_step_cuda.cu)"
                    warnings.warn(f"proxdecode: the {what} could not be built ({e}); using the "
                                  f"{'torch' if kind == 'cpu' else 'torch/Triton'} step instead",
                                  RuntimeWarning, stacklevel=4)
                _loaded[kind] = ext
    return ext


# ---------------------------------------------------------------------------------------
# Calling.

def _lanes() -> int:
    """Floats per vector in torch's own CPU kernels (its softmax sums lane by lane)."""
    return 16 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 8


def _rows(x, batch: int, device) -> torch.Tensor:
    """A scalar or ``[B]`` parameter as a contiguous float32 ``[B]`` tensor on ``device``.

    A Python number becomes ``torch.full`` (a fill on the device, never a host copy)."""
    if isinstance(x, torch.Tensor):
        t = x.to(device=device, dtype=torch.float32)
        return t.expand(batch).contiguous() if t.ndim == 0 else t.reshape(batch).contiguous()
    return torch.full((batch,), float(x), dtype=torch.float32, device=device)


def _arguments(logits, seeds, step, do_sample, temperature, top_k, top_p, min_p, repetition_penalty,
               seen, suppress, reward, steer, return_scores) -> tuple:
    """The positional arguments both bindings take, decided as the reference decides them."""
    B, _ = logits.shape
    dev = logits.device
    use_top_p = not (isinstance(top_p, (int, float)) and top_p >= 1.0)
    use_min_p = not (isinstance(min_p, (int, float)) and min_p <= 0.0)
    penalise = repetition_penalty != 1.0 and seen is not None
    steering = reward is not None and steer != 0.0
    return (logits.contiguous(), seeds.to(dev, torch.int64).contiguous(), int(step), bool(do_sample),
            _rows(temperature, B, dev), int(top_k), use_top_p, _rows(top_p, B, dev), use_min_p,
            _rows(min_p, B, dev), float(repetition_penalty),
            seen.to(dev, torch.bool).contiguous() if penalise else None,
            suppress.to(dev, torch.int64).contiguous() if suppress is not None and suppress.numel() else None,
            reward.to(dev, torch.float32).contiguous() if steering else None, float(steer), bool(return_scores))


def sample_step_cpp(
    logits: torch.Tensor,
    *,
    seeds: torch.Tensor,
    step: int,
    do_sample: bool = True,
    temperature: float | torch.Tensor = 1.0,
    top_k: int = 0,
    top_p: float | torch.Tensor = 1.0,
    min_p: float | torch.Tensor = 0.0,
    repetition_penalty: float = 1.0,
    seen: torch.Tensor | None = None,
    suppress: torch.Tensor | None = None,
    reward: torch.Tensor | None = None,
    steer: float = 0.0,
    return_scores: bool = False,
) -> StepOutput:
    """Choose one token per row with the C++ step (CPU; out of place, no host sync).

    Same signature, semantics and return type as :func:`proxdecode.step.sample_step`: the
    same tokens on the same seeds, log-probs equal to fp32 rounding (ties ranked by lower
    id; see the module doc). Rows run in parallel on torch's intra-op threads; inputs are
    copied only when non-contiguous or of another dtype; nothing is modified in place.

    Args:
        logits: ``[B, V]`` float32 / bfloat16 / float16 next-token logits on the CPU.
        seeds: ``[B]`` int64 Philox keys, one per row, in [0, 2**63).
        step: decode step index, the Philox counter's second word (a Python int).
        do_sample: Gumbel-max sampling if True, argmax (lowest id among ties) if False.
        temperature: scalar or ``[B]``, > 0.
        top_k: keep the scores ``>=`` the ``top_k``-th largest, ties included as in HF, up to
            ``top_k + TIE_ROOM`` (then the lowest ids among the ties); 0 or ``>= V`` disables.
        top_p: scalar or ``[B]`` in (0, 1]; a Python number >= 1 disables it (a tensor never
            does, as in the reference).
        min_p: scalar or ``[B]`` in [0, 1]; a Python number <= 0 disables it.
        repetition_penalty: > 0; applied to the ids marked in ``seen``.
        seen: ``[B, V]`` bool, tokens present in the row so far (prompt included), or None.
        suppress: ``[S]`` int64 ids set to ``-inf`` this step, or None.
        reward: ``[B, V]`` float32 proximal reward of every candidate, or None.
        steer: beta, the weight of ``reward`` inside the candidate set.
        return_scores: also return the dense ``[B, V]`` float32 scores sampled from
            (``-inf`` outside the candidate set), as the reference's ``scores``.

    Returns:
        :class:`~proxdecode.step.StepOutput` on the CPU: ``tokens`` ``[B]`` int64,
        ``logprobs`` ``[B]`` float32 (under the steered, filtered distribution),
        ``policy_logprobs`` ``[B]`` float32 (``log_softmax`` of the raw logits at T = 1),
        ``valid`` ``[B]`` bool (False: no usable logits, the token is junk), ``scores``.

    Raises:
        RuntimeError: the extension is not available here (see :func:`available`), or an
            input has the wrong shape, dtype or device, or a suppress id is out of range.
    """
    ext = _load("cpu")
    if ext is None:
        raise RuntimeError("the C++ decode step is not available here (see the warning); "
                           "use proxdecode.step.sample_step")
    args = _arguments(logits, seeds, step, do_sample, temperature, top_k, top_p, min_p,
                      repetition_penalty, seen, suppress, reward, steer, return_scores)
    tokens, logprobs, policy, valid, scores = ext.sample_step(*args, _lanes())
    return StepOutput(tokens, logprobs, policy, valid, scores if return_scores else None)


def sample_step_cuda(
    logits: torch.Tensor,
    *,
    seeds: torch.Tensor,
    step: int,
    do_sample: bool = True,
    temperature: float | torch.Tensor = 1.0,
    top_k: int = 0,
    top_p: float | torch.Tensor = 1.0,
    min_p: float | torch.Tensor = 0.0,
    repetition_penalty: float = 1.0,
    seen: torch.Tensor | None = None,
    suppress: torch.Tensor | None = None,
    reward: torch.Tensor | None = None,
    steer: float = 0.0,
    return_scores: bool = False,
) -> StepOutput:
    """The same step with the CUDA kernel (``csrc/sample_step_cuda.cu``): never run on a GPU.

    Arguments and outputs as :func:`sample_step_cpp`, on ``logits.device`` (a CUDA device);
    the kernel runs on the current stream and nothing synchronises. Out-of-range suppress ids
    are ignored rather than reported (reporting them would need a device-to-host copy).
    Verify it against :func:`proxdecode.step.sample_step` on a GPU before relying on it.
    """
    if logits.device.type != "cuda":
        raise ValueError(f"sample_step_cuda needs CUDA logits, got {logits.device}")
    ext = _load("cuda")
    if ext is None:
        raise RuntimeError("the CUDA decode step is not available here (see the warning)")
    args = _arguments(logits, seeds, step, do_sample, temperature, top_k, top_p, min_p,
                      repetition_penalty, seen, suppress, reward, steer, return_scores)
    stream = torch.cuda.current_stream(logits.device).cuda_stream
    tokens, logprobs, policy, valid, scores = ext.sample_step(*args, stream)
    return StepOutput(tokens, logprobs, policy, valid, scores if return_scores else None)
