"""``ModelBundle``: a model plus everything devicefit needs to compress, export and judge it.

Built by ``devicefit.models.load_model`` from an ``nn.Module``, a ``.pt2``, an ``.onnx`` file, a
``package.module:factory`` or ``zoo:NAME``. This module imports no torch (the agent imports ``devicefit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from devicefit.data import Dataset

if TYPE_CHECKING:
    import torch

MetricName = Literal["accuracy", "cosine", "top1_agreement"]


@dataclass
class ModelBundle:
    """A loaded model with its data and metric.

    ``module`` is the torch model (``None`` when the source is an ONNX file: only graph-level techniques
    apply then). ``example_inputs`` are torch tensors in ``input_names`` order. ``dynamic_axes`` maps an
    input name to {axis index: axis name}; axis 0 is always the batch. ``calib`` feeds calibration /
    sensitivity / distillation; ``eval`` is the held-out split the metric is measured on. ``metric`` is
    ``accuracy`` when ``eval`` has labels, else fidelity to the fp32 model (``cosine`` for embeddings,
    ``top1_agreement`` for classifiers without labels).
    """

    name: str
    module: torch.nn.Module | None
    example_inputs: tuple[Any, ...]
    input_names: list[str]
    output_names: list[str]
    metric: MetricName
    calib: Dataset | None = None
    eval: Dataset | None = None
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    onnx_path: Path | None = None
    source: str = ""

    def require_module(self, what: str) -> torch.nn.Module:
        """The torch module, or a clear error for ONNX-only inputs."""
        if self.module is None:
            from devicefit.errors import UserInputError

            raise UserInputError(
                f"{what} needs the torch model, but {self.name} was given as ONNX",
                "pass the PyTorch model (file.pt2, package.module:factory or zoo:NAME)",
            )
        return self.module

    def require_data(self, split: Literal["calib", "eval"]) -> Dataset:
        ds = self.calib if split == "calib" else self.eval
        if ds is None:
            from devicefit.errors import UserInputError

            raise UserInputError(
                f"{self.name} has no {'calibration' if split == 'calib' else 'evaluation'} data",
                "pass --data file.npz (one array per model input, optional 'labels')",
            )
        return ds
