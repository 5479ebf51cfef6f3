"""Post-training accuracy recovery for static int8 (QDQ) graphs, applied after quantization.

* :mod:`.layer_error` — per-layer output error (SQNR) of a quantized graph against its fp32 source: where the
  loss comes from, measured on real data.
* :mod:`.bias_correction` — empirical bias correction (Nagel et al. 2019, §4.2): per output channel, the mean
  shift that quantization puts on each Conv / Gemm output is measured on calibration data and folded back
  into the layer's int32 bias; the graph stays a normal QDQ graph (same nodes, same fusions, same speed).
* :mod:`.rounding` — output-aware (GPTQ) re-rounding of dense layers' int8 weights on their existing grid.
* :mod:`.qad` — quantization-aware distillation: the QDQ graph run in torch (:mod:`.torch_graph`), its int8
  weights and biases trained against the fp32 graph (straight-through rounding, same scales), written back.
"""

from devicefit.compressor.quant.recovery.bias_correction import correct_biases
from devicefit.compressor.quant.recovery.layer_error import LayerError, layer_errors
from devicefit.compressor.quant.recovery.qad import QadResult, distill
from devicefit.compressor.quant.recovery.rounding import round_weights

__all__ = ["LayerError", "QadResult", "correct_biases", "distill", "layer_errors", "round_weights"]
