"""Dynamic Expert Selector (DES): a small network that picks two experts per image and mask.

:mod:`.features` computes the context (518 numbers), :mod:`.network` scores expert pairs
and gates them (:class:`Router`, the shipped weights), :mod:`.training` fits the network to pair
IoUs measured by ``promptmoe_plugin.selector_data`` (``promptmoe train-router`` drives both
from dataset folders).
"""

from .features import CONTEXT_DIM, context_features, shape_features
from .network import DEFAULT_WEIGHTS, PairRouter, Router, load_router, save_router
from .training import (
    Example,
    evaluate,
    fit,
    load_examples,
    save_examples,
    split_by_image,
)

__all__ = [
    "CONTEXT_DIM",
    "DEFAULT_WEIGHTS",
    "Example",
    "PairRouter",
    "Router",
    "context_features",
    "evaluate",
    "fit",
    "load_examples",
    "load_router",
    "save_examples",
    "save_router",
    "shape_features",
    "split_by_image",
]
