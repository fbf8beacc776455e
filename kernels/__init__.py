"""Triton kernels of the decode step (``proxdecode.kernels``).

Each kernel will sit in its own file beside its torch reference; the reference for the
whole step is ``proxdecode.step.sample_step``, whose counter-based draws
(``proxdecode.philox``) are bit-exact with ``tl.rand`` so a kernel can match its tokens.
"""
