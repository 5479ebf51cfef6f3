"""devicefit.device_profiles."""
