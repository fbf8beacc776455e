"""Triton kernels of the decode step (``proxdecode.kernels``).

One kernel, the whole step, in ``sample_step.py``; its reference is
``proxdecode.step.sample_step``, whose counter-based draws (``proxdecode.philox``) are
bit-exact with ``tl.rand`` so the kernel can match its tokens.

- ``sample_step.sample_step_triton``: the whole step (penalty, top-k / top-p / min-p
  without sorting, reward steering, Gumbel-max) in one kernel, one program per row; its
  per-row pieces (the tile and general paths) are the ``@triton.jit`` functions of
  ``sample_step_paths``.

Names are exported lazily so that importing the package does not import Triton.
"""

__all__ = ["sample_step_triton"]


def __getattr__(name):
    if name == "sample_step_triton":
        from .sample_step import sample_step_triton

        return sample_step_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
