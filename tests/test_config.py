"""ModelConfig / TrainConfig: one clear ValueError per bad value, dict round trips, replace()."""
import re

import pytest

from helpers import single_thread  # noqa: F401 (autouse fixture)
from workbench.config import ModelConfig, TrainConfig, config_json
from workbench.models.attention import ATTENTION


def _error(cls, **values) -> str:
    with pytest.raises(ValueError) as info:
        cls(**values)
    assert type(info.value) is ValueError
    return str(info.value)


@pytest.mark.parametrize("values, field, shown", [
    (dict(d_model=30, n_head=4), "n_head", "4"),
    (dict(n_head=4, n_kv_head=3), "n_kv_head", "3"),
    (dict(vocab_size=0), "vocab_size", "0"),
    (dict(block_size=-4), "block_size", "-4"),
    (dict(n_layer=0), "n_layer", "0"),
    (dict(d_model=0), "d_model", "0"),
    (dict(n_head=0), "n_head", "0"),
    (dict(n_kv_head=0), "n_kv_head", "0"),
    (dict(d_ff=0), "d_ff", "0"),
    (dict(n_layer=True), "n_layer", "True"),
    (dict(vocab_size=32.0), "vocab_size", "32.0"),
    (dict(dropout=1.0), "dropout", "1.0"),
    (dict(dropout=-0.1), "dropout", "-0.1"),
    (dict(norm_eps=0.0), "norm_eps", "0.0"),
    (dict(norm_eps=float("nan")), "norm_eps", "nan"),
    (dict(init_std=float("inf")), "init_std", "inf"),
    (dict(d_model=36, n_head=4, position="rope"), "position", "'rope'"),
    (dict(window=0), "window", "0"),
    (dict(chunk_size=0), "chunk_size", "0"),
    (dict(ssm_state=0), "ssm_state", "0"),
    (dict(conv_kernel=0), "conv_kernel", "0"),
    (dict(kv_lora_rank=0), "kv_lora_rank", "0"),
    (dict(q_lora_rank=-1), "q_lora_rank", "-1"),
    (dict(rope_head_dim=3), "rope_head_dim", "3"),
    (dict(norm_placement="middle"), "norm_placement", "'middle'"),
    (dict(head="cls"), "head", "'cls'"),
    (dict(attention="gla", position="rope"), "position", "'rope'"),
    (dict(attention="mla", position="learned"), "position", "'learned'"),
    (dict(attention="ssd", n_kv_head=2), "n_kv_head", "2"),
])
def test_model_config_rejects_bad_values_naming_field_and_value(values, field, shown):
    message = _error(ModelConfig, **values)
    assert f"ModelConfig.{field}=" in message
    assert shown in message


@pytest.mark.parametrize("field, value, allowed", [
    ("norm", "batchnorm", ["layernorm", "rmsnorm"]),
    ("mlp", "relu", ["gelu", "gelu_exact", "swiglu"]),
    ("position", "alibi2", ["learned", "rope", "alibi", "none"]),
    ("attention", "flash", ATTENTION.names()),
])
def test_unknown_variant_names_list_the_allowed_ones(field, value, allowed):
    message = _error(ModelConfig, **{field: value})
    assert f"ModelConfig.{field}={value!r}" in message
    for name in allowed:
        assert repr(name) in message


def test_rope_head_dim_message_shows_the_odd_head_dim():
    message = _error(ModelConfig, d_model=36, n_head=4, position="rope")
    assert "9" in message and "even" in message
    ModelConfig(d_model=36, n_head=4, position="learned")  # odd head_dim is fine without RoPE


def test_d_model_not_divisible_suggests_valid_head_counts():
    message = _error(ModelConfig, d_model=30, n_head=4)
    assert "d_model=30" in message
    assert re.search(r"\[1, 2, 3, 5, 6, 10, 15, 30\]", message)


@pytest.mark.parametrize("values, field", [
    (dict(lr=1e-3, min_lr=2e-3), "min_lr"),
    (dict(lr=0.0), "lr"),
    (dict(lr=-1.0), "lr"),
    (dict(steps=0), "steps"),
    (dict(batch_size=True), "batch_size"),
    (dict(grad_accum=0), "grad_accum"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(beta2=1.0), "beta2"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(lr=float("inf")), "lr"),             # would train straight into NaN weights
    (dict(lr=float("nan")), "lr"),
    (dict(min_lr=float("nan")), "min_lr"),
    (dict(weight_decay=float("inf")), "weight_decay"),
    (dict(grad_clip=float("inf")), "grad_clip"),
    (dict(beta1=float("nan")), "beta1"),
    (dict(device="tpu"), "device"),
    (dict(dtype="float16"), "dtype"),
])
def test_train_config_rejects_bad_values(values, field):
    message = _error(TrainConfig, **values)
    assert f"TrainConfig.{field}=" in message
    assert repr(values[field]) in message


