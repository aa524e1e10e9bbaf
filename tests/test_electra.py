"""ELECTRA replaced-token detection: generator shape and shared embeddings, masking statistics, labels,
gradient paths, the weighted loss, Trainer integration with exact resume, learning, and the transformers
export of the discriminator."""
import math

import pytest
import torch
from transformers import ElectraForPreTraining

from helpers import markov_data, model_state, single_thread, states_equal, tiny_model, train_config  # noqa: F401
from workbench.config import ModelConfig
from workbench.hf.electra import electra_discriminator_to_transformers
from workbench.models import GPT
from workbench.objectives.base import IGNORE, MASK_ID, NUM_SPECIAL, PAD_ID, make_objective
from workbench.objectives.electra import Electra, choose_and_mask, replaced_token_labels
from workbench.train import Trainer
from workbench.train import checkpoint as ckpt

V = 32
BERT_SHAPE = dict(norm_placement="post", mlp="gelu_exact", norm_eps=1e-12)


def set_up(model, seed: int = 0, **options) -> Electra:
    objective = Electra(**options)
    objective.setup(model, seed=seed)
    return objective


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clean_batch(seed: int = 0, rows: int = 4, length: int = 17) -> torch.Tensor:
    """Random windows that include special ids (0..3) as well as ordinary ones."""
    return torch.randint(0, V, (rows, length), generator=rng(seed))


def own_generator_parameters(objective: Electra) -> dict:
    """The generator's parameters except the token embedding it shares with the discriminator."""
    shared = objective.generator.token_embedding.shared.weight
    return {n: p for n, p in objective.generator.named_parameters() if p is not shared}


def grads(named: dict) -> dict:
    return {n: None if p.grad is None else p.grad.clone() for n, p in named.items()}


# ---------------------------------------------------------------- the generator
def test_generator_is_a_quarter_wide_same_depth_and_shares_the_token_embedding():
    model = tiny_model(vocab_size=40)  # d_model 32, 2 layers, 4 heads of 8; a vocabulary of another size
    objective = set_up(model)
    generator = objective.generator
    assert generator.config.d_model == model.config.d_model // 4 == 8
    assert generator.config.n_layer == model.config.n_layer and len(generator.blocks) == len(model.blocks)
    assert generator.config.n_head == 1  # keeps the discriminator's head width 8
    assert generator.config.d_ff == 4 * 8
    # the SAME tensor, in and out
    for shared in (generator.token_embedding.shared, generator.lm_head.shared):
        assert shared is model.token_embedding
        assert shared.weight.data_ptr() == model.token_embedding.weight.data_ptr()
    # no vocabulary table of the generator's own width survives (no dead GPT token_embedding / lm_head):
    # the count is blocks + positions + final norm + projection in + output transform + output bias
    own = own_generator_parameters(objective)
    assert not [n for n, p in own.items() if 40 in p.shape and 8 in p.shape]
    d, g, L, T, d_ff = 32, 8, 2, 16, 32
    block = 2 * 2 * g + (3 * g * g + 3 * g) + (g * g + g) + (g * d_ff + d_ff) + (d_ff * g + g)
    expected = L * block + T * g + 2 * g + (d * g + g) + (g * d + d + 2 * d) + 40
    assert objective.generator_parameters() == sum(p.numel() for p in own.values()) == expected
    # generator_heads: explicit and checked against the generator's width
    wider = GPT(ModelConfig(vocab_size=V, block_size=16, n_layer=1, n_head=4, d_model=64))  # heads of 16
    assert set_up(wider).generator.config.n_head == 1
    assert set_up(wider, generator_heads=4).generator.config.n_head == 4
    with pytest.raises(ValueError, match="generator_heads=3"):
        set_up(wider, generator_heads=3)


@pytest.mark.parametrize("option, value", [("mask_ratio", 0.0), ("mask_ratio", 1.5), ("generator_width", 0.0),
                                           ("generator_width", 2.0), ("disc_weight", -1.0),
                                           ("generator_heads", 0)])
