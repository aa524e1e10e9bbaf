"""What the new objectives train still exports to transformers: a BERT-shaped model trained with masked LM is a
BertForMaskedLM with the same logits (ELECTRA's discriminator export is tested in test_electra.py)."""
import torch

from helpers import markov_data, single_thread, train_config  # noqa: F401
from workbench.config import ModelConfig
from workbench.hf import to_transformers
from workbench.models import GPT
from workbench.objectives import MaskedLM
from workbench.train import Trainer

BERT_SHAPE = dict(norm="layernorm", norm_placement="post", head="mlm", mlp="gelu_exact", position="learned",
                  bias=True)


def test_a_masked_lm_trained_bert_exports_with_the_same_logits():
    model = GPT(ModelConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, d_model=32, **BERT_SHAPE), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, MaskedLM(mask_ratio=0.3), markov_data(), train_config(steps=5, batch_size=4), callbacks=[]).fit()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it trained
    hf = to_transformers(model.eval()).eval()
    ids = markov_data().get_batch("val", 3, 16, torch.Generator().manual_seed(0))
    ids[:, 5] = 1  # a [MASK], as the model reads it in training
    with torch.no_grad():
        ours = model(ids, attention_mode="bidirectional").logits
        theirs = hf(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