def test_min_lr_message_names_lr():
    message = _error(TrainConfig, lr=1e-3, min_lr=2e-3)
    assert "0.002" in message and "lr=0.001" in message


def test_from_dict_rejects_unknown_field():
    with pytest.raises(ValueError, match="n_heads") as info:
        ModelConfig.from_dict({"n_heads": 4})
    assert "n_head" in str(info.value).split("known fields")[1]
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_defaults_are_derived():
    config = ModelConfig(d_model=64, n_head=4)
    assert config.n_kv_head == 4
    assert config.d_ff == 256
    assert config.head_dim == 16
    swiglu = ModelConfig(d_model=64, n_head=4, mlp="swiglu")
    assert swiglu.d_ff == 192  # 8/3 * 64 = 170.7 -> rounded up to a multiple of 32


@pytest.mark.parametrize("config", [
    ModelConfig(vocab_size=50, n_head=8, n_kv_head=2, norm="rmsnorm", mlp="swiglu", position="rope",
                dropout=0.1, tie_embeddings=False, bias=False),
    ModelConfig(),
    TrainConfig(steps=7, lr=3e-4, min_lr=0.0, device="cpu"),
])
def test_dict_round_trip(config):
    again = type(config).from_dict(config.to_dict())
    assert again == config
    assert config_json(again) == config_json(config)


def test_replace_changes_one_field_and_validates():
    base = ModelConfig(vocab_size=40, d_model=64, n_head=4)
    changed = base.replace(n_layer=2)
    assert changed.n_layer == 2 and base.n_layer == 4
    assert {k: v for k, v in changed.to_dict().items() if k != "n_layer"} == \
        {k: v for k, v in base.to_dict().items() if k != "n_layer"}
    with pytest.raises(ValueError, match="n_head"):
        base.replace(n_head=3)
    with pytest.raises(ValueError, match="no field"):
        base.replace(width=3)
    assert TrainConfig().replace(lr=1e-2).lr == 1e-2


def test_replace_rederives_fields_that_were_left_to_their_defaults():
    """d_ff and n_kv_head that the user never set follow the new shape, as in a fresh config."""
    base = ModelConfig(d_model=32, n_head=4)
    for changes in (dict(d_model=64), dict(n_head=8), dict(mlp="swiglu"), dict(d_model=64, n_head=2)):
        assert base.replace(**changes) == ModelConfig(**{**dict(d_model=32, n_head=4), **changes})
    # values the user did set are kept
    explicit = ModelConfig(d_model=32, n_head=4, n_kv_head=2, d_ff=100)
    wider = explicit.replace(d_model=64)
    assert wider.n_kv_head == 2 and wider.d_ff == 100


def test_variant_knobs_derive_from_the_shape_and_rederive_on_replace():
    c = ModelConfig(block_size=64, d_model=128, n_head=4)  # head_dim 32
    assert (c.window, c.kv_lora_rank, c.q_lora_rank, c.rope_head_dim) == (16, 128, 128, 16)
    wider = c.replace(block_size=256, d_model=256)         # head_dim 64: every derived knob follows
    assert (wider.window, wider.kv_lora_rank, wider.q_lora_rank, wider.rope_head_dim) == (64, 256, 256, 32)
    fixed = ModelConfig(attention="sliding_window", window=5).replace(block_size=256)
    assert fixed.window == 5  # explicit values stay
    fixed = ModelConfig(attention="mla", position="rope", kv_lora_rank=40, q_lora_rank=0).replace(block_size=256)
    assert (fixed.kv_lora_rank, fixed.q_lora_rank) == (40, 0)


@pytest.mark.parametrize("attention, changes", [
    ("mha", dict(window=5)), ("mha", dict(chunk_size=16)), ("mha", dict(kv_lora_rank=40)),
    ("gla", dict(window=5, position="none")), ("sliding_window", dict(ssm_state=8)),
    ("mla", dict(conv_kernel=2, position="rope")), ("linear", dict(rope_head_dim=4, position="none")),
])
def test_a_knob_the_variant_ignores_is_one_clear_error(attention, changes):
    knob = next(k for k in changes if k != "position")
    with pytest.raises(ValueError, match=rf"ModelConfig\.{knob}=.* has no effect with attention='{attention}'.*"
                                         rf"Leave {knob} unset"):
        ModelConfig(attention=attention, **changes)


def test_knobs_left_at_their_defaults_load_from_older_configs():
    # Configs saved before the knob check store every derived knob (window=16 with mha): they still load.
    stored = {**ModelConfig().to_dict(), "window": 16, "kv_lora_rank": 128}
    assert ModelConfig.from_dict(stored) == ModelConfig()
