"""ELECTRA: replaced-token detection (Clark et al. 2020, "ELECTRA: Pre-training Text Encoders as
Discriminators Rather Than Generators").

A small masked-LM *generator* G fills masked positions with plausible tokens; the model we keep,
the *discriminator* D, reads the result and says, for every token, whether it was replaced:

    m          = a random set of positions (15% of the ordinary tokens of each sequence)
    x_masked   = x with 85% of the positions in m set to [MASK] (the rest keep their token)
    x_hat_i   ~ p_G(. | x_masked)  for i in m        (temperature 1, no gradient through the sample)
    x_corrupt  = x with x_hat at the positions in m
    y_i        = [i in m and x_hat_i != x_i]         (a correct guess counts as original)

    L_MLM  = -(1 / |m|) * sum_{i in m} log p_G(x_i | x_masked)
    L_Disc = (1 / N) * sum_{i not pad} BCE(sigmoid(D(x_corrupt)_i), y_i)     (all N non-pad tokens)
    L      = L_MLM + lambda * L_Disc,   lambda = disc_weight = 50

Both networks train jointly on L (not adversarially: the generator is trained by maximum
likelihood only). What follows the reference code (google-research/electra,
pretrain/pretrain_helpers.py ``mask``, run_pretraining.py) and where it differs:

* Masking is NOT BERT's 80/10/10: an exact count ``max(1, round(n * mask_ratio))`` of the ``n``
  ordinary (non-special) positions of each sequence is chosen, 85% become [MASK], 15% keep their
  token, and no random token is ever put in. The reference draws the positions WITH replacement
  (``tf.random.categorical``, so duplicates make the count a little smaller, and it caps the count at
  ``max_predictions_per_seq``); here they are drawn WITHOUT replacement, so the count is exact.
* Generator (paper sec. 3.2, ``generator_hidden_size=0.25``): the discriminator's depth, width
  ``d_g = round(generator_width * d)``, its own blocks and learned positions, and the discriminator's
  token embeddings SHARED (the same tensor, trained by both losses). The embeddings are ``d`` wide,
  so the generator projects them in, ``Linear(d -> d_g)``, and scores tokens with the reference's
  masked-LM output: ``LayerNorm(GELU(Linear(d_g -> d)(h))) @ E^T + b`` (run_pretraining.py
  ``get_masked_lm_output``; transformers' ``ElectraGeneratorPredictions``).
  Its body is a workbench ``GPT`` whose ``token_embedding`` is replaced by that input projection of
  the shared table and whose ``lm_head`` by that output; so it holds no parameter of its own that is
  never used. Attention heads: by default as many as keep the discriminator's head width
  (``d_g // head_dim``, ELECTRA's ``hidden // 64`` rule for 64-wide heads), at least one.
* Discriminator head (run_pretraining.py ``_get_discriminator_output``; transformers'
  ``ElectraDiscriminatorPredictions``): ``Linear(d, d) -> GELU -> Linear(d, 1)``, owned by this
  objective. It reads the discriminator's final hidden state: the last block's output, which is
  already normalized in a post-norm (BERT-shaped) model, and the last block's output passed through
  the model's final norm in a pre-norm one (the tensor its LM head would read). The model's own LM
  head is computed by ``GPT.forward`` and left unused.
* Replacements are drawn with the Gumbel-max trick, ``argmax(logits + Gumbel noise)`` (as the
  reference does), with the noise drawn on the CPU from the ``generator`` argument, so CPU and CUDA
  runs sample the same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..device import seeded
from ..models.norms import make_norm
from ..models.transformer import GPT
from ..validation import check_int, check_positive, check_range
from .base import (IGNORE, MASK_ID, OBJECTIVES, PAD_ID, Corruption, Objective, ObjectiveOutput, _config_holder,
                   scored_cross_entropy, special_mask, uniform)

KEEP_ORIGINAL = 0.15  # of the chosen positions, the share that keeps its token (the rest become [MASK]); no random


# ---------------------------------------------------------------- masking, sampling, labels
def choose_and_mask(tokens: torch.Tensor, vocab_size: int, mask_ratio: float, generator=None):
    """ELECTRA's masking of clean ``tokens`` (B, T) -> (inputs, chosen).

    Each sequence gets exactly ``max(1, round(n * mask_ratio))`` chosen positions among its ``n``
    ordinary tokens (none if it has none), drawn uniformly without replacement; 85% of them read
    [MASK] in ``inputs``, the other 15% keep their token. Special tokens are never chosen.
    """
    candidates = ~special_mask(tokens, vocab_size)
    n_candidates = candidates.sum(dim=1)
    n_chosen = torch.clamp(torch.round(n_candidates.double() * mask_ratio).long(), min=1)
    n_chosen = torch.minimum(n_chosen, n_candidates)
    # a random order of each row's candidates: uniform scores, non-candidates sorted last
    scores = uniform(tokens.shape, generator, tokens.device).masked_fill(~candidates, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    chosen = rank < n_chosen[:, None]
    to_mask = chosen & (uniform(tokens.shape, generator, tokens.device) >= KEEP_ORIGINAL)
    inputs = tokens.masked_fill(to_mask, MASK_ID)
    return inputs, chosen


def gumbel_max_sample(logits: torch.Tensor, generator=None) -> torch.Tensor:
    """One token per row of ``logits`` (..., V), drawn from softmax(logits) (temperature 1) as
    argmax(logits + g) with g ~ Gumbel(0, 1) = -log(-log u), u uniform from ``generator`` on the CPU."""
    u = uniform(logits.shape, generator, logits.device).clamp_min(torch.finfo(torch.float32).tiny)
    return (logits.float() - torch.log(-torch.log(u))).argmax(dim=-1)


def replaced_token_labels(original: torch.Tensor, sampled: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """The discriminator's targets: True where a masked position now holds a token other than the original.

    A position the generator filled with the original token counts as original (label False), as in
    the reference (run_pretraining.py ``_get_fake_data``: ``is_fake = masked & (sampled != original)``).
    """
    return masked & (sampled != original)


# ---------------------------------------------------------------- the parts the objective owns
class ProjectedEmbedding(nn.Module):
    """The generator's input: the discriminator's token embedding (shared, d wide), projected to d_g."""

    def __init__(self, shared: nn.Embedding, generator_width: int):
        super().__init__()
        self.shared = shared
        self.project = nn.Linear(shared.embedding_dim, generator_width)

    @property
    def weight(self) -> torch.Tensor:
        """The shared table (GPT reads ``token_embedding.weight`` for device, dtype and embedding counts)."""
        return self.shared.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.shared(ids))


class SharedEmbeddingDecoder(nn.Module):
    """The generator's output: back to the embedding width, then the shared embedding matrix transposed:
    logits = Norm(GELU(W h + c)) @ E^T + b."""

    def __init__(self, shared: nn.Embedding, generator_width: int, config):
        super().__init__()
        self.shared = shared
        self.dense = nn.Linear(generator_width, shared.embedding_dim)
        self.act = nn.GELU()
        self.norm = make_norm(config)
        self.bias = nn.Parameter(torch.zeros(shared.num_embeddings))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(self.act(self.dense(hidden))), self.shared.weight, self.bias)


class DiscriminatorHead(nn.Module):
    """One logit per token, "was it replaced?": Linear(d, d) -> GELU -> Linear(d, 1)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = nn.GELU()
        self.dense_prediction = nn.Linear(d_model, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(self.act(self.dense(hidden))).squeeze(-1)


@dataclass
class ElectraLosses:
    """Everything one ELECTRA step computes (tensors), before it is reduced to an ObjectiveOutput."""

    generator_loss: torch.Tensor       # MLM cross entropy, mean over the chosen positions
    discriminator_loss: torch.Tensor   # sigmoid BCE, mean over the non-pad positions
    total: torch.Tensor                # generator_loss + disc_weight * discriminator_loss
    original: torch.Tensor             # (B, T) clean tokens
    generator_inputs: torch.Tensor     # (B, T) what the generator read ([MASK] at 85% of the chosen)
    chosen: torch.Tensor               # (B, T) bool: the positions the generator predicts
    corrupted: torch.Tensor            # (B, T) what the discriminator read (samples at the chosen positions)
    is_replaced: torch.Tensor          # (B, T) bool: the discriminator's labels
    discriminator_logits: torch.Tensor  # (B, T)
    scored: torch.Tensor               # (B, T) bool: non-pad positions (the discriminator's loss covers them)
    generator_accuracy: float          # argmax of the generator == original, over the chosen positions


@OBJECTIVES.register("electra")
class Electra(Objective):
    """Replaced-token detection. The Trainer's model is the discriminator (the model you keep); the
    generator and the discriminator head are built by ``setup`` and trained with it."""

    name = "electra"
    attention_mode = "bidirectional"

    def __init__(self, mask_ratio: float = 0.15, generator_width: float = 0.25, disc_weight: float = 50.0,
                 generator_heads: Optional[int] = None):
        owner = "Electra"
        check_range(owner, "mask_ratio", mask_ratio, 0.0, 1.0, low_open=True)
        check_range(owner, "generator_width", generator_width, 0.0, 1.0, low_open=True)
        check_positive(owner, "disc_weight", disc_weight, allow_zero=True)
        if generator_heads is not None:
            check_int(owner, "generator_heads", generator_heads)
        super().__init__(mask_ratio=mask_ratio, generator_width=generator_width, disc_weight=disc_weight,
                         generator_heads=generator_heads)
        self.mask_ratio = mask_ratio
        self.generator_width = generator_width
        self.disc_weight = disc_weight
        self.generator_heads = generator_heads
        self.generator: Optional[GPT] = None
        self.discriminator_head: Optional[DiscriminatorHead] = None

    # ------------------------------------------------------------------ building
    def generator_config(self, config):
        """The generator body's ModelConfig: the discriminator's, d_g wide, with d_ff scaled alike."""
        width = round(self.generator_width * config.d_model)
        if width < 1:
            raise ValueError(f"Electra.generator_width={self.generator_width!r} is invalid for d_model="
                             f"{config.d_model}: the generator would be {width} wide; it must lie in "
                             f"[{0.5 / config.d_model:.3g}, 1]")
        if self.generator_heads is None:
            # keep the discriminator's head width; the largest head count <= that which divides d_g
            heads = max(1, width // config.head_dim)
            heads = max(h for h in range(1, heads + 1) if width % h == 0)
        else:
            heads = self.generator_heads
            if width % heads:
                divisors = [h for h in range(1, width + 1) if width % h == 0]
                raise ValueError(f"Electra.generator_heads={heads!r} is invalid: the generator is {width} wide "
                                 f"(generator_width={self.generator_width} of d_model={config.d_model}), which "
                                 f"it must divide; choose from {divisors}")
        d_ff = max(1, round(config.d_ff * width / config.d_model))
        try:
            return config.replace(d_model=width, n_head=heads, n_kv_head=heads, d_ff=d_ff, tie_embeddings=False,
                                  head="linear")
        except ValueError as error:
            raise ValueError(f"Electra.generator_width={self.generator_width!r} / generator_heads="
                             f"{self.generator_heads!r} give no valid generator for this discriminator "
                             f"(width {width}, {heads} heads): {error}") from error

    def setup(self, model, seed: int = 0) -> None:
        """Build the generator (sharing ``model``'s token embedding) and the discriminator head, from ``seed``
        (torch's global RNG is left as it was). Calling it again builds them afresh for ``model``."""
        model = _config_holder(model)
        config = model.config
        generator_config = self.generator_config(config)
        parameter = model.token_embedding.weight
        with seeded(seed):
            generator = GPT(generator_config)  # inside seeded(): its weights come from the seed
            # replace the body's own vocabulary tables (never used) by the shared-embedding input and output
            generator.token_embedding = ProjectedEmbedding(model.token_embedding, generator_config.d_model)
            generator.lm_head = SharedEmbeddingDecoder(model.token_embedding, generator_config.d_model, config)
            head = DiscriminatorHead(config.d_model)
            for module in (generator.token_embedding.project, generator.lm_head.dense, head.dense,
                           head.dense_prediction):
                nn.init.normal_(module.weight, mean=0.0, std=config.init_std)
                nn.init.zeros_(module.bias)
        self.generator = generator.to(device=parameter.device, dtype=parameter.dtype)
        self.discriminator_head = head.to(device=parameter.device, dtype=parameter.dtype)

    def _check_setup(self, model) -> None:
        if self.generator is None:
            raise RuntimeError("Electra.setup(model) must run before the loss (the Trainer calls it): it builds "
                               "the generator and the discriminator head")
        if self.generator.token_embedding.shared is not model.token_embedding:
            raise RuntimeError("this Electra objective was set up for another model: its generator shares that "
                               "model's token embedding; call setup(model) for this one")

    def generator_parameters(self) -> int:
        """The generator's own parameters (the shared token embedding is the discriminator's, not counted)."""
        shared = {id(self.generator.token_embedding.shared.weight)}
        return sum(p.numel() for p in self.generator.parameters() if id(p) not in shared)

    # ------------------------------------------------------------------ the objective
    def corrupt(self, batch: torch.Tensor, vocab_size: int, generator=None) -> Corruption:
        """The generator's masked-LM view: inputs with [MASK] at 85% of the chosen positions, targets there."""
        tokens = batch[:, :-1]
        inputs, chosen = choose_and_mask(tokens, vocab_size, self.mask_ratio, generator)
        targets = tokens.masked_fill(~chosen, IGNORE)
        return Corruption(inputs=inputs, targets=targets, attention_mode="bidirectional", original=tokens)

    def discriminator_logits(self, model, ids: torch.Tensor, key_padding_mask=None) -> torch.Tensor:
        """(B, T) logits of "this token was replaced" from the discriminator ``model`` and this head."""
        holder = _config_holder(model)
        out = model(ids, attention_mode="bidirectional", key_padding_mask=key_padding_mask,
                    return_hidden_states=True)
        hidden = out.hidden_states[-1]  # the last block's output (post-norm: already normalized)
        if holder.config.norm_placement == "pre":
            hidden = holder.norm(hidden)  # pre-norm: the final norm, as before the LM head
        return self.discriminator_head(hidden)

    def losses(self, model, batch: torch.Tensor, generator=None) -> ElectraLosses:
        """One ELECTRA step on a clean batch, with every intermediate (``loss`` reduces it)."""
        rng = generator  # the interface's name for the random stream; self.generator is the network
        holder = _config_holder(model)
        self._check_setup(holder)
        c = self.corrupt(batch, self.tokenizer_vocab(holder), rng)
        chosen = c.scored
        generator_logits = self.generator(c.inputs, attention_mode="bidirectional").logits
        mlm = scored_cross_entropy(generator_logits, c.targets)
        with torch.no_grad():  # the sample is data for the discriminator: no gradient through sampling
            sampled = gumbel_max_sample(generator_logits[chosen].detach(), rng)
            corrupted = c.original.masked_scatter(chosen, sampled.to(c.original.dtype))
            is_replaced = replaced_token_labels(c.original, corrupted, chosen)
        logits = self.discriminator_logits(model, corrupted).float()
        scored = c.original != PAD_ID
        per_token = F.binary_cross_entropy_with_logits(logits, is_replaced.float(), reduction="none")
        discriminator_loss = (per_token * scored).sum() / max(int(scored.sum()), 1)
        return ElectraLosses(
            generator_loss=mlm.loss, discriminator_loss=discriminator_loss,
            total=mlm.loss + self.disc_weight * discriminator_loss, original=c.original,
            generator_inputs=c.inputs, chosen=chosen, corrupted=corrupted, is_replaced=is_replaced,
            discriminator_logits=logits, scored=scored, generator_accuracy=mlm.metrics["accuracy"],
        )

    def loss(self, model, batch: torch.Tensor, generator=None) -> ObjectiveOutput:
        parts = self.losses(model, batch, generator)
        with torch.no_grad():
            n_scored = int(parts.scored.sum())
            correct = ((parts.discriminator_logits > 0) == parts.is_replaced) & parts.scored
            metrics = {
                "generator_loss": float(parts.generator_loss.detach()),
                "discriminator_loss": float(parts.discriminator_loss.detach()),
                "generator_accuracy": parts.generator_accuracy,
                "replaced_fraction": float((parts.is_replaced & parts.scored).sum()) / max(n_scored, 1),
                "discriminator_accuracy": float(correct.sum()) / max(n_scored, 1),
            }
        return ObjectiveOutput(loss=parts.total, n_tokens=n_scored, metrics=metrics)

    def flops_per_token(self, model) -> int:
        """Training FLOPs per token: the discriminator's (GPT.flops_per_token, which counts its LM head too:
        GPT.forward computes it, unused), its head's, and the generator's: its GPT count covers the blocks,
        the input projection and the output dense layer; the product with the shared embedding matrix
        (V x d) is added here. Forward + backward = 3x forward, as GPT counts."""
        holder = _config_holder(model)
        self._check_setup(holder)
        config = holder.config
        head = 2 * sum(m.weight.numel() for m in self.discriminator_head.modules() if isinstance(m, nn.Linear))
        shared_output = 2 * config.vocab_size * config.d_model
        return holder.flops_per_token() + self.generator.flops_per_token() + 3 * (head + shared_output)


__all__ = ["Electra", "ElectraLosses", "DiscriminatorHead", "ProjectedEmbedding", "SharedEmbeddingDecoder",
           "choose_and_mask", "gumbel_max_sample", "replaced_token_labels"]
