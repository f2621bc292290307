"""SmartSAM: disambiguate a single click with an annotator-like agent (seed 004).

See :class:`SmartSamSession` (the click method) and :func:`make_selector` (intent
selectors, whose reference features callers may compute once and cache).
"""

from .selectors import SELECTORS, Selector, SelectorError, make_selector, similarity
from .session import PAPER, SmartSamConfig, SmartSamSession

__all__ = ["PAPER", "SELECTORS", "Selector", "SelectorError", "SmartSamConfig", "SmartSamSession", "make_selector", "similarity"]
