"""Model parts: attention variants, positions, norms, MLPs, and the GPT that joins them.

Importing this package registers every attention variant in ``ATTENTION``.
"""
from . import linear_attention, mla, sliding_window, ssd  # noqa: F401 (register their variants)
from .attention import ATTENTION, AttentionContext, attention_mask
from .mlp import MLP
from .norms import NORM, RMSNorm
from .transformer import GPT, Block, Cache, ModelOutput

__all__ = ["ATTENTION", "AttentionContext", "attention_mask", "MLP", "NORM", "RMSNorm", "GPT", "Block",
           "Cache", "ModelOutput"]
