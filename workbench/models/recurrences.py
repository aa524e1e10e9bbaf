"""Linear-recurrent token mixing: the math only, as pure functions on tensors.

Every mixer here keeps a matrix state S (d_k x d_v) per head and reads it
with the query:

    gated linear attention   S_t = diag(a_t) S_{t-1} + k_t v_t^T,      o_t = S_t^T q_t
    (gated) delta rule       S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t

Each comes three ways: the obvious token-by-token loop (``*_recurrent``,
kept as the test oracle, like flash-linear-attention's ``naive.py``), the
chunked form that trains fast (``*_chunked``: matrix products inside a chunk
of C tokens, the recurrence only from chunk to chunk), and the (T x T)
token-mixing matrix M with o = M v from a zero state (``*_mixing``), the
recurrent counterpart of softmax attention's probabilities.

Shapes: q, k (B, H, T, d_k); v (B, H, T, d_v); state (B, H, d_k, d_v).
Gates are given in log space, log a_t <= 0. Inside a chunk only differences
of cumulative log gates g_t - g_s (s <= t, so <= 0) are exponentiated, never
a large positive number, so strong decay cannot overflow.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# ---------------------------------------------------------------- helpers
def _pairwise_decay(g: Tensor) -> Tensor:
    """exp(g_t - g_s) for s <= t and 0 for s > t: g (..., T, d) -> (..., T, T, d).

    The entries above the diagonal are set to -inf *before* exp: they are
    positive and could overflow (and would poison the gradient with inf * 0).
    """
    T = g.shape[-2]
    diff = g[..., :, None, :] - g[..., None, :, :]
    future = torch.ones(T, T, dtype=torch.bool, device=g.device).triu(1)
    return diff.masked_fill(future[:, :, None], float("-inf")).exp()


SUB_CHUNK = 8  # secondary chunk for per-channel gates (GLA paper, section 4.2)


def _decayed_scores(q: Tensor, k: Tensor, g: Tensor) -> Tensor:
    """scores_ts = sum_i q_ti k_si exp(g_ti - g_si) for s <= t, else 0: (..., T, d_k) -> (..., T, T).

    A gate per head (g of width 1) factors out of the sum: (q k^T) * exp(g_t - g_s).
    A gate per key channel does not. Between tokens of different sub-chunks of ``SUB_CHUNK``
    tokens it factors at a boundary b between them (s <= b < t):
    exp(g_t - g_s) = exp(g_t - g_b) exp(g_b - g_s), both factors <= 1, so one matrix product per
    pair of sub-chunks serves; only inside a sub-chunk do we form the (c, c, d_k) product. Exact,
    stable, and SUB_CHUNK times less memory than the (T, T, d_k) product (GLA, Yang et al. 2024, 4.2).
    """
    if g.shape[-1] == 1:
        return (q @ k.transpose(-1, -2)) * _pairwise_decay(g)[..., 0]
    T, c = q.shape[-2], SUB_CHUNK
    if T <= c or T % c:
        return (q[..., :, None, :] * k[..., None, :, :] * _pairwise_decay(g)).sum(-1)
    S = T // c
    qs, ks, gs = (x.reshape(x.shape[:-2] + (S, c, x.shape[-1])) for x in (q, k, g))   # (..., S, c, d_k)
    inside = (qs[..., :, None, :] * ks[..., None, :, :] * _pairwise_decay(gs)).sum(-1)  # (..., S, c, c)
    # boundary of target sub-chunk i: its first token (after every s of an earlier sub-chunk, <= every t in i)
    g_b = gs[..., :, :1, :]                                                             # (..., S, 1, d_k)
    q_in = qs * (gs - g_b).exp()                                                        # exp(g_t - g_b) <= 1
    earlier = torch.ones(S, S, dtype=torch.bool, device=g.device).tril(-1)             # j < i
    to_b = (g_b[..., :, None, :, :] - gs[..., None, :, :, :])                          # (..., S_i, S_j, c, d_k)
    k_in = ks[..., None, :, :, :] * to_b.masked_fill(~earlier[:, :, None, None], float("-inf")).exp()
    across = q_in[..., :, None, :, :] @ k_in.transpose(-1, -2)                         # (..., S_i, S_j, c, c)
    eye = torch.eye(S, dtype=torch.bool, device=g.device)[:, :, None, None]
    blocks = torch.where(eye, inside[..., :, None, :, :], across)                       # (..., S, S, c, c)
    return blocks.transpose(-3, -2).reshape(q.shape[:-2] + (T, T))


def _chunks(x: Tensor, size: int) -> Tensor:
    """(B, H, T, ...) -> (B, H, n_chunks, size, ...), zero-padded at the end of time."""
    T = x.shape[2]
    pad = (-T) % size
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.reshape(x.shape[:2] + (-1, size) + x.shape[3:])


def _initial(state: Optional[Tensor], q: Tensor, d_v: int) -> Tensor:
    B, H, _, d_k = q.shape
    return q.new_zeros(B, H, d_k, d_v) if state is None else state.to(q.dtype)


# ---------------------------------------------------------------- gated linear attention
def gla_recurrent(q: Tensor, k: Tensor, v: Tensor, log_decay: Optional[Tensor] = None,
                  initial_state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Gated linear attention, one token at a time (Yang et al. 2024, "Gated Linear Attention
    Transformers with Hardware-Efficient Training", eq. 3):

        S_t = diag(a_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t.

    ``log_decay`` = log a_t: (B, H, T, d_k) per key channel (GLA), (B, H, T, 1) per head (Mamba2's
    SSD with q = C, k = B, v = dt x, log a = dt A), or None: a_t = 1, plain linear attention
    (Katharopoulos et al. 2020, eq. 6 numerator). Returns the outputs (B, H, T, d_v) and S_T.
    """
    state = _initial(initial_state, q, v.shape[-1]).clone()
    outputs = []
    for t in range(q.shape[2]):
        if log_decay is not None:
            state = state * log_decay[:, :, t, :, None].exp()            # diag(a_t) S_{t-1}: row i times a_t,i
        state = state + k[:, :, t, :, None] * v[:, :, t, None, :]        # + k_t v_t^T
        outputs.append((q[:, :, t, :, None] * state).sum(-2))            # S_t^T q_t
    return torch.stack(outputs, dim=2), state


