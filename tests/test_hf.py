"""transformers interop: export/import GPT-2, Llama, BERT and DeepSeek-V2 shapes with equal logits, generate,
save/load, errors.

Every comparison is between two different implementations (workbench vs transformers), and all
weights are random and non-trivial (norm gains/biases too), so a swapped or untransposed weight fails.
"""

import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, BertForMaskedLM, BertModel,
                          DeepseekV2Config, DeepseekV2ForCausalLM, GPT2Config, GPT2LMHeadModel, GPT2Model,
                          LlamaConfig, LlamaForCausalLM)
from transformers.models.deepseek_v2.modeling_deepseek_v2 import apply_rotary_emb

from helpers import forbid_network
from workbench.config import ModelConfig
from workbench.data.tokenizers import ByteTokenizer
from workbench.generate import generate
from workbench.hf import HubUnavailableError, architecture, from_transformers, load_pretrained, to_transformers
from workbench.models import GPT
from workbench.models.positions import RotaryEmbedding, apply_rope, interleaved_to_half

TOL = 1e-4
SHAPE = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, d_model=64)
LLAMA = dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, rope_base=500.0)
BERT = dict(norm_placement="post", head="mlm", mlp="gelu_exact", norm_eps=1e-12)
DEEPSEEK = dict(LLAMA, attention="mla")
CONFIGS = {
    "gpt2": dict(),
    "gpt2-untied-dff96": dict(tie_embeddings=False, d_ff=96, norm_eps=1e-6),
    "llama-gqa": dict(LLAMA, n_kv_head=2),
    "llama-gqa-untied": dict(LLAMA, n_kv_head=2, tie_embeddings=False),
    "llama-mqa": dict(LLAMA, n_kv_head=1, d_ff=80),
    "bert": dict(BERT),
    "bert-untied-dff96": dict(BERT, tie_embeddings=False, d_ff=96),
    "deepseek": dict(DEEPSEEK),  # low-rank queries, d_c = 64, d_r = 8
    "deepseek-fullq-untied": dict(DEEPSEEK, q_lora_rank=0, kv_lora_rank=24, rope_head_dim=6, tie_embeddings=False),
}
HF_CLASS = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "bert": BertForMaskedLM,
            "deepseek": DeepseekV2ForCausalLM}


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


def our_logits(model: GPT, ids: torch.Tensor, mask=None) -> torch.Tensor:
    """Our logits the way the matching transformers class computes them: BERT is bidirectional."""
    mode = "bidirectional" if model.config.head == "mlm" else "causal"
    return model(ids, attention_mode=mode, key_padding_mask=mask).logits


def padded_batch(seed: int = 7, length: int = 20):
    """Ids (3, length) and a mask (True = real): row 0 ends in 6 pads, row 1 in 1, row 2 has none."""
    ids = torch.randint(0, 97, (3, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, -6:] = False
    mask[1, -1:] = False
    return ids, mask


def padded_diff(model: GPT, hf, seed: int = 7) -> float:
    """Max logit difference on the real (non-pad) positions of a padded batch."""
    ids, mask = padded_batch(seed)
    theirs = hf(ids, attention_mask=mask.long()).logits
    return max_diff(theirs[mask], our_logits(model, ids, mask)[mask])


@pytest.mark.parametrize("name", CONFIGS)
def test_export_matches_logits(name):
    model = make_model(name)
    hf = to_transformers(model).eval()
    assert type(hf) is HF_CLASS[name.split("-")[0]]
    assert (hf.get_output_embeddings().weight is hf.get_input_embeddings().weight) == model.config.tie_embeddings
    ids_short = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(1))  # shorter than block
    ids_full = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(2))   # the whole block
    with torch.no_grad():
        for ids in (ids_short, ids_full):
            assert max_diff(hf(ids).logits, our_logits(model, ids)) < TOL
        assert padded_diff(model, hf) < TOL


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


