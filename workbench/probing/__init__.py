"""Probing: what does a pretrained model know? A labelled task, linear probes and classifiers.

    examples = story_gender_examples(tok, n=2000, block_size=32, seed=0)   # girl or boy? (story_labels.py)
    train, test = split_examples(examples)
    x = features(model, train.ids, "bidirectional", position=train.mask_positions)   # frozen representation
    accuracy = linear_probe(x, train.labels, x_test, test.labels)                    # linear_probe.py
    predicted, log_probs = generative_classify(model, test.ids, test.mask_positions,
                                               verbalizer_ids(tok), "bidirectional")  # classify.py
"""
from .classify import finetune_generative, finetune_linear_head, generative_classify
from .linear_probe import features, linear_probe
from .story_labels import (PRONOUNS, GenderExamples, child_names, example_names, parse_pieces, split_by_name,
                           split_examples, story_gender_examples, verbalizer_ids)

__all__ = ["GenderExamples", "PRONOUNS", "child_names", "example_names", "split_by_name",
           "features", "finetune_generative", "finetune_linear_head",
           "generative_classify", "linear_probe", "parse_pieces", "split_examples", "story_gender_examples",
           "verbalizer_ids"]