def gla_chunked(q: Tensor, k: Tensor, v: Tensor, log_decay: Optional[Tensor] = None, chunk_size: int = 64,
                initial_state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The same recurrence, chunk by chunk (GLA paper, section 3.3; Mamba2's SSD, Dao & Gu 2024, sec. 6).

    Within a chunk starting from state S0, with g_t the cumulative log gate from the chunk start,

        o_t   = (q_t * exp(g_t))^T S0  +  sum_{s <= t} [sum_i q_ti k_si exp(g_ti - g_si)] v_s
        S_end = diag(exp(g_C)) S0      +  sum_s (k_s * exp(g_C - g_s)) v_s^T

    so only the C-step hand-over from chunk to chunk is sequential. T need not be a multiple of C
    (zero padding: k = v = 0 and log a = 0 change nothing).
    """
    B, H, T, _ = q.shape
    size = max(1, min(chunk_size, T))
    if log_decay is None:
        log_decay = q.new_zeros(q.shape[:-1] + (1,))
    g = _chunks(log_decay, size).cumsum(-2)                              # (B, H, N, C, d_k or 1)
    q, k, v = (_chunks(x, size) for x in (q, k, v))
    intra = _decayed_scores(q, k, g) @ v                                 # within the chunk
    q_in = q * g.exp()                                                   # reads S0 decayed up to t
    k_out = k * (g[..., -1:, :] - g).exp()                               # k_s decayed to the chunk end
    chunk_decay = g[..., -1, :, None].exp()                              # (B, H, N, d_k or 1, 1)
    state = _initial(initial_state, q[:, :, 0], v.shape[-1])
    outputs = []
    for n in range(q.shape[2]):
        outputs.append(intra[:, :, n] + q_in[:, :, n] @ state)
        state = chunk_decay[:, :, n] * state + k_out[:, :, n].transpose(-1, -2) @ v[:, :, n]
    out = torch.stack(outputs, dim=2).reshape(B, H, -1, v.shape[-1])[:, :, :T]
    return out, state


def gla_mixing(q: Tensor, k: Tensor, log_decay: Optional[Tensor] = None) -> Tensor:
    """M (B, H, T, T) with o = M v from a zero state: M_ts = sum_i q_ti k_si prod_{r=s+1..t} a_r,i for s <= t."""
    g = torch.zeros_like(q[..., :1]) if log_decay is None else log_decay.cumsum(-2)
    return _decayed_scores(q, k, g)


# ---------------------------------------------------------------- the (gated) delta rule
def delta_rule_recurrent(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Optional[Tensor] = None,
                         initial_state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The delta rule (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with the
    Delta Rule over Sequence Length", eq. 1), gated (Yang et al. 2025, "Gated Delta Networks", eq. 10):

        S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T,   o_t = S_t^T q_t,

    i.e. S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T: the state first predicts v_t
    from k_t, then moves its prediction a step beta_t towards v_t. ``beta`` (B, H, T) in [0, 1];
    ``log_decay`` (B, H, T) = log a_t, one scalar per head, or None: plain DeltaNet (a_t = 1).
    """
    state = _initial(initial_state, q, v.shape[-1]).clone()
    outputs = []
    for t in range(q.shape[2]):
        if log_decay is not None:
            state = state * log_decay[:, :, t, None, None].exp()         # a_t S_{t-1}
        k_t = k[:, :, t]
        prediction = (k_t[..., None] * state).sum(-2)                   # (a_t S_{t-1})^T k_t
        delta = beta[:, :, t, None] * (v[:, :, t] - prediction)         # beta_t (v_t - prediction)
        state = state + k_t[..., None] * delta[..., None, :]             # + k_t delta^T
        outputs.append((q[:, :, t, :, None] * state).sum(-2))            # S_t^T q_t
    return torch.stack(outputs, dim=2), state


def _delta_rule_system(k: Tensor, beta: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """The unit lower-triangular I + diag(beta) (tril(K K^T, -1) * Gamma) and Gamma_sr = exp(g_s - g_r), r <= s."""
    gamma_pairs = _pairwise_decay(g[..., None])[..., 0]
    strictly_lower = ((k @ k.transpose(-1, -2)) * gamma_pairs).tril(-1)
    eye = torch.eye(k.shape[-2], dtype=k.dtype, device=k.device)
    return eye + beta[..., None] * strictly_lower, gamma_pairs


def delta_rule_chunked(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Optional[Tensor] = None,
                       chunk_size: int = 64, initial_state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The same recurrence, chunk by chunk (the WY / UT form of Yang et al. 2024, sec. 3.2).

    Write the update as S_s = a_s S_{s-1} + k_s Delta_s^T, Delta_s = beta_s (v_s - a_s S_{s-1}^T k_s).
    In a chunk with start state S0 and cumulative log decay g (gamma_s = exp(g_s)) unrolling gives
    a_s S_{s-1} = gamma_s S0 + sum_{r<s} exp(g_s - g_r) k_r Delta_r^T, hence the triangular system

        (I + diag(beta) (tril(K K^T, -1) * Gamma)) Delta = diag(beta) (V - diag(gamma) K S0),

    solved once per chunk for both right-hand sides (Delta = U - W S0), and then

        O     = diag(gamma) Q S0 + (tril(Q K^T) * Gamma) Delta,
        S_end = gamma_C S0 + sum_s exp(g_C - g_s) k_s Delta_s^T.
    """
    B, H, T, d_k = q.shape
    d_v = v.shape[-1]
    size = max(1, min(chunk_size, T))
    log_decay = torch.zeros_like(beta) if log_decay is None else log_decay
    q, k, v = (_chunks(x, size) for x in (q, k, v))
    beta, g = (_chunks(x[..., None], size)[..., 0] for x in (beta, log_decay))   # (B, H, N, C)
    g = g.cumsum(-1)
    gamma = g.exp()
    system, gamma_pairs = _delta_rule_system(k, beta, g)
    rhs = torch.cat((beta[..., None] * v, (beta * gamma)[..., None] * k), dim=-1)
    U, W = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True).split((d_v, d_k), -1)
    scores = (q @ k.transpose(-1, -2)) * gamma_pairs                    # tril(Q K^T) * Gamma
    q_in = q * gamma[..., None]
    k_out = k * (g[..., -1:] - g).exp()[..., None]
    chunk_decay = gamma[..., -1, None, None]
    state = _initial(initial_state, q[:, :, 0], d_v)
    outputs = []
    for n in range(q.shape[2]):
        delta = U[:, :, n] - W[:, :, n] @ state
        outputs.append(q_in[:, :, n] @ state + scores[:, :, n] @ delta)
        state = chunk_decay[:, :, n] * state + k_out[:, :, n].transpose(-1, -2) @ delta
    out = torch.stack(outputs, dim=2).reshape(B, H, -1, d_v)[:, :, :T]
    return out, state


def delta_rule_mixing(q: Tensor, k: Tensor, beta: Tensor, log_decay: Optional[Tensor] = None) -> Tensor:
    """M (B, H, T, T) with o = M v from a zero state: M = (tril(Q K^T) * Gamma) (I + A)^{-1} diag(beta),
    A = diag(beta) (tril(K K^T, -1) * Gamma): the chunked form with one chunk and S0 = 0."""
    g = (torch.zeros_like(beta) if log_decay is None else log_decay).cumsum(-1)
    system, gamma_pairs = _delta_rule_system(k, beta, g)
    solved = torch.linalg.solve_triangular(system, torch.diag_embed(beta), upper=False, unitriangular=True)
    return ((q @ k.transpose(-1, -2)) * gamma_pairs) @ solved
