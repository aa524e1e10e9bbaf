"""Model and training configs: plain dataclasses, validated on creation.

A config names every variant with a string (``norm="rmsnorm"``,
``position="rope"``, ``attention="mha"``), so a notebook dropdown or a CLI
flag can set it, and a checkpoint can store it as JSON. Any invalid value
raises one ``ValueError`` naming the field, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from .validation import check_choice, check_int, check_positive, check_range

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_exact", "swiglu")
POSITIONS = ("learned", "rope", "alibi", "none")
ATTENTION_MODES = ("causal", "bidirectional", "prefix")
NORM_PLACEMENTS = ("pre", "post")
HEADS = ("linear", "mlm")
# ModelConfig fields that only some attention variants read (each variant lists its own in ``knobs``)
VARIANT_KNOBS = ("window", "chunk_size", "kv_lora_rank", "q_lora_rank", "rope_head_dim", "ssm_state", "conv_kernel")


class _Config:
    """JSON round trips and copies, shared by every config dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__} has no field(s) {', '.join(map(repr, unknown))}; "
                f"known fields are: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def replace(self, **changes: Any):
        """A copy with ``changes``; fields that were left to derived defaults are derived again."""
        derived = {name: None for name in getattr(self, "_derived", ()) if name not in changes}
        return type(self).from_dict({**self.to_dict(), **derived, **changes})


