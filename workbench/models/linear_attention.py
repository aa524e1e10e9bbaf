"""Attention without a softmax: linear attention, gated linear attention, the gated delta rule.

Softmax attention keeps every past key and value (the KV cache grows with
the context). Drop the softmax and the sum over the past factors into a
fixed-size state S = sum_s k_s v_s^T per head, updated once per token:
training runs the chunked form, generation the recurrence, and the cache is
S alone, whatever the context (``recurrences.py`` holds the math).

* ``linear`` (Katharopoulos et al. 2020, "Transformers are RNNs", eq. 4-6):
  phi(x) = elu(x) + 1 and o_t = S_t^T phi(q_t) / (z_t^T phi(q_t)) with
  S_t = S_{t-1} + phi(k_t) v_t^T and z_t = z_{t-1} + phi(k_t). z is the same
  recurrence with v = 1, so it rides along as one extra value column; the
  mixing matrix is then row-stochastic, like softmax attention's.
* ``gla`` (Yang et al. 2024, "Gated Linear Attention Transformers with
  Hardware-Efficient Training", eq. 3 and sec. 4.4): S_t = diag(a_t) S_{t-1}
  + k_t v_t^T with a data-dependent forget gate per key channel,
  a_t = sigmoid(x_t W_1 W_2 + b)^(1/tau), W_1 W_2 of rank 16, tau = 16;
  q scaled by d_k^-1/2; output = (RMSNorm_head(o_t) * swish(x_t W_r)) W_o.
* ``delta`` (the delta rule of Yang et al. 2024, "Parallelizing Linear
  Transformers with the Delta Rule over Sequence Length", gated as in
  Gated DeltaNet, Yang et al. 2025, eq. 10):
  S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T with L2-normalized
  q and k (q then scaled by d_k^-1/2, as in their code), beta_t =
  sigmoid(x_t W_beta), and Mamba2's scalar decay per head,
  a_t = exp(-exp(A_log) * softplus(x_t W_a + dt_bias)). Output as in GLA
  (per-head RMSNorm, swish output gate). We leave out the papers' short
  convolutions on q, k, v to keep the block minimal. ``gated = False`` gives
  plain DeltaNet (a_t = 1).

All three are multi-head with d_k = d_v = head_dim (GLA's paper halves d_k;
we keep the state as wide as softmax attention's head), and run only causally:
a recurrence reads tokens left to right, and it needs no position encoding.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION, AttentionContext
from .norms import RMSNorm
from .recurrences import delta_rule_chunked, delta_rule_mixing, gla_chunked, gla_mixing


class RecurrentCache:
    """One layer's generation state: a fixed-size matrix per head (plus, for ssd, the convolution's inputs)."""

    def __init__(self, state: torch.Tensor, conv: Optional[torch.Tensor] = None):
        self.state = state  # (B, H, d_k, d_v)
        self.conv = conv    # (B, channels, kernel - 1) or None

    def nbytes(self) -> int:
        return self.state.nbytes + (self.conv.nbytes if self.conv is not None else 0)


class RecurrentMixer(nn.Module):
    """What the recurrent variants share: the contract's class attributes, the cache, float32 math."""

    positions = ("none", "learned")
    position_note = ("it has no query-key score matrix for RoPE to rotate or ALiBi to bias, and its recurrence "
                     "already reads the tokens in order.")
    modes = ("causal",)
    mode_note = "a recurrence reads the tokens left to right, so no token can see a later one"
    grouped_kv = False
    knobs: tuple[str, ...] = ("chunk_size",)

    def __init__(self, config, layer_index: int = 0):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.chunk_size = config.chunk_size

    def state_shape(self) -> tuple[int, int, int]:
        """(heads, d_k, d_v) of the recurrent state."""
        return self.n_head, self.head_dim, self.head_dim

    def new_cache(self, batch: int, max_len: int, device, dtype) -> RecurrentCache:
        """The state does not grow with the context, so ``max_len`` does not matter."""
        return RecurrentCache(torch.zeros((batch,) + self.state_shape(), device=device, dtype=dtype))

    def cache_bytes(self, context: int, element_size: int) -> int:
        """heads * d_k * d_v numbers, whatever the context."""
        return math.prod(self.state_shape()) * element_size

    def check_inputs(self, ctx: AttentionContext, cache) -> None:
        """What a recurrence cannot do, as one clear error each: a mixing matrix over a cached past, and
        padding anywhere but at the right end (pads on the right are never read by earlier tokens)."""
        padding = ctx.key_padding
        if padding is not None and (padding[:, 1:].bool() & ~padding[:, :-1].bool()).any():
            raise ValueError(
                f"attention={self.name!r} cannot mask padded tokens: its state would read them. Pad on the right "
                "(a causal recurrence never reads later tokens) or run the rows separately"
            )
        if ctx.need_weights and cache is not None:
            raise ValueError(
                f"return_attentions=True is not possible with a cache for attention={self.name!r}: the past lives "
                "in a fixed-size state, not as one entry per token; run the whole sequence without a cache"
            )

    @staticmethod
    def full_precision(x: torch.Tensor):
        """Run the recurrence in float32 even under autocast: decays multiply up over many tokens."""
        return torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) \
            else nullcontext()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H * d) -> (B, H, T, d) in float32."""
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, -1).transpose(1, 2).float()


def decay_parameters(n_head: int, a_range=(1.0, 16.0), dt_range=(1e-3, 0.1), dt_floor=1e-4):
    """Mamba2's initialization of a per-head decay exp(-A dt): A ~ U[1, 16], stored as A_log = log A,
    and dt log-uniform in [1e-3, 0.1], stored as dt_bias = softplus^{-1}(dt) = dt + log(1 - exp(-dt))."""
    A = torch.empty(n_head).uniform_(*a_range)
    dt = torch.exp(torch.rand(n_head) * (math.log(dt_range[1]) - math.log(dt_range[0])) + math.log(dt_range[0]))
    dt = dt.clamp(min=dt_floor)
    return nn.Parameter(A.log()), nn.Parameter(dt + torch.log(-torch.expm1(-dt)))


@ATTENTION.register("linear")
class LinearAttention(RecurrentMixer):
    """Causal linear attention with phi = elu + 1 and the normalizer z (Katharopoulos et al. 2020, eq. 4-6)."""

    name = "linear"
    eps = 1e-6  # floor of the normalizer z_t^T phi(q_t) (> 0 anyway, as phi > 0)

    def __init__(self, config, layer_index: int = 0):
        super().__init__(config, layer_index)
        d = config.d_model
        self.qkv = nn.Linear(d, 3 * d, bias=config.bias)
        self.proj = nn.Linear(d, d, bias=config.bias)

    def state_shape(self) -> tuple[int, int, int]:
        """S and z side by side: d_v + 1 columns."""
        return self.n_head, self.head_dim, self.head_dim + 1

    def forward(self, x: torch.Tensor, ctx: AttentionContext, cache: Optional[RecurrentCache] = None,
                cache_start: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        self.check_inputs(ctx, cache)
        B, T, C = x.shape
        q, k, v = (self.heads(t) for t in self.qkv(x).split(C, dim=-1))
        weights = None
        with self.full_precision(x):
            phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
            if ctx.need_weights:
                scores = gla_mixing(phi_q, phi_k)                          # phi(q_t) . phi(k_s), s <= t
                weights = scores / scores.sum(-1, keepdim=True).clamp_min(self.eps)
                out = weights @ v
            else:
                ones = torch.ones_like(v[..., :1])                         # v = 1 gives z_t^T phi(q_t)
                initial = cache.state if cache is not None else None
                both, state = gla_chunked(phi_q, phi_k, torch.cat((v, ones), -1), None, self.chunk_size, initial)
                out = both[..., :-1] / both[..., -1:].clamp_min(self.eps)
                if cache is not None:
                    cache.state.copy_(state)
        out = out.to(x.dtype).transpose(1, 2).reshape(B, T, C)
        return self.proj(out), weights

    def attention_flops_per_token(self, context: int) -> int:
        """Recurrent form, per head: update phi(k) [v, 1]^T and read S^T phi(q), 2 * d_k * (d_v + 1) each."""
        return self.n_head * 2 * 2 * self.head_dim * (self.head_dim + 1)


class _GatedOutput(nn.Module):
    """GLA's and Gated DeltaNet's output: (RMSNorm over each head's d_v (o_t) * swish(x_t W_r)) W_o."""

    def __init__(self, config):
        super().__init__()
        self.head_norm = RMSNorm(config.head_dim, eps=config.norm_eps)
        self.gate = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, H, T, d = out.shape
        normed = self.head_norm(out).to(x.dtype).transpose(1, 2).reshape(B, T, H * d)
        return normed * F.silu(self.gate(x))


@ATTENTION.register("gla")
class GatedLinearAttention(RecurrentMixer):
    """Gated linear attention (Yang et al. 2024): a forget gate per key channel, computed in log space."""

    name = "gla"
    gate_rank = 16   # low-rank gate projection W_1 W_2 (paper: 16)
    tau = 16.0       # a = sigmoid(.)^(1/tau): log a = logsigmoid(.) / tau keeps the gates near 1

    def __init__(self, config, layer_index: int = 0):
        super().__init__(config, layer_index)
        d = config.d_model
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.gate_down = nn.Linear(d, self.gate_rank, bias=False)
        self.gate_up = nn.Linear(self.gate_rank, d, bias=True)   # its bias is b_alpha
        self.output = _GatedOutput(config)
        self.proj = nn.Linear(d, d, bias=config.bias)

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """log a_t = logsigmoid(x_t W_1 W_2 + b) / tau, (B, H, T, d_k), always <= 0."""
        return self.heads(F.logsigmoid(self.gate_up(self.gate_down(x)).float()) / self.tau)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, cache: Optional[RecurrentCache] = None,
                cache_start: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        self.check_inputs(ctx, cache)
        q, k, v = (self.heads(t) for t in self.qkv(x).split(x.shape[-1], dim=-1))
        weights = None
        with self.full_precision(x):
            q = q * self.head_dim ** -0.5
            log_decay = self.log_decay(x)
            if ctx.need_weights:
                weights = gla_mixing(q, k, log_decay)
                out = weights @ v
            else:
                initial = cache.state if cache is not None else None
                out, state = gla_chunked(q, k, v, log_decay, self.chunk_size, initial)
                if cache is not None:
                    cache.state.copy_(state)
        return self.proj(self.output(out, x)), weights

    def attention_flops_per_token(self, context: int) -> int:
        """Recurrent form, per head: decay diag(a) S (d_k d_v), update k v^T and read S^T q (2 d_k d_v each)."""
        return self.n_head * 5 * self.head_dim * self.head_dim


@ATTENTION.register("delta")
class GatedDeltaNet(RecurrentMixer):
    """The gated delta rule (Gated DeltaNet, Yang et al. 2025); ``gated = False``: plain DeltaNet (Yang et al. 2024)."""

    name = "delta"
    gated = True

    def __init__(self, config, layer_index: int = 0):
        super().__init__(config, layer_index)
        d, H = config.d_model, config.n_head
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.beta_proj = nn.Linear(d, H, bias=False)
        self.decay_proj = nn.Linear(d, H, bias=False)      # Mamba2's dt projection, one per head
        self.A_log, self.dt_bias = decay_parameters(H)
        self.output = _GatedOutput(config)
        self.proj = nn.Linear(d, d, bias=config.bias)

    def log_decay(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """log a_t = -exp(A_log) * softplus(x_t W_a + dt_bias), (B, H, T); None when not ``gated``."""
        if not self.gated:
            return None
        dt = F.softplus(self.decay_proj(x).float() + self.dt_bias)
        return (-self.A_log.exp() * dt).transpose(1, 2)

    def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (L2-normalized, then scaled by d_k^-1/2), k (L2-normalized), v: (B, H, T, d); beta (B, H, T)."""
        q, k, v = (self.heads(t) for t in self.qkv(x).split(x.shape[-1], dim=-1))
        q = F.normalize(q, dim=-1, eps=1e-6) * self.head_dim ** -0.5
        k = F.normalize(k, dim=-1, eps=1e-6)
        beta = torch.sigmoid(self.beta_proj(x).float()).transpose(1, 2)
        return q, k, v, beta

    def forward(self, x: torch.Tensor, ctx: AttentionContext, cache: Optional[RecurrentCache] = None,
                cache_start: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        self.check_inputs(ctx, cache)
        weights = None
        with self.full_precision(x):
            q, k, v, beta = self.inputs(x)
            log_decay = self.log_decay(x)
            if ctx.need_weights:
                weights = delta_rule_mixing(q, k, beta, log_decay)
                out = weights @ v
            else:
                initial = cache.state if cache is not None else None
                out, state = delta_rule_chunked(q, k, v, beta, log_decay, self.chunk_size, initial)
                if cache is not None:
                    cache.state.copy_(state)
        return self.proj(self.output(out, x)), weights

    def attention_flops_per_token(self, context: int) -> int:
        """Recurrent form, per head: decay a S (d_k d_v, if gated), predict S^T k, update k delta^T and
        read S^T q (2 d_k d_v each)."""
        return self.n_head * (7 if self.gated else 6) * self.head_dim * self.head_dim
