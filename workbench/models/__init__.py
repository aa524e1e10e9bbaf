"""Model parts: attention variants, positions, norms, MLPs, and the GPT that joins them.

Importing this package registers every attention variant in ``ATTENTION``.
"""
from . import sliding_window  # noqa: F401 (registers its variant)
from . import linear_attention  # noqa: F401 (registers linear, gla, delta)
from . import ssd  # noqa: F401 (registers ssd)
from .attention import ATTENTION, AttentionContext, attention_mask
from .mlp import MLP
from .norms import NORM, RMSNorm
from .transformer import GPT, Block, Cache, ModelOutput

__all__ = ["ATTENTION", "AttentionContext", "attention_mask", "MLP", "NORM", "RMSNorm", "GPT", "Block",
           "Cache", "ModelOutput"]
