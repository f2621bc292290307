"""SAM engine: model loading, embedding cache and batched decoding."""

from .build import CheckpointError, LoadedSam, default_checkpoint, detect_model_type, load_sam
from .cache import LRUCache, image_key
from .embedding import ImageEmbedding
from .engine import Decoded, Prompt, PromptError, SamEngine, stability_score
from .frames import IMAGE_SIZE, LOW_RES
from .runtimes import RUNTIMES, RuntimeInfo, load_encoder

__all__ = [
    "CheckpointError",
    "Decoded",
    "IMAGE_SIZE",
    "ImageEmbedding",
    "LOW_RES",
    "LRUCache",
    "LoadedSam",
    "Prompt",
    "PromptError",
    "RUNTIMES",
    "RuntimeInfo",
    "SamEngine",
    "default_checkpoint",
    "detect_model_type",
    "image_key",
    "load_encoder",
    "load_sam",
    "stability_score",
]
