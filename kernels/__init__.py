"""devicefit.kernels."""
