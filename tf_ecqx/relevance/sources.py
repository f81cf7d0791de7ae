"""Where ECQx training gets its weight relevances: the native engine (a composite) or iNNvestigate (an analyzer)."""

from __future__ import annotations

from typing import NamedTuple

from tf_ecqx.relevance.composites import COMPOSITES

INNVESTIGATE_PREFIX = "innvestigate:"
NATIVE, INNVESTIGATE = "native", "innvestigate"
DEFAULT_RELEVANCE = "epsilon_plus_flat_bn_pass"  # the ECQx reference's composite


class RelevanceSource(NamedTuple):
    """backend: "native" or "innvestigate"; name: a key of COMPOSITES, or an iNNvestigate analyzer name."""

    backend: str
    name: str


def relevance_source(spec: str) -> RelevanceSource:
    """Parse a relevance source: "epsilon_plus_flat", "lrp.epsilon_plus_flat" or "innvestigate:lrp.z_plus".

    A name of ours may carry iNNvestigate's "lrp." prefix; an unknown name raises a ValueError listing the known ones.
    """
    if not isinstance(spec, str):
        raise ValueError(f"relevance={spec!r} must be a string naming an LRP composite.")
    if spec.startswith(INNVESTIGATE_PREFIX):
        analyzer = spec[len(INNVESTIGATE_PREFIX) :]
        if not analyzer.startswith("lrp."):
            raise ValueError(
                f"relevance={spec!r}: ECQx needs an LRP analyzer of iNNvestigate, "
                "e.g. 'innvestigate:lrp.alpha_2_beta_1'."
            )
        return RelevanceSource(INNVESTIGATE, analyzer)
    for name in (spec, spec.removeprefix("lrp.")):
        if name in COMPOSITES:
            return RelevanceSource(NATIVE, name)
    raise ValueError(
        f"relevance={spec!r} is not a known LRP composite; use one of {', '.join(COMPOSITES)} (optionally with the "
        f"'lrp.' prefix), or '{INNVESTIGATE_PREFIX}<analyzer>' for iNNvestigate."
    )
