"""Per-device latency model: roofline prior from the profile, calibrated by measurements, and the
measurement store that keeps every measurement across runs."""

from devicefit.compressor.latency.calibrated import CalibratedModel, Prediction
from devicefit.compressor.latency.nodemap import NodeMap, map_nodes, node_map_for
from devicefit.compressor.latency.roofline import (
    LayerCost,
    LayerSpec,
    Roofline,
    dtype_of,
    plan_costs,
    predicted_size_bytes,
)
from devicefit.compressor.latency.store import Measurement, MeasurementStore, default_path

__all__ = [
    "CalibratedModel",
    "LayerCost",
    "LayerSpec",
    "Measurement",
    "MeasurementStore",
    "NodeMap",
    "Prediction",
    "Roofline",
    "default_path",
    "dtype_of",
    "map_nodes",
    "node_map_for",
    "plan_costs",
    "predicted_size_bytes",
]
