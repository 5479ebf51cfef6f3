"""Graph-level quantization of fp32 ONNX models, per layer, with a check of what onnxruntime really runs.

Entry point: :func:`quantize_onnx` (see :mod:`.pipeline` for the order of passes). Modules: ``mapping``
(torch layer names → ONNX nodes), ``isa`` (activation signedness / reduce_range per target CPU),
``calibration`` (feeds, activation capture, minmax/percentile/entropy/mse ranges), ``ort_int8`` (dynamic and
static W8A8 through onnxruntime's quantizers), ``nbits`` (MatMulNBits packing), ``gptq``, ``awq``,
``smoothquant``, ``weights`` (float16 / int8+DQ storage), ``verify`` (optimized-graph inspection).
"""

from devicefit.compressor.quant.pipeline import QuantResult, quantize_onnx
from devicefit.compressor.quant.verify import INT_OPS, inspect, optimized_model

__all__ = ["INT_OPS", "QuantResult", "inspect", "optimized_model", "quantize_onnx"]
