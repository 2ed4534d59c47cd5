"""Training: means-based loss, affinity loss, EM augmentation, data sampling, loop."""

from embedseg_daisy.training.affinity_loss import AffinityLossTerms, affinity_loss, affinity_targets
from embedseg_daisy.training.augment import (
    AugmentConfig,
    Patch,
    augment,
    flip_transpose,
    intensity,
    misalignment,
    missing_section,
    out_of_focus,
    slip_interpolation,
)
from embedseg_daisy.training.config import TrainConfig, load_train_config, parse_train_config
from embedseg_daisy.training.loss import (
    EmbeddingLossTerms,
    augment_background,
    background_loss,
    compact_ids,
    discriminative_loss,
    embedding_loss,
    local_parts,
)
from embedseg_daisy.training.data import Batch, PatchSampler, TrainingVolume, open_volume
