"""Linear probes: is a property linearly readable from a frozen model's hidden states?

Freeze the model, take the representation h(x) in R^d of every example (the
residual stream at one position, or averaged over positions, after a chosen
layer), and fit a multinomial logistic regression on it (Alain & Bengio
2016, "Understanding intermediate layers using linear classifier probes"):

    p(y = k | x) = softmax(W^T z(x) + b)_k,     z = (h - mean) / std  (train statistics)

    min_{W, b}  -(1/n) sum_i log p(y_i | x_i)  +  (l2 / 2) ||W||^2

The objective is convex (strictly, in W, for l2 > 0), so it has one
minimum: it is found with Newton's method from W = 0, b = 0 in float64,
which makes the fit deterministic (no seed, no batches, no learning rate)
and fast (tens of milliseconds for thousands of examples in tens of
dimensions). High held-out accuracy
means the model's representation makes the property linearly available;
chance accuracy on a control (shuffled labels) shows the probe itself does
not memorize.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..data.tokenizers import PAD_ID
from ..validation import check_int, check_positive


def representation(model, ids: torch.Tensor, attention_mode: str, position: Optional[torch.Tensor] = None,
                   layer: int = -1) -> torch.Tensor:
    """Hidden states (B, d) of ``ids`` after ``layer``, with gradients (the model runs as it is set).

    ``layer`` indexes ``model(..., return_hidden_states=True).hidden_states``: 0 is the embedding
    output, i the output of block i, -1 the last block's output (before the final norm and the head).
    ``position`` (B,) picks one position per row; None averages over the positions that are not [PAD].
    """
    out = model(ids, attention_mode=attention_mode, return_hidden_states=True)
    states = out.hidden_states
    if not -len(states) <= layer < len(states):
        raise ValueError(f"features: layer={layer!r} is invalid: this model has {len(states)} hidden states "
                         f"(0 = embeddings, 1..{len(states) - 1} = blocks), so layer must lie in "
                         f"[{-len(states)}, {len(states) - 1}]")
    hidden = states[layer]
    if position is None:
        real = (ids != PAD_ID).to(hidden.dtype).unsqueeze(-1)
        return (hidden * real).sum(1) / real.sum(1).clamp_min(1.0)
    position = torch.as_tensor(position, dtype=torch.long, device=hidden.device)
    if position.shape != (ids.shape[0],):
        raise ValueError(f"features: position has shape {tuple(position.shape)}; it must be one index per row, "
                         f"shape ({ids.shape[0]},)")
    return hidden[torch.arange(ids.shape[0], device=hidden.device), position]


@torch.no_grad()
def features(model, ids: torch.Tensor, attention_mode: str = "bidirectional", position: Optional[torch.Tensor] = None,
             layer: int = -1, batch_size: int = 256) -> torch.Tensor:
    """Frozen representations (n, d), float32 on the CPU: the model in eval mode, no gradients.

    ``position`` None: the mean over each row's non-[PAD] positions; a (n,) tensor: that position of each
    row (e.g. the [MASK]). ``layer``: which hidden state (0 embeddings, -1 the last block's output).
    The model's train/eval mode is restored afterwards.
    """
    check_int("features", "batch_size", batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, ids.shape[0], batch_size):
            rows = ids[start:start + batch_size].to(device)
            where = None if position is None else torch.as_tensor(position)[start:start + batch_size].to(device)
            chunks.append(representation(model, rows, attention_mode, where, layer).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, model.config.d_model)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 l2: float = 1e-3, max_iter: int = 50) -> float:
    """Fit the L2-regularized logistic regression above on (train_x, train_y); its accuracy on the test set.

    Features are standardized with the training set's mean and standard deviation (a constant
    feature is left at 0). Labels are 0..C-1; C is the largest label seen plus one (at least 2).
    """
    check_positive("linear_probe", "l2", l2)
    check_int("linear_probe", "max_iter", max_iter)
    train_x, test_x = _as_matrix("train_x", train_x), _as_matrix("test_x", test_x)
    train_y, test_y = _as_labels("train_y", train_y, train_x), _as_labels("test_y", test_y, test_x)
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"linear_probe: train_x has {train_x.shape[1]} features and test_x {test_x.shape[1]}; "
                         "they must match")
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    n_classes = max(2, int(max(train_y.max(), test_y.max())) + 1)
    theta = fit_logistic_regression((train_x - mean) / std, train_y, n_classes, l2, max_iter)
    predicted = logistic_logits((test_x - mean) / std, theta).argmax(-1)
    return float((predicted == test_y).double().mean())


def logistic_logits(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Logits (n, C) of the model ``theta`` ((d + 1, C - 1): weights, then biases; class 0's logit is 0)."""
    scores = z @ theta[:-1] + theta[-1]
    return torch.cat([torch.zeros(z.shape[0], 1, dtype=scores.dtype), scores], dim=1)