def test_bad_options_raise_naming_the_option(option, value):
    with pytest.raises(ValueError, match=f"Electra.{option}={value!r}"):
        Electra(**{option: value})


def test_setup_is_seeded_and_leaves_the_global_rng_alone():
    model = tiny_model()
    before = torch.get_rng_state()
    a, b, c = set_up(model, seed=3), set_up(model, seed=3), set_up(model, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert states_equal(model_state(a), model_state(b))
    assert not states_equal(model_state(a), model_state(c))
    # rebuilt by name from a checkpoint's description
    again = make_objective("electra", **a.to_dict()["options"])
    assert isinstance(again, Electra) and again.to_dict() == a.to_dict()


def test_loss_before_setup_or_for_another_model_is_refused():
    model = tiny_model()
    with pytest.raises(RuntimeError, match="setup"):
        Electra().loss(model, clean_batch())
    with pytest.raises(RuntimeError, match="another model"):
        set_up(tiny_model(seed=1)).loss(model, clean_batch())


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_the_head_reads_the_final_hidden_state(placement):
    """The head's input is the tensor the model's own LM head reads: after the final norm (pre-norm), the
    last block's output (post-norm, already normalized)."""
    model = tiny_model(norm_placement=placement)
    objective = set_up(model)
    seen = []
    objective.discriminator_head.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    ids = clean_batch(seed=3)[:, :-1]
    with torch.no_grad():
        objective.discriminator_logits(model, ids)
        expected = model(ids, attention_mode="bidirectional").logits
        assert torch.allclose(model.lm_head(seen[0]), expected, atol=1e-6)
        if placement == "pre":  # not the raw residual stream
            raw = model(ids, attention_mode="bidirectional", return_hidden_states=True).hidden_states[-1]
            assert not torch.allclose(model.lm_head(raw), expected, atol=1e-3)


# ---------------------------------------------------------------- masking
def test_masking_exact_count_85_15_no_random_tokens_no_specials():
    rows, length = 2000, 40
    tokens = torch.randint(0, V, (rows, length), generator=rng(1))
    tokens[0] = 0                     # a row of specials only: nothing to choose
    tokens[1] = 2
    tokens[1, 5] = 17                 # one ordinary token: max(1, round(0.15)) = 1 is chosen
    before = torch.get_rng_state()
    inputs, chosen = choose_and_mask(tokens, V, 0.15, rng(2))
    assert torch.equal(torch.get_rng_state(), before)  # randomness only from the generator argument
    special = tokens < NUM_SPECIAL
    assert not (chosen & special).any()
    n_candidates = (~special).sum(1).tolist()
    expected = [min(n, max(1, round(n * 0.15))) for n in n_candidates]
    assert chosen.sum(1).tolist() == expected
    assert expected[0] == 0 and expected[1] == 1 and bool(chosen[1, 5])
    # outside the chosen positions nothing changes; at them: [MASK] or the original, never a random token
    assert torch.equal(inputs[~chosen], tokens[~chosen])
    as_mask = chosen & (inputs == MASK_ID)
    kept = chosen & (inputs == tokens)
    assert torch.equal(as_mask | kept, chosen)
    n = int(chosen.sum())
    share = int(as_mask.sum()) / n
    assert abs(share - 0.85) < 5 * math.sqrt(0.85 * 0.15 / n)  # 5 sigma of a binomial
    # same generator seed, same masks
    again = choose_and_mask(tokens, V, 0.15, rng(2))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], chosen)


def test_masked_positions_are_uniform_over_the_candidates():
    draws, length = 3000, 20
    tokens = torch.randint(NUM_SPECIAL, V, (draws, length), generator=rng(3))  # all ordinary: 3 of 20 chosen
    _, chosen = choose_and_mask(tokens, V, 0.15, rng(4))
    assert (chosen.sum(1) == 3).all()
    p = 3 / length
    counts = chosen.sum(0).double()
    assert ((counts - draws * p).abs() < 5 * math.sqrt(draws * p * (1 - p))).all()


