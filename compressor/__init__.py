"""Host side of devicefit (needs torch): analysis, compression passes, search, latency model, export."""
