"""ECQxSettings: how kernels are quantized, made and checked once and passed whole to scheme, configs and quantizers.

Like tfmot's scheme objects: `quantize_model` builds one from its arguments; `ECQxQuantizeScheme(settings)`,
`ECQxQuantizeConfig(..., settings=settings)` and `ECQxWeightQuantizer(settings)` take it as it is. Which LRP composite
computes the relevances of ECQx is not a quantizer setting: `RelevanceCallback(data, relevance=...)` holds it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

from tf_ecqx.ecq.bits import check_bits

# One default for the API, the CLI and the demo: sparse 2-5 bit models that keep accuracy on the benchmarks.
DEFAULT_LAMBDA = 0.2
# Above 1 almost every weight is zero already; the cap keeps the layer lambda far from float32 overflow.
MAX_LAMBDA = 100.0
GRADIENT_RULES = ("reference", "ste")
STEPS = "a number of training steps"  # what check_count says a step count is


def _is_number(value: object) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_lambda(lambda_: float) -> float:
    """lambda_ as float if it is a number in [0, 100], else a ValueError that says what is allowed."""
    if not _is_number(lambda_) or not math.isfinite(lambda_) or not 0 <= lambda_ <= MAX_LAMBDA:
        raise ValueError(
            f"lambda_={lambda_!r} is not allowed: the entropy weight must be a finite number in [0, {MAX_LAMBDA:g}] "
            "(0 = nearest-level rounding, about 0.05-0.3 for sparse models, 1 = almost all zero)."
        )
    return float(lambda_)


def check_gradient(gradient: str) -> str:
    """gradient if it names a known straight-through rule."""
    if gradient not in GRADIENT_RULES:
        raise ValueError(f"gradient={gradient!r} is not known; use one of {GRADIENT_RULES}.")
    return gradient


def check_share(name: str, value: float, meaning: str) -> float:
    """value as float if it is a number in [0, 1]; else a ValueError that names the option and what it means."""
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is not allowed: it is {meaning}, in [0, 1].")
    return float(value)


def check_p(p: float) -> float:
    """p as float if it is a number in [0, 1] (the sparsity ECQx may give back relative to ECQ)."""
    return check_share("p", p, "the sparsity LRP may give back relative to ECQ (0.1 usual)")


def check_q(q: float) -> float:
    """q as float if it is a number in [0, 1] (the sparsity ECQx may add relative to ECQ)."""
    return check_share("q", q, "the sparsity LRP may add relative to ECQ (0 = the reference's interval)")


def check_count(name: str, value: int, minimum: int = 1, meaning: str = "") -> int:
    """value if it is an integer >= minimum (bools refused); else a ValueError that names the option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}{what}.")
    return int(value)


def check_flag(name: str, value: object) -> bool:
    """value if it is a bool (numpy bools included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r} must be True or False.")
    return bool(value)


@dataclasses.dataclass(frozen=True)
class ECQxSettings:
    """The quantization of a kernel (docs/method.md §2-§5), validated on creation.

    bits: 2-8. lambda_: entropy pressure, 0 = nearest-level rounding, larger = sparser. gradient: "reference" (EC2T,
    gradient x |centroid| on nonzero levels) or "ste". ecqx: correct the zero cost by weight relevances, which
    `RelevanceCallback` refreshes during fit. p and q: the sparsity ECQx may give back and add relative to ECQ, the
    interval [s_ECQ - p, s_ECQ + q] (q = 0: the reference's interval).
    """

    bits: int = 4
    lambda_: float = DEFAULT_LAMBDA
    gradient: str = "reference"
    ecqx: bool = False
    p: float = 0.1
    q: float = 0.0

    def __post_init__(self) -> None:
        for name, value in (
            ("bits", check_bits(self.bits)),
            ("lambda_", check_lambda(self.lambda_)),
            ("gradient", check_gradient(self.gradient)),
            ("ecqx", check_flag("ecqx", self.ecqx)),
            ("p", check_p(self.p)),
            ("q", check_q(self.q)),
        ):
            object.__setattr__(self, name, value)  # numpy scalars become Python numbers

    def get_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ECQxSettings:
        """The settings of a config; configs saved by tf_ecqx 0.1.0 named the composite ("relevance") instead."""
        config = dict(config)
        if "relevance" in config:
            config["ecqx"] = config.pop("relevance") is not None
        return cls(**config)