def test_corrupt_targets_are_the_originals_at_the_chosen_positions():
    batch = clean_batch(seed=5)
    c = Electra().corrupt(batch, V, rng(0))
    tokens = batch[:, :-1]
    assert c.attention_mode == "bidirectional" and torch.equal(c.original, tokens)
    assert torch.equal(c.targets[c.scored], tokens[c.scored])
    assert (c.targets[~c.scored] == IGNORE).all()


# ---------------------------------------------------------------- labels
def test_replaced_token_labels_by_hand():
    original = torch.tensor([[5, 6, 7, 8, 9]])
    sampled = torch.tensor([[5, 9, 7, 4, 9]])
    masked = torch.tensor([[True, True, False, True, False]])
    # 0: masked, correct guess -> original; 1: masked, wrong -> replaced; 2: unmasked; 3: replaced; 4: unmasked
    assert replaced_token_labels(original, sampled, masked).tolist() == [[False, True, False, True, False]]


def test_labels_are_zero_where_the_generator_samples_the_original():
    model = tiny_model()
    objective = set_up(model)
    batch = torch.full((3, 17), 9)
    batch[2] = torch.randint(10, V, (17,), generator=rng(0))  # never 9
    with torch.no_grad():
        objective.generator.lm_head.bias[9] = 1e4  # the generator now always says 9
        parts = objective.losses(model, batch, rng(1))
    assert parts.chosen.sum(1).tolist() == [2, 2, 2]  # round(16 * 0.15)
    assert (parts.corrupted[parts.chosen] == 9).all()
    assert not parts.is_replaced[:2].any()  # a correct guess is not a replacement
    assert torch.equal(parts.is_replaced[2], parts.chosen[2])  # a wrong one is, only where chosen


def test_labels_only_at_masked_positions_and_exactly_where_the_token_changed():
    model = tiny_model()
    parts = set_up(model).losses(model, clean_batch(seed=2, rows=8), rng(3))
    assert parts.is_replaced.any()
    assert not (parts.is_replaced & ~parts.chosen).any()
    assert torch.equal(parts.is_replaced, parts.corrupted != parts.original)
    assert torch.equal(parts.scored, parts.original != PAD_ID)


# ---------------------------------------------------------------- loss and gradients
def test_total_is_generator_loss_plus_disc_weight_times_discriminator_loss():
    model = tiny_model()
    batch = clean_batch(seed=4, rows=6)
    for weight in (50.0, 7.0):
        out = set_up(model, disc_weight=weight).loss(model, batch, rng(0))
        m = out.metrics
        assert float(out.loss.detach()) == pytest.approx(m["generator_loss"] + weight * m["discriminator_loss"], rel=1e-6)
        assert out.n_tokens == int((batch[:, :-1] != PAD_ID).sum())
        assert set(m) == {"generator_loss", "discriminator_loss", "generator_accuracy", "replaced_fraction",
                          "discriminator_accuracy"}
    assert Electra().disc_weight == 50.0


def test_discriminator_loss_is_mean_bce_over_non_pad_positions():
    model = tiny_model()
    batch = clean_batch(seed=6, rows=5)
    parts = set_up(model).losses(model, batch, rng(0))
    logits, labels = parts.discriminator_logits.detach(), parts.is_replaced
    keep = batch[:, :-1] != PAD_ID
    p = torch.sigmoid(logits[keep].double())
    y = labels[keep].double()
    manual = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert float(parts.discriminator_loss.detach()) == pytest.approx(float(manual), rel=1e-5)


