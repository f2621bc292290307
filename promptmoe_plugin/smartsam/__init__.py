"""SmartSAM: disambiguate a single click with an annotator-like agent (seed 004).

See :class:`SmartSamSession` (the click method) and :func:`make_intent` (how candidates
are compared with reference instances; a caller keeps the instance, whose reference
features stay cached).
"""

from .intent import (
    INTENTS,
    Dinov2Intent,
    Intent,
    IntentError,
    NoIntent,
    SamIntent,
    make_intent,
    matmul,
    similarity,
)
from .session import PAPER_AGENT, SmartSamConfig, SmartSamSession

__all__ = [
    "INTENTS",
    "PAPER_AGENT",
    "Dinov2Intent",
    "Intent",
    "IntentError",
    "NoIntent",
    "SamIntent",
    "SmartSamConfig",
    "SmartSamSession",
    "make_intent",
    "matmul",
    "similarity",
]
