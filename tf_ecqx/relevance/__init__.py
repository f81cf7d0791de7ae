"""LRP relevances of inputs and kernel weights (native TF2), and the same through iNNvestigate in a worker process."""

from tf_ecqx.relevance.composites import COMPOSITES, Composite, get_composite
from tf_ecqx.relevance.innvestigate_backend import InnvestigateBackend
from tf_ecqx.relevance.propagation import OUTPUTS, Relevances, lrp
from tf_ecqx.relevance.rules import AlphaBeta, Epsilon, Flat, Pass, Rule, WSquare, ZPlus

__all__ = [
    "COMPOSITES",
    "OUTPUTS",
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "Flat",
    "InnvestigateBackend",
    "Pass",
    "Relevances",
    "Rule",
    "WSquare",
    "ZPlus",
    "get_composite",
    "lrp",
]
