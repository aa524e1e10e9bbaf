"""A minimal Mamba2 block: the state-space dual (SSD) layer (Dao & Gu 2024, "Transformers are SSMs").

Per head h (of ``n_head``) with head width P = d_inner / n_head and state size N:

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T,     y_t = C_t^T h_t + D x_t          (eq. 1-2, sec. 7)

with the selective (input-dependent) dt_t, B_t, C_t and a fixed A < 0 per head.
This is gated linear attention with a scalar gate per head (sec. 5-6):
q = C, k = B, v = dt x, log a = dt A, so the same chunked kernel computes it
(``recurrences.gla_chunked``). Around it, the Mamba2 block (sec. 7.1):

    [z, xBC, dt] = x W_in                  (expand 2: d_inner = 2 d_model; one group for B and C)
    xBC = SiLU(causal depthwise conv1d(xBC))   of width ``conv_kernel``, then split into x, B, C
    dt  = softplus(dt + dt_bias),   A = -exp(A_log)
    y   = SSD(x, dt, A, B, C) + D x
    out = RMSNorm(y * SiLU(z)) W_out       (the gated RMSNorm, norm after the gate)

Initialization (Mamba2): A ~ U[1, 16], dt log-uniform in [1e-3, 0.1] (dt_bias is
its inverse softplus), D = 1. The parameter layout follows transformers'
``Mamba2Mixer`` (in_proj order [z, xBC, dt], conv1d over xBC, dt_bias, A_log,
D, norm.weight), with ``proj`` for its ``out_proj``, so the two can be
compared weight for weight (tested). The cache holds the last conv_kernel - 1
conv inputs and the SSM state h: a fixed size, whatever the context.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION, AttentionContext
from .linear_attention import RecurrentCache, RecurrentMixer, decay_parameters
from .recurrences import gla_chunked, gla_mixing


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * SiLU(z)) * weight over the whole d_inner (Mamba2 with one group), in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gated = y.float() * F.silu(z.float())
        normed = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(z.dtype)


@ATTENTION.register("ssd")
class SSDMixer(RecurrentMixer):
    """Mamba2's SSD block. Its mixing matrix (``return_attentions``) is the SSM matrix without the D skip:
    y - D x = M x with M_ts = C_t^T B_s exp(A (dt_{s+1} + ... + dt_t)) dt_s for s <= t."""

    name = "ssd"
    expand = 2
    knobs = ("chunk_size", "ssm_state", "conv_kernel")

    def __init__(self, config, layer_index: int = 0):
        super().__init__(config, layer_index)
        d, H = config.d_model, config.n_head
        self.d_inner = self.expand * d
        self.ssm_head_dim = self.d_inner // H      # P
        self.state_size = config.ssm_state         # N
        self.kernel = config.conv_kernel
        self.conv_dim = self.d_inner + 2 * self.state_size
        self.in_proj = nn.Linear(d, self.d_inner + self.conv_dim + H, bias=config.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.kernel, groups=self.conv_dim, bias=True)
        self.A_log, self.dt_bias = decay_parameters(H)
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedRMSNorm(self.d_inner, eps=config.norm_eps)
        self.proj = nn.Linear(self.d_inner, d, bias=config.bias)

    def state_shape(self) -> tuple[int, int, int]:
        """h per head as a (N, P) matrix: keys B_t of width N, values dt_t x_t of width P."""
        return self.n_head, self.state_size, self.ssm_head_dim

    def new_cache(self, batch: int, max_len: int, device, dtype) -> RecurrentCache:
        cache = super().new_cache(batch, max_len, device, dtype)
        cache.conv = torch.zeros(batch, self.conv_dim, self.kernel - 1, device=device, dtype=dtype)
        return cache

    def cache_bytes(self, context: int, element_size: int) -> int:
        """The SSM state (heads * N * P) plus the conv inputs (conv_dim * (kernel - 1)), whatever the context."""
        return super().cache_bytes(context, element_size) + self.conv_dim * (self.kernel - 1) * element_size

    def causal_conv(self, xBC: torch.Tensor, cache: Optional[RecurrentCache]) -> torch.Tensor:
        """Depthwise conv over time of (B, T, channels), reading the cached last kernel - 1 inputs (zeros at the
        start of a sequence); the cache then keeps this call's last kernel - 1 inputs."""
        u = xBC.transpose(1, 2)
        past = cache.conv if cache is not None else u.new_zeros(u.shape[0], self.conv_dim, self.kernel - 1)
        full = torch.cat((past.to(u.dtype), u), dim=-1)
        if cache is not None:
            cache.conv.copy_(full[..., full.shape[-1] - (self.kernel - 1):])
        return F.conv1d(full, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, cache: Optional[RecurrentCache] = None,
                cache_start: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        self.check_inputs(ctx, cache)
        B, T, _ = x.shape
        H, N = self.n_head, self.state_size
        z, xBC, dt = self.in_proj(x).split((self.d_inner, self.conv_dim, H), dim=-1)
        xBC = F.silu(self.causal_conv(xBC, cache))
        xs, B_t, C_t = xBC.split((self.d_inner, N, N), dim=-1)
        weights = None
        with self.full_precision(x):
            dt = F.softplus(dt.float() + self.dt_bias).transpose(1, 2)      # (B, H, T)
            A = -self.A_log.exp()                                          # (H,), < 0
            log_decay = (dt * A[:, None])[..., None]                       # log a_t = dt_t A, (B, H, T, 1)
            xs = self.heads(xs)                                            # (B, H, T, P)
            k = B_t.float()[:, None].expand(B, H, T, N)                    # one group: every head reads B_t, C_t
            q = C_t.float()[:, None].expand(B, H, T, N)
            if ctx.need_weights:
                weights = gla_mixing(q, k, log_decay) * dt[:, :, None, :]   # column s times dt_s
                y = weights @ xs
            else:
                initial = cache.state if cache is not None else None
                y, state = gla_chunked(q, k, xs * dt[..., None], log_decay, self.chunk_size, initial)
                if cache is not None:
                    cache.state.copy_(state)
            y = y + self.D[:, None, None] * xs
        y = y.to(x.dtype).transpose(1, 2).reshape(B, T, self.d_inner)
        return self.proj(self.norm(y, z)), weights

    def attention_flops_per_token(self, context: int) -> int:
        """Recurrent form, per head: decay, update B (dt x)^T and read h^T C (2 N P each, decay N P) plus
        the D skip (2 P); and the depthwise conv, 2 * conv_dim * kernel."""
        P, N = self.ssm_head_dim, self.state_size
        return self.n_head * (5 * N * P + 2 * P) + 2 * self.conv_dim * self.kernel
