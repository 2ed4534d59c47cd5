"""Segmentation evaluation: VI, adapted Rand, split/merge counts, merge-split plot.

VI is in nats unless ``log_base`` says otherwise; see :mod:`.metrics` for the
conventions (VI split = H(S|T), VI merge = H(T|S), ground-truth label 0 ignored,
segment label 0 an ordinary segment).
"""

from .metrics import (
    ARandResult,
    Contingency,
    ErrorCounts,
    VIResult,
    adapted_rand_error,
    contingency_table,
    evaluate_segmentation,
    split_merge_counts,
    variation_of_information,
)
from .plots import merge_split_plot

__all__ = [
    "ARandResult",
    "Contingency",
    "ErrorCounts",
    "VIResult",
    "adapted_rand_error",
    "contingency_table",
    "evaluate_segmentation",
    "merge_split_plot",
    "split_merge_counts",
    "variation_of_information",
]
