"""tf_ecqx: explainability-driven entropy-constrained quantization (ECQ/ECQx) for tf_keras models.

qmodel = tf_ecqx.quantize_model(model, bits=4, lambda_=0.1, relevance="epsilon_plus_flat_bn_pass")  # ECQx
qmodel.compile(...); qmodel.fit(train, callbacks=[tf_ecqx.RelevanceCallback(train)])  # relevance=None: ECQ, no callback
tf_ecqx.summary(qmodel)
"""

from tf_ecqx import datasets, export, relevance
from tf_ecqx.callbacks import RelevanceCallback
from tf_ecqx.quantization.api import quantize_annotate_layer, quantize_apply, quantize_model, quantize_scope
from tf_ecqx.quantization.configs import ECQxQuantizeConfig
from tf_ecqx.quantization.quantizers import ECQxWeightQuantizer
from tf_ecqx.quantization.scheme import ECQxQuantizeScheme
from tf_ecqx.quantization.strip import strip
from tf_ecqx.report import LayerStats, layer_stats, summary

__version__ = "0.1.0"

__all__ = [
    "ECQxQuantizeConfig",
    "ECQxQuantizeScheme",
    "ECQxWeightQuantizer",
    "LayerStats",
    "RelevanceCallback",
    "datasets",
    "export",
    "layer_stats",
    "quantize_annotate_layer",
    "quantize_apply",
    "quantize_model",
    "quantize_scope",
    "relevance",
    "strip",
    "summary",
]
