"""devicefit.protos."""
