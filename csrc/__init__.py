"""C++ (CPU) and CUDA sources of the fused decode step, built on first use (see README.md)."""
