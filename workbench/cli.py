"""``workbench``: the library outside notebooks.

    workbench tour                      train a tiny GPT on the built-in stories and print samples
    workbench train --data pydoc --steps 500 --out runs/pydoc
    workbench train --attention gla --position none --out runs/gla     (any registered variant)
    workbench sample --checkpoint runs/pydoc --prompt "The "
    workbench bench                     training speed and time-to-loss against references
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence


def _add_training_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=("ci", "cpu", "gpu"), default=None,
                        help="size preset (default: $WORKBENCH_PRESET, else gpu with CUDA, else cpu)")
    parser.add_argument("--data", default="stories",
                        help="stories | pydoc | file:PATH | PATH | hf:NAME[:CONFIG] (default: stories)")
    parser.add_argument("--tokenizer", default="char", help="char | byte | bpe | bpe:VOCAB (default: char)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--n-layer", type=int, default=None)
    parser.add_argument("--n-head", type=int, default=None)
    parser.add_argument("--d-model", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--attention", default=None,
                        help="token mixer: mha (default), sliding_window, mla, linear, gla, delta, ssd, ...")
    parser.add_argument("--position", default=None, help="learned (default) | rope | alibi | none")
    parser.add_argument("--n-kv-head", type=int, default=None, help="key/value heads (GQA; 1 = MQA)")
    parser.add_argument("--window", type=int, default=None, help="sliding_window: keys each query reads")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--seed", type=int, default=1337)


def _build(args, out_dir: Optional[Path] = None):
    """Data, model and Trainer from CLI arguments and the preset."""
    from .data import TokenData, load_text, tokenizer_from_name
    from .models import GPT
    from .objectives import CausalLM
    from .presets import preset
    from .train import PrintLogger, Trainer

    chosen = preset(args.preset)
    text = load_text(args.data, n_chars=chosen.corpus_chars, seed=args.seed)
    tokenizer = tokenizer_from_name(args.tokenizer, text)
    data = TokenData.from_text(text, tokenizer)
    model_changes = {k: v for k, v in dict(n_layer=args.n_layer, n_head=args.n_head, d_model=args.d_model,
                                           block_size=args.block_size, attention=args.attention,
                                           position=args.position, n_kv_head=args.n_kv_head,
                                           window=args.window).items() if v is not None}
    train_changes = {k: v for k, v in dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr).items()
                     if v is not None}
    model = GPT(chosen.model_config(tokenizer.vocab_size, **model_changes))
    config = chosen.train_config(device=args.device, seed=args.seed, **train_changes)
    trainer = Trainer(model, CausalLM(), data, config, callbacks=[PrintLogger()], out_dir=out_dir)
    return chosen, text, tokenizer, data, model, trainer


def cmd_train(args) -> int:
    out = Path(args.out)
    chosen, _, tokenizer, data, model, trainer = _build(args, out)
    if args.resume and (out / "latest.json").exists():
        trainer.load_checkpoint(out)
        print(f"resumed {out} at step {trainer.step}")
    print(f"preset {chosen.name} | {model.summary()}")
    print(f"data {args.data}: {data.n_tokens:,} tokens ({args.tokenizer} tokenizer, vocab {tokenizer.vocab_size})")
    trainer.fit()
    path = trainer.save_checkpoint()
    print(f"saved {path} (sample with: workbench sample --checkpoint {out})")
    return 0


def cmd_sample(args) -> int:
    from .generate import sample_text
    from .train import load_model

    model, tokenizer = load_model(args.checkpoint)
    if tokenizer is None:
        print(f"error: {args.checkpoint} has no tokenizer.json; it was saved without a tokenizer", file=sys.stderr)
        return 2
    for i in range(args.num_samples):
        text = sample_text(model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed + i)
        print(text)
        print("-" * 40)
    return 0


def cmd_tour(args) -> int:
    from .data import default_story_source
    from .generate import sample_text

    start = time.perf_counter()
    args.data, args.tokenizer = "stories", "char"
    chosen, _, tokenizer, data, model, trainer = _build(args)
    floor = default_story_source().entropy_rate_per_char()
    print(f"LM Workbench tour (preset {chosen.name})")
    print(f"  data: synthetic stories, {data.n_tokens:,} characters; their entropy rate is exactly "
          f"{floor:.4f} nats/char, the lowest loss any model can reach")
    print(f"  model: {model.summary()}")
    trainer.fit()
    final = trainer.history["eval"][-1]["val_loss"] if trainer.history["eval"] else trainer.evaluate()
    print(f"\nvalidation loss {final:.4f} nats/char vs floor {floor:.4f} "
          f"(gap {final - floor:.4f}); started from ln(vocab) = {__import__('math').log(tokenizer.vocab_size):.3f}")
    for i, temperature in enumerate((0.0, 0.8)):
        print(f"\n--- sample, temperature {temperature} ---")
        print(sample_text(model, tokenizer, "Once upon a time", chosen.sample_tokens, temperature=temperature,
                          seed=i))
    print(f"\ntour finished in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_bench(argv: Sequence[str]) -> int:
    from . import bench

    return bench.main(list(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # the benchmark owns its flags
        return cmd_bench(argv[1:])
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a GPT and save checkpoints")
    _add_training_args(train)
    train.add_argument("--out", required=True, help="run directory for checkpoints")
    train.add_argument("--resume", action="store_true", help="continue from OUT/latest.json if present")
    train.set_defaults(handler=cmd_train)

    sample = commands.add_parser("sample", help="generate text from a checkpoint")
    sample.add_argument("--checkpoint", required=True, help="run directory or step-* folder")
    sample.add_argument("--prompt", default="\n")
    sample.add_argument("--max-new-tokens", type=int, default=200)
    sample.add_argument("--temperature", type=float, default=0.8)
    sample.add_argument("--top-k", type=int, default=None)
    sample.add_argument("--top-p", type=float, default=None)
    sample.add_argument("--num-samples", type=int, default=1)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(handler=cmd_sample)

    tour = commands.add_parser("tour", help="train a tiny GPT on built-in stories and print samples")
    _add_training_args(tour)
    tour.set_defaults(handler=cmd_tour)

    commands.add_parser("bench", help="training throughput and time-to-loss benchmark (see workbench bench -h)")

    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