@dataclass
class ModelConfig(_Config):
    """The shape of a Transformer language model.

    Defaults give nanoGPT's CPU "baby GPT" shape (4 layers, 4 heads, width 128).
    """

    vocab_size: int = 256
    block_size: int = 64          # longest context the model is built for
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    n_kv_head: Optional[int] = None  # None = n_head (plain multi-head attention)
    d_ff: Optional[int] = None       # None = 4 * d_model (GELU) or ~8/3 * d_model (SwiGLU)
    dropout: float = 0.0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    position: str = "learned"
    rope_base: float = 10000.0
    attention: str = "mha"         # token mixer, by name: see workbench.models.ATTENTION.names()
    tie_embeddings: bool = True
    bias: bool = True              # biases in linear layers and LayerNorm (GPT-2 style)
    init_std: float = 0.02
    norm_placement: str = "pre"    # pre: x + f(norm(x)) (GPT-2, Llama) | post: norm(x + f(x)) (BERT)
    head: str = "linear"           # linear | mlm: BERT's dense + activation + norm before the decoder (+ bias)
    # Knobs of single attention variants (ignored by the others; None = derived default)
    window: Optional[int] = None         # sliding_window: query i reads keys i - window < j <= i (None: block/4)
    chunk_size: int = 32                 # linear, gla, delta, ssd: tokens per chunk of the chunked form
    kv_lora_rank: Optional[int] = None   # mla: width d_c of the cached key/value latent (None: 4 * head_dim)
    q_lora_rank: Optional[int] = None    # mla: width of the query latent (None: kv_lora_rank; 0: full-rank queries)
    rope_head_dim: Optional[int] = None  # mla: width d_r of the decoupled RoPE query/key (None: head_dim / 2)
    ssm_state: int = 16                  # ssd: state size N per head
    conv_kernel: int = 4                 # ssd: width of the causal depthwise convolution

    def __post_init__(self) -> None:
        owner = "ModelConfig"
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            check_int(owner, name, getattr(self, name))
        # fields left to their defaults are re-derived by replace() (not a dataclass field)
        self._derived = tuple(name for name in ("n_kv_head", "d_ff", "window", "kv_lora_rank", "q_lora_rank",
                                                "rope_head_dim") if getattr(self, name) is None)
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        check_int(owner, "n_kv_head", self.n_kv_head)
        if self.d_model % self.n_head:
            divisors = [h for h in range(1, self.d_model + 1) if self.d_model % h == 0 and h <= 64]
            raise ValueError(
                f"ModelConfig.n_head={self.n_head!r} is invalid: d_model={self.d_model} must be "
                f"divisible by n_head; choose n_head from {divisors} or change d_model"
            )
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"ModelConfig.n_kv_head={self.n_kv_head!r} is invalid: n_head={self.n_head} must be "
                f"a multiple of n_kv_head (each key/value head serves a whole group of query heads)"
            )
        if self.d_ff is None:
            self.d_ff = _swiglu_width(self.d_model) if self.mlp == "swiglu" else 4 * self.d_model
        check_int(owner, "d_ff", self.d_ff)
        check_range(owner, "dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_positive(owner, "norm_eps", self.norm_eps)
        check_positive(owner, "rope_base", self.rope_base)
        check_positive(owner, "init_std", self.init_std)
        check_choice(owner, "norm", self.norm, NORMS)
        check_choice(owner, "mlp", self.mlp, MLPS)
        check_choice(owner, "position", self.position, POSITIONS)
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(
                f"ModelConfig.position='rope' needs an even head_dim, got d_model/n_head = {self.head_dim}; "
                "change d_model or n_head"
            )
        check_choice(owner, "norm_placement", self.norm_placement, NORM_PLACEMENTS)
        check_choice(owner, "head", self.head, HEADS)
        for name in ("chunk_size", "ssm_state", "conv_kernel"):
            check_int(owner, name, getattr(self, name))
        for name in ("window", "kv_lora_rank", "q_lora_rank", "rope_head_dim"):
            if getattr(self, name) is None:
                setattr(self, name, self._knob_default(name))
        check_int(owner, "window", self.window)
        check_int(owner, "kv_lora_rank", self.kv_lora_rank)
        check_int(owner, "q_lora_rank", self.q_lora_rank, minimum=0)
        check_int(owner, "rope_head_dim", self.rope_head_dim, minimum=2)
        if self.rope_head_dim % 2:
            raise ValueError(f"ModelConfig.rope_head_dim={self.rope_head_dim!r} is invalid: RoPE rotates channel "
                             "pairs, so it must be even")
        self._check_attention_variant()

    def _check_attention_variant(self) -> None:
        """The variant exists and supports the chosen positions (each variant class declares what it supports)."""
        from .models import ATTENTION  # late import: the registry lives with the variants

        check_choice("ModelConfig", "attention", self.attention, ATTENTION.names())
        variant = ATTENTION.get(self.attention)
        if self.position not in variant.positions:
            raise ValueError(
                f"ModelConfig.position={self.position!r} is invalid with attention={self.attention!r}: "
                f"{variant.position_note} Allowed positions: {', '.join(map(repr, variant.positions))}"
            )
        for name in VARIANT_KNOBS:
            if name not in variant.knobs and getattr(self, name) != self._knob_default(name):
                readers = [n for n in ATTENTION.names() if name in ATTENTION.get(n).knobs]
                raise ValueError(
                    f"ModelConfig.{name}={getattr(self, name)!r} has no effect with attention={self.attention!r}: "
                    f"it is read only by attention {' / '.join(map(repr, readers))}. Leave {name} unset, or "
                    "choose an attention variant that reads it"
                )
        if not variant.grouped_kv and self.n_kv_head != self.n_head:
            raise ValueError(
                f"ModelConfig.n_kv_head={self.n_kv_head!r} is invalid with attention={self.attention!r}: it has no "
                f"key/value heads to share; leave n_kv_head unset (= n_head = {self.n_head})"
            )

    def _knob_default(self, name: str):
        """The value a variant knob takes when left unset (derived from the other fields where it says so)."""
        derived = {"window": lambda: max(1, self.block_size // 4),
                   "kv_lora_rank": lambda: 4 * self.head_dim,
                   "q_lora_rank": lambda: self.kv_lora_rank,
                   "rope_head_dim": lambda: max(2, self.head_dim // 2 // 2 * 2)}
        if name in derived:
            return derived[name]()
        return next(f.default for f in dataclasses.fields(self) if f.name == name)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def _swiglu_width(d_model: int) -> int:
    """Llama's hidden width: 2/3 of 4*d, rounded up to a multiple of 32."""
    width = int(8 * d_model / 3)
    return 32 * ((width + 31) // 32)


@dataclass
class TrainConfig(_Config):
    """How to train: optimizer, schedule, batch, evaluation and checkpoints."""

    steps: int = 2000
    batch_size: int = 12
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4            # cosine decays from lr to min_lr
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0          # 0 disables clipping
    eval_every: int = 250           # 0 disables periodic evaluation
    eval_batches: int = 20
    log_every: int = 50
    checkpoint_every: int = 0       # 0: only when asked
    keep_checkpoints: int = 2
    seed: int = 1337
    device: str = "auto"            # auto | cpu | cuda | mps
    dtype: str = "auto"             # auto (bf16 autocast on CUDA, fp32 elsewhere) | float32 | bfloat16
    compile: bool = False

    def __post_init__(self) -> None:
        owner = "TrainConfig"
        for name in ("steps", "batch_size", "grad_accum", "eval_batches", "log_every", "keep_checkpoints"):
            check_int(owner, name, getattr(self, name))
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "seed"):
            check_int(owner, name, getattr(self, name), minimum=0)
        check_positive(owner, "lr", self.lr)
        check_positive(owner, "min_lr", self.min_lr, allow_zero=True)
        if self.min_lr > self.lr:
            raise ValueError(f"TrainConfig.min_lr={self.min_lr!r} is invalid: it must not exceed lr={self.lr}")
        check_positive(owner, "weight_decay", self.weight_decay, allow_zero=True)
        check_range(owner, "beta1", self.beta1, 0.0, 1.0, high_open=True)
        check_range(owner, "beta2", self.beta2, 0.0, 1.0, high_open=True)
        check_positive(owner, "grad_clip", self.grad_clip, allow_zero=True)
        check_choice(owner, "device", self.device, ("auto", "cpu", "cuda", "mps"))
        check_choice(owner, "dtype", self.dtype, ("auto", "float32", "bfloat16"))


def config_json(config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)
