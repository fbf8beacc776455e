"""The CUDA step's sources (``csrc/sample_step_cuda.cu`` and its ATen binding) build.

No machine this project was written on had a GPU, so the CUDA step cannot run here. What
can be checked without one: both sources compile as ``proxdecode.cpp`` builds them (C++20,
as torch's extensions, -O3), the kernel for an A100 (sm_80) and an H100/H200 (sm_90) with
ptxas' register report, the binding against the installed torch's headers; the two link
into an extension module (the binding includes no CUDA header: the stream arrives as a raw
handle, so a CPU build of torch links it), which imports and refuses CPU tensors with its
own message. Skipped where there is no CUDA compiler (``nvcc`` on the PATH).
"""

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

NVCC = shutil.which("nvcc")
CSRC = Path(__file__).resolve().parent.parent / "csrc"
NAME = "proxdecode_step_cuda"
pytestmark = pytest.mark.skipif(NVCC is None, reason="no CUDA compiler (nvcc) on the PATH")


def _nvcc(*args) -> str:
    run = subprocess.run([NVCC, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout + run.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Both objects, position-independent as an extension's are; the kernel's ptxas report."""
    from torch.utils.cpp_extension import include_paths

    out = tmp_path_factory.mktemp("cuda_build")
    report = _nvcc("-c", "-O3", "-std=c++20", "-Xcompiler", "-fPIC", "-Xptxas", "-v",
                   "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
                   CSRC / "sample_step_cuda.cu", "-o", out / "kernel.o")
    includes = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    _nvcc("-x", "c++", "-c", "-O3", "-std=c++20", "-Xcompiler", "-fPIC", *includes,
          f"-DTORCH_EXTENSION_NAME={NAME}", CSRC / "sample_step_cuda.cpp", "-o", out / "binding.o")
    return out, report


def test_kernel_compiles_for_sm80_and_sm90(built):
    """Three instantiations (fp32, bf16, fp16 logits) per architecture, none spilling."""
    out, report = built
    for arch in ("sm_80", "sm_90"):
        assert report.count(f"for '{arch}'") == 3, report  # ptxas: "Compiling entry function ... for 'sm_90'"
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", report)]
    assert len(spills) == 6 and max(spills) == 0, report
    assert (out / "kernel.o").stat().st_size > 0 and (out / "binding.o").stat().st_size > 0


def test_extension_links_imports_and_checks_its_arguments(built):
    """Linked with the CUDA runtime (nvcc's default, static) and torch's libraries, the module
    imports and its first check refuses logits that are not on a CUDA device."""
    import torch

    out, _ = built
    lib = Path(torch.__file__).parent / "lib"
    module = out / f"{NAME}.so"
    _nvcc("-shared", out / "kernel.o", out / "binding.o", "-o", module, f"-L{lib}", "-lc10", "-ltorch",
          "-ltorch_cpu", "-ltorch_python", f"-Xlinker=-rpath,{lib}")
    code = f"""
import importlib.util, torch
spec = importlib.util.spec_from_file_location({NAME!r}, {str(module)!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
f, one = torch.zeros(1), torch.ones(1)
try:
    m.sample_step(torch.zeros(1, 8), torch.zeros(1, dtype=torch.long), 0, True, one, 0, False, one, False, f,
                  1.0, None, None, None, 0.0, False, 0)
except RuntimeError as e:
    print("refused:", str(e).splitlines()[0])
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "refused: logits must be a contiguous CUDA tensor of shape [B, V]" in run.stdout, run.stdout