def perturb(hf, which, scale: float = 0.2):
    """Add noise to the parameters whose name ``which`` accepts (HF init leaves norms at 1/0, biases at 0)."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if which(name):
                p.add_(scale * torch.randn_like(p))
    return hf.eval()


def random_hf_gpt2(tie: bool) -> GPT2LMHeadModel:
    torch.manual_seed(3)
    config = GPT2Config(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4, n_inner=96,
                        layer_norm_epsilon=1e-5, tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None)
    return perturb(GPT2LMHeadModel(config), lambda name: "ln_" in name or name.endswith(".bias"))


def random_hf_llama(tie: bool) -> LlamaForCausalLM:
    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 300.0},
                         tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None)
    return perturb(LlamaForCausalLM(config), lambda name: "norm" in name)


def random_hf_bert(tie: bool) -> BertForMaskedLM:
    torch.manual_seed(5)
    config = BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=32, layer_norm_eps=1e-12,
                        tie_word_embeddings=tie)
    # every weight well away from HF's small init (attention must depend on the keys, so masking matters),
    # token-type rows too, so forgetting to fold token_type_embeddings[0] into the positions fails
    return perturb(BertForMaskedLM(config), lambda name: True)


def random_hf_deepseek(tie: bool) -> DeepseekV2ForCausalLM:
    torch.manual_seed(6)
    config = DeepseekV2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=32, rms_norm_eps=1e-6,
                              rope_parameters={"rope_type": "default", "rope_theta": 300.0},
                              first_k_dense_replace=2, kv_lora_rank=32, q_lora_rank=24 if tie else None,
                              qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, tie_word_embeddings=tie,
                              bos_token_id=None, eos_token_id=None)
    return perturb(DeepseekV2ForCausalLM(config), lambda name: "norm" in name)


@pytest.mark.parametrize("make_hf", [random_hf_gpt2, random_hf_llama, random_hf_bert, random_hf_deepseek],
                         ids=["gpt2", "llama", "bert", "deepseek"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_import_random_hf_model(make_hf, tie):
    hf = make_hf(tie)
    model = from_transformers(hf).eval()
    assert model.config.tie_embeddings == tie
    assert (model.lm_head.weight is model.token_embedding.weight) == tie
    ids = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert max_diff(our_logits(model, ids), hf(ids).logits) < TOL
        assert max_diff(our_logits(model, ids[:, :9]), hf(ids[:, :9]).logits) < TOL
        assert padded_diff(model, hf) < TOL


def test_bert_token_types_fold_into_positions():
    hf = random_hf_bert(tie=True)
    model = from_transformers(hf)
    embeddings = hf.bert.embeddings
    folded = embeddings.position_embeddings.weight + embeddings.token_type_embeddings.weight[0]
    assert torch.equal(model.positions.table.weight, folded)
    exported = to_transformers(model).eval()
    assert (exported.bert.embeddings.token_type_embeddings.weight == 0).all()
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():  # zero token-type rows: segment ids change nothing
        assert torch.equal(exported(ids, token_type_ids=torch.ones_like(ids)).logits, exported(ids).logits)
        # the padded batch really is masked: without the mask BERT's real tokens would read the pads
        ids, mask = padded_batch()
        unmasked = exported(ids).logits[mask]
        assert max_diff(unmasked, our_logits(model.eval(), ids, mask)[mask]) > 1e-3


def test_deepseek_interleaved_rope_is_a_permutation_of_rotate_half():
    """HF's complex-pair rotation of x equals our rotate-half rotation of x[interleaved_to_half] (permuted)."""
    d_r, T = 8, 10
    x = torch.randn(1, 1, T, d_r, generator=torch.Generator().manual_seed(0))  # not whatever ran before
    inv_freq = RotaryEmbedding(d_r, 300.0).inv_freq
    angles = torch.arange(T).float()[:, None] * inv_freq[None]
    theirs, _ = apply_rotary_emb(x, x, torch.polar(torch.ones_like(angles), angles)[None])
    perm = interleaved_to_half(d_r)
    cos, sin = RotaryEmbedding(d_r, 300.0).cos_sin(torch.arange(T))
    # complex multiply vs cos/sin rotate-half: a few float32 roundings of values up to max |x| (~3-4 here, where
    # an ulp is 2.4e-7-4.8e-7, so an absolute 1e-6 was 2-4 ulps); measured <= 1.7e-7 * max |x| over 200 inputs
    assert max_diff(apply_rope(x[..., perm], cos, sin), theirs[..., perm]) < 1e-6 * float(x.abs().max())
    assert max_diff(apply_rope(x, cos, sin), theirs) > 1e-2  # without the permutation they differ


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "deepseek", "deepseek-fullq-untied"])
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


