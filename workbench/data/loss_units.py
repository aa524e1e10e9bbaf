"""Loss units: nats per token to bits per character, so tokenizers can be compared.

A model's cross-entropy is measured in **nats per token** (natural log). Tokens of different
tokenizers hold different amounts of text, so per-token losses are not comparable; per-character
losses are. A text of ``C`` characters that becomes ``T`` tokens costs ``T * L_token`` nats in total,
hence

    L_char = T * L_token / C = L_token / (C / T) = L_token / (characters per token),

and one bit is ``ln 2`` nats, so ``bits/char = L_char / ln 2`` (Shannon 1948; bits per character is
the unit of the text-compression literature, e.g. the enwik8 benchmark, and of Radford et al. 2019,
table 3).
"""
from __future__ import annotations

import math


def nats_per_char(nats_per_token, chars_per_token):
    """Loss per character in nats: the loss per token divided by the characters per token."""
    return nats_per_token / chars_per_token


def bits_per_char(nats_per_token, chars_per_token):
    """Loss per character in bits: ``nats_per_token / (chars_per_token * ln 2)``. Numbers or tensors."""
    return nats_per_char(nats_per_token, chars_per_token) / math.log(2)
