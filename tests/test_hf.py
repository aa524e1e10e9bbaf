"""transformers interop: export/import GPT-2 and Llama shapes with equal logits, generate, save/load, errors.

Every comparison is between two different implementations (workbench vs transformers), and all
weights are random and non-trivial (norm gains/biases too), so a swapped or untransposed weight fails.
"""
import os
import time

import pytest
import torch
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, GPT2Model, LlamaConfig,
                          LlamaForCausalLM)

from workbench.config import ModelConfig
from workbench.data.tokenizers import ByteTokenizer
from workbench.generate import generate
from workbench.hf import HubUnavailableError, from_transformers, load_pretrained, to_transformers
from workbench.models import GPT

TOL = 1e-4
SHAPE = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, d_model=64)
LLAMA = dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, rope_base=500.0)
CONFIGS = {
    "gpt2": dict(),
    "gpt2-untied-dff96": dict(tie_embeddings=False, d_ff=96, norm_eps=1e-6),
    "llama-gqa": dict(LLAMA, n_kv_head=2),
    "llama-gqa-untied": dict(LLAMA, n_kv_head=2, tie_embeddings=False),
    "llama-mqa": dict(LLAMA, n_kv_head=1, d_ff=80),
}


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter so no weight sits at a trivial value (norm gains 1, biases 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def make_model(name: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return randomize(GPT(ModelConfig(**SHAPE, **CONFIGS[name])), seed)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", CONFIGS)
def test_export_matches_logits(name):
    model = make_model(name)
    hf = to_transformers(model).eval()
    expected_class = GPT2LMHeadModel if name.startswith("gpt2") else LlamaForCausalLM
    assert type(hf) is expected_class
    assert (hf.lm_head.weight is hf.get_input_embeddings().weight) == model.config.tie_embeddings
    ids_short = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(1))  # shorter than block
    ids_full = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(2))   # the whole block
    with torch.no_grad():
        for ids in (ids_short, ids_full):
            assert max_diff(hf(ids).logits, model(ids).logits) < TOL


@pytest.mark.parametrize("name", CONFIGS)
def test_round_trip_is_exact(name):
    model = make_model(name)
    back = from_transformers(to_transformers(model))
    assert back is not model and back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    ids = torch.randint(0, 97, (2, 17))
    with torch.no_grad():
        assert torch.equal(back.eval()(ids).logits, model(ids).logits)


def random_hf_gpt2(tie: bool) -> GPT2LMHeadModel:
    torch.manual_seed(3)
    config = GPT2Config(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4, n_inner=96,
                        layer_norm_epsilon=1e-5, tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(config)
    with torch.no_grad():  # HF init leaves LayerNorms at (1, 0) and Conv1D biases at 0: make them random
        for name, p in hf.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(0.2 * torch.randn_like(p))
    return hf.eval()


def random_hf_llama(tie: bool) -> LlamaForCausalLM:
    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 300.0},
                         tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None)
    hf = LlamaForCausalLM(config)
    with torch.no_grad():  # HF init leaves RMSNorm gains at 1: make them random
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return hf.eval()


@pytest.mark.parametrize("make_hf", [random_hf_gpt2, random_hf_llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_import_random_hf_model(make_hf, tie):
    hf = make_hf(tie)
    model = from_transformers(hf).eval()
    assert model.config.tie_embeddings == tie
    assert (model.lm_head.weight is model.token_embedding.weight) == tie
    ids = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert max_diff(model(ids).logits, hf(ids).logits) < TOL
        assert max_diff(model(ids[:, :9]).logits, hf(ids[:, :9]).logits) < TOL


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_generate_greedy_matches(name):
    model = make_model(name)
    hf = to_transformers(model).eval()
    assert hf.generation_config.eos_token_id is None  # no tokenizer given: no early stop
    prompt = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(6))
    ours = generate(model, prompt, 10, temperature=0)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=10,
                         pad_token_id=0)
    assert theirs.shape == (2, 16)
    assert torch.equal(theirs, ours)


def test_tokenizer_ids_reach_the_generation_config():
    tokenizer = ByteTokenizer()
    model = GPT(ModelConfig(**{**SHAPE, "vocab_size": tokenizer.vocab_size}))
    hf = to_transformers(model, tokenizer=tokenizer)
    for cfg in (hf.config, hf.generation_config):
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
            tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    with pytest.raises(ValueError, match="eos_id=3"):  # a 3-token vocabulary has no id 3
        to_transformers(GPT(ModelConfig(**{**SHAPE, "vocab_size": 3})), tokenizer=tokenizer)


@pytest.mark.parametrize("name", ["gpt2-untied-dff96", "llama-gqa"])
def test_save_pretrained_and_reload_offline(name, tmp_path):
    model = make_model(name)
    to_transformers(model).save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    again = load_pretrained(str(tmp_path)).eval()
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        expected = model(ids).logits
        assert max_diff(reloaded(ids).logits, expected) < TOL
        assert max_diff(again(ids).logits, expected) < TOL
    assert again.config == model.config


@pytest.mark.parametrize("changes, field", [
    (dict(mlp="swiglu"), "mlp"),                               # layernorm + swiglu
    (dict(position="rope"), "position"),                       # GPT-2 with RoPE
    (dict(LLAMA, bias=True), "bias"),                          # Llama with biases
    (dict(n_kv_head=2), "n_kv_head"),                          # GPT-2 with GQA
    (dict(LLAMA, position="none"), "position"),
])
def test_unsupported_config_raises(changes, field):
    with pytest.raises(ValueError, match=field) as info:
        to_transformers(GPT(ModelConfig(**SHAPE, **changes)))
    assert "GPT-2 export needs" in str(info.value) and "Llama export needs" in str(info.value)


def test_unsupported_hf_models_raise():
    base = GPT2Model(GPT2Config(vocab_size=97, n_positions=32, n_embd=64, n_layer=1, n_head=4, bos_token_id=None,
                                 eos_token_id=None))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        from_transformers(base)
    with pytest.raises(ValueError, match="supported"):
        from_transformers(torch.nn.Linear(2, 2))
    scaled = LlamaForCausalLM(LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        max_position_embeddings=32, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}))
    with pytest.raises(ValueError, match="rope_type='linear'"):
        from_transformers(scaled)


def test_load_pretrained_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE") as info:
        load_pretrained("definitely/not-a-model")
    assert time.monotonic() - start < 10
    assert isinstance(info.value, RuntimeError) and "save_pretrained" in str(info.value)