def fit_logistic_regression(z: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float,
                            max_iter: int = 50) -> torch.Tensor:
    """The minimizer of mean cross entropy + (l2 / 2) ||W||^2, by Newton's method with a backtracking line search.

    Class 0's logit is fixed at 0 (softmax is unchanged by adding one number to every logit, so this
    loses nothing), which leaves (d + 1)(C - 1) parameters; the biases are not penalized. With
    p = softmax(logits) and a = [z, 1], the gradient and Hessian are

        g_k = (1/n) sum_i a_i (p_ik - [y_i = k]) + l2 w_k
        H_kl = (1/n) sum_i p_ik ([k = l] - p_il) a_i a_i^T + l2 [k = l] I_w

    for k, l = 1..C-1. The objective is convex and Newton's method converges quadratically near the
    minimum: a few tens of (d + 1)(C - 1)-sized solves, from theta = 0, deterministically.
    """
    n, d = z.shape
    free = n_classes - 1
    augmented = torch.cat([z, torch.ones(n, 1, dtype=z.dtype)], dim=1)
    onehot = F.one_hot(y, n_classes).to(z.dtype)[:, 1:]
    penalty = torch.full((d + 1,), l2, dtype=z.dtype)
    penalty[-1] = 1e-10 * l2  # the bias: unpenalized, up to a ridge that keeps H invertible
    theta = torch.zeros(d + 1, free, dtype=z.dtype)

    def objective(t: torch.Tensor) -> torch.Tensor:
        logits = logistic_logits(z, t)
        return F.cross_entropy(logits, y) + 0.5 * (penalty[:, None] * t ** 2).sum()

    value = objective(theta)
    for _ in range(max_iter):
        p = torch.softmax(logistic_logits(z, theta), dim=1)[:, 1:]                # (n, C-1)
        gradient = augmented.T @ (p - onehot) / n + penalty[:, None] * theta     # (d+1, C-1)
        if float(gradient.abs().max()) < 1e-10:
            break
        hessian = torch.zeros(free, d + 1, free, d + 1, dtype=z.dtype)
        for k in range(free):
            for j in range(k, free):
                weight = p[:, k] * ((1.0 if k == j else 0.0) - p[:, j])
                block = (augmented * weight[:, None]).T @ augmented / n
                if k == j:
                    block = block + torch.diag(penalty)
                hessian[k, :, j] = block
                hessian[j, :, k] = block.T
        flat_gradient = gradient.T.reshape(-1)                                     # ordered (class, feature)
        step = torch.linalg.solve(hessian.reshape(free * (d + 1), -1), flat_gradient).reshape(free, d + 1).T
        size = 1.0
        while True:  # backtracking (Armijo): accept the first step size that decreases the objective enough
            candidate = theta - size * step
            new_value = objective(candidate)
            if new_value <= value - 1e-4 * size * float(flat_gradient @ step.T.reshape(-1)) or size < 1e-8:
                break
            size *= 0.5
        if float(value - new_value) <= 0.0:
            break
        theta, value = candidate, new_value
    return theta


def _as_matrix(name: str, x) -> torch.Tensor:
    x = torch.as_tensor(x).detach().cpu().to(torch.float64)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"linear_probe: {name} has shape {tuple(x.shape)}; it must be (n_examples, n_features) "
                         "with n_examples >= 1")
    return x


def _as_labels(name: str, y, x: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(y).detach().cpu().long()
    if y.shape != (x.shape[0],) or bool((y < 0).any()):
        raise ValueError(f"linear_probe: {name} must be {x.shape[0]} class indices >= 0 (one per row), "
                         f"got shape {tuple(y.shape)}")
    return y


__all__ = ["features", "fit_logistic_regression", "linear_probe", "logistic_logits", "representation"]
