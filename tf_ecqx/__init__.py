"""tf_ecqx: explainability-driven entropy-constrained quantization (ECQ/ECQx) for tf_keras models.

qmodel = tf_ecqx.quantize_model(model, bits=4, lambda_=0.1, relevance="epsilon_plus_flat_bn_pass")  # ECQx
qmodel.compile(...); qmodel.fit(train, callbacks=[tf_ecqx.RelevanceCallback(train)])  # relevance=None: ECQ, no callback
tf_ecqx.summary(qmodel)
Keras 3 models go in as they are (or through tf_ecqx.from_keras3) and come back with tf_ecqx.to_keras3(qmodel).
"""

from typing import TYPE_CHECKING, Any

from tf_ecqx import datasets, export, relevance
from tf_ecqx.callbacks import QuantizationMetrics, RelevanceCallback
from tf_ecqx.quantization.api import quantize_annotate_layer, quantize_apply, quantize_model, quantize_scope
from tf_ecqx.quantization.configs import ECQxQuantizeConfig
from tf_ecqx.quantization.quantizers import ECQxWeightQuantizer
from tf_ecqx.quantization.scheme import ECQxQuantizeScheme
from tf_ecqx.quantization.strip import strip
from tf_ecqx.report import LayerStats, layer_stats, summary

if TYPE_CHECKING:
    from tf_ecqx.keras3 import from_keras3, to_keras3

__version__ = "0.1.0"

__all__ = [
    "ECQxQuantizeConfig",
    "ECQxQuantizeScheme",
    "ECQxWeightQuantizer",
    "LayerStats",
    "QuantizationMetrics",
    "RelevanceCallback",
    "datasets",
    "export",
    "from_keras3",
    "layer_stats",
    "quantize_annotate_layer",
    "quantize_apply",
    "quantize_model",
    "quantize_scope",
    "relevance",
    "strip",
    "summary",
    "to_keras3",
]

_KERAS3_NAMES = ("from_keras3", "to_keras3")


def __getattr__(name: str) -> Any:
    """from_keras3 / to_keras3 import tf_ecqx.keras3, and with it Keras 3, only when first used."""
    if name in _KERAS3_NAMES:
        from tf_ecqx import keras3

        return getattr(keras3, name)
    raise AttributeError(f"module 'tf_ecqx' has no attribute {name!r}")
