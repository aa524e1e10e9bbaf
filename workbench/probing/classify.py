"""Classifying with a masked language model: zero-shot, PET-style fine-tuning, or a new head.

Each example is a window with one [MASK] at a known position m, and each
class k has a verbalizer token v_k (for the story gender task: "S" for
"She", "H" for "He"). Three ways to turn the model into a classifier:

1. Zero-shot generative classification (``generative_classify``): read the
   model's own distribution at the mask and compare the verbalizers,

       y_hat = argmax_k log p_theta(v_k | x~, m),

   with p_theta the softmax over the whole vocabulary. Nothing is trained.

2. PET-style fine-tuning (Schick & Schuetze 2021, "Exploiting cloze
   questions for few-shot text classification"; ``finetune_generative``):
   train the whole model with cross entropy restricted to the verbalizers,

       L = -(1/n) sum_i log softmax_k( logit_theta(v_k | x~_i, m_i) )_{y_i},

   so the MLM head is the classifier and fine-tuning starts from the
   zero-shot classifier (0 steps give exactly its predictions).

3. A new linear head (BERT-style fine-tuning, Devlin et al. 2019;
   ``finetune_linear_head``): p(y | x) = softmax(W h_m(x) + b) on the
   representation h_m at the mask, W and b fresh, the whole model trained.

Fine-tuning runs on a deep copy of the model (the caller's model is never
changed), with AdamW (Loshchilov & Hutter 2019) for a fixed number of
steps on minibatches drawn with a generator seeded by ``seed``; dropout
draws from torch's RNG seeded by ``seed`` too (restored afterwards), so
a call is a function of its arguments. Each returns the test accuracy.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_int, check_positive
from .linear_probe import representation


@torch.no_grad()
def generative_classify(model, ids: torch.Tensor, mask_positions: torch.Tensor, verbalizer_ids: Sequence[int],
                        attention_mode: str = "bidirectional", batch_size: int = 256):
    """Zero-shot: (predicted classes (n,), log p(v_k) at the mask (n, C)), with the model in eval mode.

    ``log_probs[i, k]`` is the model's log-probability of verbalizer token k at row i's mask, under
    its distribution over the whole vocabulary (so the rows sum to at most 1 in probability;
    ``log_probs.log_softmax(-1)`` renormalizes them over the classes). The prediction is their argmax,
    which only the verbalizers' logits decide.
    """
    check_int("generative_classify", "batch_size", batch_size)
    verbalizer = _verbalizer(verbalizer_ids, model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, ids.shape[0], batch_size):
            rows = ids[start:start + batch_size].to(device)
            where = torch.as_tensor(mask_positions)[start:start + batch_size].to(device)
            logits = _mask_logits(model, rows, where, attention_mode)
            chunks.append(logits.float().log_softmax(-1)[:, verbalizer.to(device)].cpu())
    finally:
        model.train(was_training)
    log_probs = torch.cat(chunks) if chunks else torch.zeros(0, len(verbalizer))
    return log_probs.argmax(-1), log_probs


def verbalizer_predictions(mask_logits: torch.Tensor, verbalizer_ids: Sequence[int]) -> torch.Tensor:
    """Each example's class from the logits at its [MASK] (N, V): the argmax over the class words' logits
    (``verbalizer_ids[k]`` is class k's word). The softmax over the vocabulary is monotone, so this is the
    argmax of the class words' probabilities too, as ``generative_classify`` computes them."""
    return mask_logits[:, list(verbalizer_ids)].argmax(-1)


def finetune_generative(model, train, test, verbalizer_ids: Sequence[int], attention_mode: str = "bidirectional",
                        steps: int = 100, lr: float = 1e-3, batch_size: int = 32, weight_decay: float = 0.01,
                        seed: int = 0) -> float:
    """PET-style: fine-tune a copy of the whole model on the verbalizers' cross entropy; its test accuracy.

    ``train`` and ``test`` are (ids, labels, mask_positions) triples (e.g. ``GenderExamples``).
    ``steps=0`` gives the zero-shot accuracy of ``generative_classify``.
    """
    _check_training("finetune_generative", steps, lr, batch_size, weight_decay, seed)
    verbalizer = _verbalizer(verbalizer_ids, model)
    tuned = copy.deepcopy(model)

    def loss(rows, labels, where):
        logits = _mask_logits(tuned, rows, where, attention_mode)[:, verbalizer.to(rows.device)]
        return F.cross_entropy(logits.float(), labels)

    _fit(tuned, [], loss, train, steps, lr, batch_size, weight_decay, seed)
    ids, labels, positions = test
    predicted, _ = generative_classify(tuned, ids, positions, verbalizer.tolist(), attention_mode)
    return _accuracy(predicted, labels)


def finetune_linear_head(model, train, test, n_classes: int = 2, attention_mode: str = "bidirectional",
                         layer: int = -1, steps: int = 100, lr: float = 1e-3, batch_size: int = 32,
                         weight_decay: float = 0.01, seed: int = 0) -> float:
    """A fresh Linear(d_model, n_classes) on the [MASK]-position state after ``layer``, trained with a copy of
    the whole model (cross entropy over the classes); its test accuracy.

    The head's initial weights are drawn from ``seed`` (nn.Linear's default init).
    """
    check_int("finetune_linear_head", "n_classes", n_classes, minimum=2)
    _check_training("finetune_linear_head", steps, lr, batch_size, weight_decay, seed)
    tuned = copy.deepcopy(model)
    device = next(tuned.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(tuned.config.d_model, n_classes).to(device)

    def loss(rows, labels, where):
        return F.cross_entropy(head(representation(tuned, rows, attention_mode, where, layer)).float(), labels)

    _fit(tuned, list(head.parameters()), loss, train, steps, lr, batch_size, weight_decay, seed)
    ids, labels, positions = test
    tuned.eval()
    with torch.no_grad():
        predicted = torch.cat([
            head(representation(tuned, ids[s:s + 256].to(device), attention_mode,
                                torch.as_tensor(positions)[s:s + 256].to(device), layer)).argmax(-1).cpu()
            for s in range(0, ids.shape[0], 256)])
    return _accuracy(predicted, labels)


# ---------------------------------------------------------------------------------------------- helpers
def _mask_logits(model, rows: torch.Tensor, where: torch.Tensor, attention_mode: str) -> torch.Tensor:
    """The logits (B, vocab) at each row's mask position."""
    logits = model(rows, attention_mode=attention_mode).logits
    return logits[torch.arange(rows.shape[0], device=logits.device), where]


def _fit(tuned, extra_params: list, loss_fn, train, steps, lr, batch_size, weight_decay, seed) -> None:
    """``steps`` AdamW steps on minibatches of ``train`` (drawn with replacement from a seeded generator)."""
    ids, labels, positions = (torch.as_tensor(t) for t in train)
    if ids.shape[0] == 0:
        raise ValueError("fine-tuning needs at least one training example")
    device = next(tuned.parameters()).device
    params = [p for p in tuned.parameters() if p.requires_grad] + list(extra_params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    devices = [device] if device.type == "cuda" else []
    tuned.train()
    with torch.random.fork_rng(devices=devices):  # dropout draws from a seeded RNG, restored afterwards
        torch.manual_seed(seed)
        for _ in range(steps):
            index = torch.randint(0, ids.shape[0], (min(batch_size, ids.shape[0]),), generator=generator)
            loss = loss_fn(ids[index].to(device), labels[index].to(device), positions[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    tuned.eval()


def _verbalizer(verbalizer_ids: Sequence[int], model) -> torch.Tensor:
    verbalizer = torch.as_tensor(list(verbalizer_ids), dtype=torch.long)
    vocab = model.config.vocab_size
    if verbalizer.dim() != 1 or len(verbalizer) < 2 or len(set(verbalizer.tolist())) != len(verbalizer) \
            or bool(((verbalizer < 0) | (verbalizer >= vocab)).any()):
        raise ValueError(f"verbalizer_ids={list(verbalizer_ids)!r} is invalid: it must be at least 2 distinct token "
                         f"ids in [0, {vocab}), one per class")
    return verbalizer


def _check_training(owner: str, steps, lr, batch_size, weight_decay, seed) -> None:
    check_int(owner, "steps", steps, minimum=0)
    check_positive(owner, "lr", lr)
    check_int(owner, "batch_size", batch_size)
    check_positive(owner, "weight_decay", weight_decay, allow_zero=True)
    check_int(owner, "seed", seed, minimum=0)


def _accuracy(predicted: torch.Tensor, labels) -> float:
    labels = torch.as_tensor(labels).cpu()
    return float((predicted.cpu() == labels).double().mean())


__all__ = ["finetune_generative", "finetune_linear_head", "generative_classify", "verbalizer_predictions"]