def test_no_gradient_through_sampling_only_the_shared_embedding_gets_both():
    model = tiny_model()  # dropout 0: three identical forward passes
    objective = set_up(model)
    batch = clean_batch(seed=7, rows=6)
    own = own_generator_parameters(objective)
    head = dict(objective.discriminator_head.named_parameters())
    embedding = model.token_embedding.weight

    def backward(which):
        model.zero_grad(set_to_none=True)
        objective.zero_grad(set_to_none=True)
        parts = objective.losses(model, batch, rng(8))
        {"total": parts.total, "gen": parts.generator_loss, "disc": parts.discriminator_loss}[which].backward()
        return grads(own), grads(head), embedding.grad.clone()

    own_total, head_total, emb_total = backward("total")
    own_gen, head_gen, emb_gen = backward("gen")
    own_disc, head_disc, emb_disc = backward("disc")
    # the generator's own weights learn from the MLM loss alone ...
    for name in own:
        assert own_gen[name] is not None and own_gen[name].abs().sum() > 0, name  # and none is dead
        assert torch.equal(own_total[name], own_gen[name]), name
        assert own_disc[name] is None, name  # ... the discriminator loss has no path to them
    # the discriminator head only from the discriminator loss (weighted by 50)
    for name in head:
        assert head_gen[name] is None
        assert torch.allclose(head_total[name], 50 * head_disc[name], rtol=1e-5, atol=1e-8)
    # the shared embedding gets both
    assert emb_disc.abs().sum() > 0 and emb_gen.abs().sum() > 0
    assert not torch.allclose(emb_total, emb_gen)
    assert torch.allclose(emb_total, emb_gen + 50 * emb_disc, rtol=1e-4, atol=1e-7)


def test_flops_include_the_generator_and_the_head():
    model = tiny_model()
    objective = set_up(model)
    d, g, L, T = 32, 8, 2, 16
    d_ff = 4 * g
    generator_matmuls = L * (4 * g * g + 2 * g * d_ff) + d * g + g * d + V * d  # blocks, in, out, shared decoder
    generator_forward = 2 * generator_matmuls + L * 4 * g * T  # + q k^T and probs @ v over T keys
    head_forward = 2 * (d * d + d)
    assert objective.flops_per_token(model) == model.flops_per_token() + 3 * (generator_forward + head_forward)


# ---------------------------------------------------------------- Trainer
def make_trainer(out_dir=None, steps=6, **model_changes):
    return Trainer(tiny_model(**model_changes), Electra(), markov_data(), train_config(steps=steps, batch_size=4),
                   callbacks=[], out_dir=out_dir)


def objective_state(trainer) -> dict:
    return {k: v.clone() for k, v in ckpt.objective_tensors(trainer.objective, trainer.model).items()}


def test_trainer_optimizes_the_generator_and_the_head():
    trainer = make_trainer(steps=1)
    objective, model = trainer.objective, trainer.model
    assert objective.generator.token_embedding.shared.weight is model.token_embedding.weight
    trained = trainer.trained_parameters()
    ids = [id(p) for p in trained]
    assert len(ids) == len(set(ids))  # the shared embedding once
    owned = [*own_generator_parameters(objective).values(), *objective.discriminator_head.parameters()]
    assert all(id(p) in ids for p in owned)
    # checkpoints store the shared embedding once, with the model
    saved = ckpt.objective_tensors(objective, model)
    assert len(saved) == len(owned) and not [n for n in saved if "shared" in n]
    before = [p.detach().clone() for p in owned]
    trainer.fit()
    assert all(not torch.equal(b, p) for b, p in zip(before, owned))
    assert set(trainer.history["train"][0]) >= {"generator_loss", "discriminator_loss", "replaced_fraction"}


def history(trainer) -> list[dict]:
    drop = ("elapsed", "tokens_per_s")
    return [{k: v for k, v in r.items() if k not in drop} for r in trainer.history["train"]]


