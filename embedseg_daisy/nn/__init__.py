"""Networks: the Residual Symmetric U-Net, presets, checkpoints, fast CPU inference.

Typical use::

    from embedseg_daisy.nn import get_preset, build_model, load_checkpoint, fast_inference
    model = build_model(get_preset("tiny", "embedding"))
    model, spec = load_checkpoint("model.pt", expected_kind="embedding")
    fast_inference(model)                       # eval + oneDNN route on CPU
    with torch.inference_mode():
        out = model(x)                          # EmbeddingOutput(embedding, mask_logit)
"""

from embedseg_daisy.nn.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from embedseg_daisy.nn.cpu import fast_inference, use_onednn
from embedseg_daisy.nn.presets import BASELINE_OFFSETS, PRESETS, ModelSpec, get_preset
from embedseg_daisy.nn.rsunet import (
    AffinityOutput,
    EmbeddingOutput,
    RSUNet,
    build_model,
    count_parameters,
    crop_center,
)

__all__ = [
    "AffinityOutput",
    "BASELINE_OFFSETS",
    "EmbeddingOutput",
    "ModelSpec",
    "PRESETS",
    "RSUNet",
    "build_model",
    "count_parameters",
    "crop_center",
    "fast_inference",
    "get_preset",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "use_onednn",
]
