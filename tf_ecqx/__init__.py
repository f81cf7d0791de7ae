"""tf_ecqx: explainability-driven entropy-constrained quantization (ECQ/ECQx) for tf_keras models.

qmodel = tf_ecqx.quantize_model(model, bits=4, lambda_=0.2, ecqx=True)  # ECQx; ecqx=False (default): ECQ
qmodel.compile(...); qmodel.fit(train, callbacks=[tf_ecqx.RelevanceCallback(train)])  # LRP epsilon_plus_flat_bn_pass
tf_ecqx.summary(qmodel)
Keras 3 models go in as they are (or through tf_ecqx.from_keras3) and come back with tf_ecqx.to_keras3(qmodel).

Every name is imported when first used, so that `import tf_ecqx` (and `tf-ecqx --help`) does not load TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tf_ecqx import datasets, export, plots, relevance, report, sizes
    from tf_ecqx.callbacks import QuantizationMetrics, RelevanceCallback
    from tf_ecqx.distillation import Distiller
    from tf_ecqx.intake import quantize_model
    from tf_ecqx.keras3 import from_keras3, to_keras3
    from tf_ecqx.lambda_schedule import LambdaSchedule
    from tf_ecqx.preprocessing import split_input_preprocessing
    from tf_ecqx.quantization.api import quantize_annotate_layer, quantize_apply, quantize_scope
    from tf_ecqx.quantization.configs import ECQxQuantizeConfig
    from tf_ecqx.quantization.kernels import QuantizedKernel, quantized_kernels
    from tf_ecqx.quantization.quantizers import ECQxWeightQuantizer
    from tf_ecqx.quantization.scheme import ECQxQuantizeScheme
    from tf_ecqx.quantization.settings import DEFAULT_LAMBDA, ECQxSettings
    from tf_ecqx.quantization.strip import strip
    from tf_ecqx.rate_allocation import LayerRate, allocate_rates
    from tf_ecqx.report import LayerStats, layer_stats, summary

__version__ = "0.1.0"

# public name -> module that defines it (submodules map to themselves)
_HOMES = {
    "Distiller": "tf_ecqx.distillation",
    "ECQxQuantizeConfig": "tf_ecqx.quantization.configs",
    "DEFAULT_LAMBDA": "tf_ecqx.quantization.settings",
    "ECQxQuantizeScheme": "tf_ecqx.quantization.scheme",
    "ECQxSettings": "tf_ecqx.quantization.settings",
    "ECQxWeightQuantizer": "tf_ecqx.quantization.quantizers",
    "LambdaSchedule": "tf_ecqx.lambda_schedule",
    "LayerRate": "tf_ecqx.rate_allocation",
    "LayerStats": "tf_ecqx.report",
    "QuantizationMetrics": "tf_ecqx.callbacks",
    "QuantizedKernel": "tf_ecqx.quantization.kernels",
    "RelevanceCallback": "tf_ecqx.callbacks",
    "allocate_rates": "tf_ecqx.rate_allocation",
    "from_keras3": "tf_ecqx.keras3",
    "layer_stats": "tf_ecqx.report",
    "quantize_annotate_layer": "tf_ecqx.quantization.api",
    "quantize_apply": "tf_ecqx.quantization.api",
    "quantize_model": "tf_ecqx.intake",
    "quantized_kernels": "tf_ecqx.quantization.kernels",
    "split_input_preprocessing": "tf_ecqx.preprocessing",
    "quantize_scope": "tf_ecqx.quantization.api",
    "strip": "tf_ecqx.quantization.strip",
    "summary": "tf_ecqx.report",
    "to_keras3": "tf_ecqx.keras3",
}
_SUBMODULES = ("datasets", "export", "plots", "relevance", "report", "sizes")

__all__ = [
    "DEFAULT_LAMBDA",
    "Distiller",
    "ECQxQuantizeConfig",
    "ECQxQuantizeScheme",
    "ECQxSettings",
    "ECQxWeightQuantizer",
    "LambdaSchedule",
    "LayerRate",
    "LayerStats",
    "QuantizationMetrics",
    "QuantizedKernel",
    "RelevanceCallback",
    "allocate_rates",
    "datasets",
    "export",
    "from_keras3",
    "layer_stats",
    "plots",
    "quantize_annotate_layer",
    "quantize_apply",
    "quantize_model",
    "quantize_scope",
    "quantized_kernels",
    "relevance",
    "report",
    "sizes",
    "split_input_preprocessing",
    "strip",
    "summary",
    "to_keras3",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (Keras 3 only for from_keras3 / to_keras3)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"tf_ecqx.{name}")
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tf_ecqx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