def test_resume_restores_generator_and_head_and_repeats_the_run(tmp_path):
    straight = make_trainer(dropout=0.1)
    straight.fit()

    first_half = make_trainer(out_dir=tmp_path, dropout=0.1)
    first_half.fit(steps=3)
    first_half.save_checkpoint()
    saved = objective_state(first_half)
    fresh = objective_state(make_trainer(dropout=0.1))
    assert not states_equal(saved, fresh)  # 3 steps changed them: restoring them matters

    resumed = Trainer.resume(tmp_path, data=markov_data(), callbacks=[])  # objective rebuilt from the checkpoint
    assert isinstance(resumed.objective, Electra) and resumed.step == 3
    assert resumed.objective.generator.token_embedding.shared is resumed.model.token_embedding
    assert states_equal(objective_state(resumed), saved)
    resumed.fit()
    assert history(resumed) == history(straight)  # exact: losses, grad norms and every metric
    assert states_equal(objective_state(resumed), objective_state(straight))
    assert states_equal(model_state(resumed.model), model_state(straight.model))


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_the_discriminator_learns_on_markov_data():
    # A trained generator proposes tokens with the right unigram frequencies, so the discriminator must learn
    # which token pairs the chain allows: attention to the neighbours, which RoPE learns much faster than
    # learned absolute positions. A 16-token chain and one layer keep this to a few seconds.
    data = markov_data(vocab_size=16)
    model = tiny_model(vocab_size=16, n_layer=1, position="rope")
    trainer = Trainer(model, Electra(), data, train_config(steps=400, batch_size=16, lr=1e-2, min_lr=1e-3,
                                                          warmup_steps=10), callbacks=[])
    trainer.fit()
    objective, model = trainer.objective.eval(), trainer.model.eval()
    g = rng(99)
    bce, replaced, scored = 0.0, 0, 0
    with torch.no_grad():
        for _ in range(16):
            parts = objective.losses(model, data.get_batch("val", 16, 17, g), g)
            n = int(parts.scored.sum())
            bce += float(parts.discriminator_loss) * n
            replaced += int((parts.is_replaced & parts.scored).sum())
            scored += n
    base_rate = replaced / scored
    # always predicting the base rate p scores the binary entropy H(p): the best constant on these very batches
    constant = binary_entropy(base_rate)
    assert 0.02 < base_rate < 0.15  # some chosen tokens are guessed right: fewer than 15% are replaced
    assert bce / scored < 0.9 * constant, (bce / scored, constant)


# ---------------------------------------------------------------- transformers export
def randomize(module: torch.nn.Module, seed: int) -> None:
    """Perturb every parameter so none sits at a trivial value (norm gains 1, biases 0)."""
    g = rng(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def bert_shaped(**changes) -> GPT:
    return GPT(ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=4, d_model=32, **BERT_SHAPE, **changes),
               seed=0).eval()


def export_diff(model, objective) -> float:
    hf = electra_discriminator_to_transformers(model, objective).eval()
    assert type(hf) is ElectraForPreTraining
    assert (hf.electra.embeddings.token_type_embeddings.weight == 0).all()
    ids = torch.randint(0, V, (3, 16), generator=rng(1))
    short = torch.randint(0, V, (2, 9), generator=rng(2))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, -5:] = False
    with torch.no_grad():
        diffs = [(hf(x).logits - objective.discriminator_logits(model, x)).abs().max() for x in (ids, short)]
        padded = hf(ids, attention_mask=mask.long()).logits - objective.discriminator_logits(model, ids, mask)
        diffs.append(padded[mask].abs().max())
    return max(float(d) for d in diffs)


@pytest.mark.parametrize("head", ["linear", "mlm"])
def test_export_matches_our_discriminator_logits(head):
    model = bert_shaped(head=head, tie_embeddings=head == "linear")
    objective = set_up(model)
    randomize(model, 1)
    randomize(objective.discriminator_head, 2)
    assert export_diff(model, objective) < 1e-5


def test_export_after_training_matches():
    trainer = Trainer(bert_shaped(), Electra(), markov_data(), train_config(steps=3, batch_size=4), callbacks=[])
    trainer.fit()
    model, objective = trainer.model.eval(), trainer.objective.eval()
    assert export_diff(model, objective) < 1e-5


def test_export_refuses_a_non_bert_discriminator_naming_the_fields():
    model = tiny_model()  # pre-norm, tanh GELU
    with pytest.raises(ValueError) as info:
        electra_discriminator_to_transformers(model, set_up(model))
    assert "norm_placement='post'" in str(info.value) and "mlp='gelu_exact'" in str(info.value)
    with pytest.raises(RuntimeError, match="another model"):
        electra_discriminator_to_transformers(bert_shaped(), set_up(bert_shaped()))
