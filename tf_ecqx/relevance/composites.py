"""Composites: which LRP rule each linear layer gets, and how BatchNormalization is treated. Made by name.

Our names follow the ECQx reference (zennit composites, ε = 1e-6 for the ε rule and the weight relevances). The `lrp.*`
names are iNNvestigate 2.1.2's analyzers with the same rules and parameters. iNNvestigate rates no weights; the weight
relevances of an `lrp.*` composite use the analyzer's own ε parameter: 1e-7 for `lrp.epsilon` (its rule's ε, so the
weights absorb the same share of relevance as the input pass) and 0.1 for the sequential presets (the ε of their Dense
rule; their conv layers use αβ, which has no ε). Analyzers without an ε parameter (z⁺, αβ, flat, w²) get
iNNvestigate's default ε, 1e-7. Where our BatchNormalization handling differs from iNNvestigate's, see COMPOSITES.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tf_ecqx.relevance.rules import AlphaBeta, Epsilon, Flat, Rule, WSquare, ZPlus

BN_MODES = ("pass", "canonize")
INNVESTIGATE_EPSILON = 1e-7  # iNNvestigate's default ε (LRPEpsilon, EpsilonRule)
PRESET_EPSILON = 0.1  # the ε of iNNvestigate's LRPSequentialPreset* analyzers


@dataclass(frozen=True)
class Composite:
    """A layer-kind -> rule map.

    dense: rule for Dense layers; conv: for the convolutions (plain, depthwise, transposed); first: if set, for every
    linear layer with no other linear layer between it and the model input (iNNvestigate's input_layer_rule takes the
    layers fed by the input through Flatten/Reshape/Permute only: the same layers unless pooling or padding comes
    first).
    bn: "pass" hands relevance through BatchNormalization unchanged; "canonize" folds each BatchNormalization into the
    linear layer before it (kernel and bias), so that layer's rule sees BN(z).
    weight_epsilon: ε of the ε rule that gives the per-weight relevances (docs/method.md §6).
    Rules must be hashable (frozen dataclasses): compiled functions are cached per composite.
    """

    dense: Rule
    conv: Rule
    first: Rule | None = None
    bn: str = "canonize"
    weight_epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if self.bn not in BN_MODES:
            raise ValueError(f"Composite(bn={self.bn!r}) is not known; use one of {BN_MODES}.")
        if not self.weight_epsilon > 0:
            raise ValueError(f"Composite(weight_epsilon={self.weight_epsilon!r}): must be > 0.")

    def rule(self, kind: str, first: bool) -> Rule:
        """The rule for a linear layer of `kind` ("dense" or "conv"); first = no linear layer upstream."""
        if first and self.first is not None:
            return self.first
        return self.dense if kind == "dense" else self.conv


def _innvestigate(rule: Rule, bn: str = "canonize") -> Composite:
    """An iNNvestigate analyzer with one rule for all layers; the weights are rated with iNNvestigate's ε, 1e-7."""
    return Composite(dense=rule, conv=rule, bn=bn, weight_epsilon=INNVESTIGATE_EPSILON)


def _preset(conv: Rule) -> Composite:
    """iNNvestigate's sequential presets: ε = 0.1 for Dense layers and for the weight relevances."""
    return Composite(dense=Epsilon(PRESET_EPSILON), conv=conv, weight_epsilon=PRESET_EPSILON)


_PRESET_A = _preset(AlphaBeta(1.0, 0.0))
_PRESET_B = _preset(AlphaBeta(2.0, 1.0))

COMPOSITES: dict[str, Composite] = {
    # ECQx reference names (ε of zennit: 1e-6; BatchNorm canonized unless the name says bn_pass)
    "epsilon": Composite(dense=Epsilon(), conv=Epsilon()),
    "epsilon_plus": Composite(dense=Epsilon(), conv=ZPlus()),
    "epsilon_plus_flat": Composite(dense=Epsilon(), conv=ZPlus(), first=Flat()),
    "epsilon_plus_flat_bn_pass": Composite(dense=Epsilon(), conv=ZPlus(), first=Flat(), bn="pass"),
    "alpha2_beta1": Composite(dense=Epsilon(), conv=AlphaBeta(2.0, 1.0)),
    "alpha2_beta1_flat": Composite(dense=Epsilon(), conv=AlphaBeta(2.0, 1.0), first=Flat()),
    "alpha2_beta1_flat_bn_pass": Composite(dense=Epsilon(), conv=AlphaBeta(2.0, 1.0), first=Flat(), bn="pass"),
    # iNNvestigate analyzer names and parameters, ε of the weight relevances included (see the module docstring).
    # BatchNorm: iNNvestigate applies the rule to BN as a layer of its own; we canonize, except for flat and w², where
    # its BN mapping is the identity, i.e. pass.
    "lrp.epsilon": _innvestigate(Epsilon(INNVESTIGATE_EPSILON)),
    "lrp.z_plus": _innvestigate(ZPlus()),
    "lrp.alpha_1_beta_0": _innvestigate(AlphaBeta(1.0, 0.0)),
    "lrp.alpha_2_beta_1": _innvestigate(AlphaBeta(2.0, 1.0)),
    "lrp.flat": _innvestigate(Flat(), bn="pass"),
    "lrp.w_square": _innvestigate(WSquare(), bn="pass"),
    "lrp.sequential_preset_a": _PRESET_A,
    "lrp.sequential_preset_b": _PRESET_B,
    "lrp.sequential_composite_a": _PRESET_A,
    "lrp.sequential_composite_b": _PRESET_B,
    "lrp.sequential_preset_a_flat": replace(_PRESET_A, first=Flat()),
    "lrp.sequential_preset_b_flat": replace(_PRESET_B, first=Flat()),
}


def get_composite(composite: str | Composite) -> Composite:
    """A Composite, given one or its name; an unknown name raises a ValueError that lists the known ones."""
    if isinstance(composite, Composite):
        return composite
    if composite not in COMPOSITES:
        raise ValueError(f"Unknown LRP composite {composite!r}; known: {', '.join(COMPOSITES)} (or a Composite).")
    return COMPOSITES[composite]
