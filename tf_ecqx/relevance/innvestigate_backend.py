"""iNNvestigate analyzers (`lrp.epsilon`, `lrp.z_plus`, ...) on tf_keras models, run in a long-lived worker process.

iNNvestigate 2.1.2 needs eager execution disabled, which is process-wide, so it runs in its own Python process
(`_innvestigate_worker.py`, started as a script so that it imports neither tf_ecqx nor anything eager). Requests and
replies are pickled over the worker's stdin/stdout. The model travels as JSON config + weights: `analyze` takes plain
tf_keras models that output logits (for a QAT model, `tf_ecqx.strip(qmodel)`).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from tf_ecqx._keras import keras
from tf_ecqx.layers import TFMOT_CLASSES, layer_class
from tf_ecqx.relevance.composites import COMPOSITES, INNVESTIGATE_EPSILON
from tf_ecqx.relevance.propagation import weight_relevances_from_outputs

WORKER = Path(__file__).with_name("_innvestigate_worker.py")

# The brief/ECQx names for iNNvestigate's sequential presets.
ALIASES = {
    "lrp.sequential_composite_a": "lrp.sequential_preset_a",
    "lrp.sequential_composite_b": "lrp.sequential_preset_b",
}


class InnvestigateBackend:
    """A worker process that runs iNNvestigate analyzers; use as a context manager or call start()/close()."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None

    def start(self) -> InnvestigateBackend:
        """Start the worker (no-op if it runs)."""
        if self._process is None or self._process.poll() is not None:
            env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
            self._process = subprocess.Popen(
                [sys.executable, "-P", str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
            )
        return self

    def close(self) -> None:
        """Stop the worker: closing its stdin ends its request loop (it is killed if it does not end in 60 s)."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()
        except BrokenPipeError:  # it already died
            pass
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    def __enter__(self) -> InnvestigateBackend:
        return self.start()

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    def analyze(
        self,
        model: keras.Model,
        x: np.ndarray,
        analyzer: str = "lrp.epsilon",
        neuron_selection: np.ndarray | None = None,
        **analyzer_kwargs: Any,
    ) -> np.ndarray:
        """Input relevances of iNNvestigate's `analyzer` for x, shaped like x.

        neuron_selection: output index per sample (iNNvestigate's "index" mode: relevance starts at that logit);
        None selects each sample's largest output ("max_activation"). analyzer_kwargs go to the analyzer.
        """
        return self._request(model, x, analyzer, neuron_selection, analyzer_kwargs, layers=False)

    def weight_relevances(
        self,
        model: keras.Model,
        x: np.ndarray,
        analyzer: str = "lrp.epsilon",
        neuron_selection: np.ndarray | None = None,
        weight_epsilon: float | None = None,
        plain: keras.Model | None = None,
        **analyzer_kwargs: Any,
    ) -> dict[str, np.ndarray]:
        """Per-weight relevances of every Dense/Conv kernel, with iNNvestigate's `analyzer` as the reverse pass.

        iNNvestigate gives the relevance at each kernel layer's output; the ε weight rule of lrp() turns it into one
        relevance per kernel weight (`weight_relevances_from_outputs`), averaged over the batch like lrp().weights.
        So for rules both implement, the result equals `lrp(model, x, y, analyzer).weights`, same keys.
        model: plain tf_keras or tf_ecqx QAT (the weight rule reads its quantized kernels). plain: the model
        iNNvestigate analyzes, `tf_ecqx.strip(model)` for a QAT model (default: model itself if it has no tfmot
        layer). weight_epsilon: ε of the weight rule; None = the analyzer's ε, as for the lrp.* composites: an
        `epsilon` in analyzer_kwargs, else that of our composite of the same name, else iNNvestigate's default 1e-7.
        neuron_selection and analyzer_kwargs as in `analyze`.
        """
        if weight_epsilon is None:
            named = COMPOSITES[analyzer].weight_epsilon if analyzer in COMPOSITES else INNVESTIGATE_EPSILON
            weight_epsilon = analyzer_kwargs.get("epsilon", named)
        if plain is None:
            if any(layer_class(layer) in TFMOT_CLASSES for layer in model.layers):
                raise ValueError(
                    f"Model {model.name!r} is a QAT model, which iNNvestigate cannot analyze: pass "
                    "plain=tf_ecqx.strip(model) (the same model with plain layers and quantized kernels)."
                )
            plain = model
        x = np.asarray(x, np.float32)
        _, outputs = self._request(plain, x, analyzer, neuron_selection, analyzer_kwargs, layers=True)
        return weight_relevances_from_outputs(model, x, outputs, weight_epsilon)

    def _request(
        self,
        model: keras.Model,
        x: np.ndarray,
        analyzer: str,
        neuron_selection: np.ndarray | None,
        analyzer_kwargs: dict[str, Any],
        layers: bool,
    ) -> Any:
        """Send one analysis to the worker; its reply: input relevance, or with layers (input relevance, {kernel
        layer name: relevance at its output})."""
        if model.outputs[0].shape.rank != 2:
            raise ValueError(
                f"Model {model.name!r} outputs {tuple(model.outputs[0].shape)}: iNNvestigate explains one output "
                "neuron per sample, not a dense prediction. Use tf_ecqx's own LRP (lrp(), or RelevanceCallback's "
                "default relevance), which starts at every output position."
            )
        process = self.start()._process
        request = {
            "analyzer": ALIASES.get(analyzer, analyzer),
            "model_json": model.to_json(),
            "weights": model.get_weights(),
            "x": np.asarray(x, np.float32),
            "neuron_selection": None if neuron_selection is None else np.asarray(neuron_selection, np.int64),
            "kwargs": analyzer_kwargs,
            "layers": layers,
        }
        try:
            pickle.dump(request, process.stdin)
            process.stdin.flush()
            status, result = pickle.load(process.stdout)
        except (BrokenPipeError, EOFError) as error:
            code = process.poll()
            self._process = None
            raise RuntimeError(f"The iNNvestigate worker died (exit code {code}); see its stderr.") from error
        if status != "ok":
            raise RuntimeError(f"iNNvestigate analyzer {analyzer!r} failed in the worker:\n{result}")
        return result
