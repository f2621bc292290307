"""SAM engine: model loading, embedding cache and batched decoding."""

from .build import CheckpointError, LoadedSam, default_checkpoint, detect_model_type, load_sam
from .cache import LRUCache, image_key
from .engine import LOW_RES, Decoded, ImageEmbedding, Prompt, PromptError, SamEngine, stability_score

__all__ = [
    "CheckpointError",
    "Decoded",
    "ImageEmbedding",
    "LOW_RES",
    "LRUCache",
    "LoadedSam",
    "Prompt",
    "PromptError",
    "SamEngine",
    "default_checkpoint",
    "detect_model_type",
    "image_key",
    "load_sam",
    "stability_score",
]