@pytest.mark.parametrize("name", ["gpt2-untied-dff96", "llama-gqa", "bert-untied-dff96", "deepseek"])
def test_save_pretrained_and_reload_offline(name, tmp_path):
    model = make_model(name)
    to_transformers(model).save_pretrained(tmp_path)
    auto = AutoModelForMaskedLM if name.startswith("bert") else AutoModelForCausalLM
    reloaded = auto.from_pretrained(tmp_path).eval()
    again = load_pretrained(str(tmp_path)).eval()
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        expected = our_logits(model, ids)
        assert max_diff(reloaded(ids).logits, expected) < TOL
        assert max_diff(our_logits(again, ids), expected) < TOL
    assert again.config == model.config


@pytest.mark.parametrize("name, expected", [("gpt2", "gpt2"), ("llama-mqa", "llama"), ("bert", "bert"),
                                            ("deepseek-fullq-untied", "deepseek_v2")])
def test_architecture_names(name, expected):
    assert architecture(ModelConfig(**SHAPE, **CONFIGS[name])) == expected


@pytest.mark.parametrize("changes, field", [
    (dict(mlp="swiglu"), "mlp"),                               # layernorm + swiglu
    (dict(position="rope"), "position"),                       # GPT-2 with RoPE
    (dict(LLAMA, bias=True), "bias"),                          # Llama with biases
    (dict(n_kv_head=2), "n_kv_head"),                          # GPT-2 with GQA
    (dict(LLAMA, position="none"), "position"),
    (dict(norm_placement="post"), "norm_placement"),           # GPT-2 shape with post-norm blocks
    (dict(BERT, mlp="gelu"), "mlp"),                           # BERT with tanh GELU
    (dict(BERT, head="linear"), "head"),                       # BERT without its prediction head
    (dict(DEEPSEEK, bias=True), "bias"),                       # MLA with biases
    (dict(DEEPSEEK, head="mlm"), "head"),
])
def test_unsupported_config_raises(changes, field):
    with pytest.raises(ValueError, match=field) as info:
        to_transformers(GPT(ModelConfig(**SHAPE, **changes)))
    for title in ("GPT-2", "Llama", "BERT", "DeepSeek-V2"):
        assert f"{title} export needs" in str(info.value)


def test_unsupported_hf_models_raise():
    base = GPT2Model(GPT2Config(vocab_size=97, n_positions=32, n_embd=64, n_layer=1, n_head=4, bos_token_id=None,
                                 eos_token_id=None))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*LlamaForCausalLM.*BertForMaskedLM.*DeepseekV2"):
        from_transformers(base)
    with pytest.raises(ValueError, match="AutoModelForMaskedLM for BERT"):
        from_transformers(BertModel(BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=1,
                                               num_attention_heads=4, intermediate_size=96)))
    with pytest.raises(ValueError, match="supported"):
        from_transformers(torch.nn.Linear(2, 2))
    scaled = LlamaForCausalLM(LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        max_position_embeddings=32, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}))
    with pytest.raises(ValueError, match="rope_type='linear'"):
        from_transformers(scaled)
    relu_bert = BertForMaskedLM(BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, intermediate_size=96, hidden_act="relu"))
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        from_transformers(relu_bert)
    moe = DeepseekV2ForCausalLM(DeepseekV2Config(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        kv_lora_rank=32, q_lora_rank=None, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16))
    with pytest.raises(ValueError, match="mixture-of-experts.*first_k_dense_replace=1"):
        from_transformers(moe)


def test_load_pretrained_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = forbid_network(monkeypatch)
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE") as info:
        load_pretrained("definitely/not-a-model")
    assert attempts == []  # not one connection tried, so no retries to wait for
    assert isinstance(info.value, RuntimeError) and "save_pretrained" in str(info.value)
