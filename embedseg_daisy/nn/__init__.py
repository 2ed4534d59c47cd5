"""Networks: the Residual Symmetric U-Net, presets, checkpoints, fast CPU inference."""

from embedseg_daisy.nn.presets import BASELINE_OFFSETS, PRESETS, ModelSpec, get_preset
from embedseg_daisy.nn.rsunet import (
    AffinityOutput,
    EmbeddingOutput,
    RSUNet,
    build_model,
    count_parameters,
    crop_center,
)
