"""``workbench``: the library outside notebooks.

    workbench tour                      train a tiny GPT on the built-in stories and print samples
    workbench train --data pydoc --steps 500 --out runs/pydoc
    workbench train --attention gla --position none --out runs/gla     (any registered variant)
    workbench train --objective mlm --option mask_ratio=0.3 --out runs/mlm    (any registered objective)
    workbench sample --checkpoint runs/pydoc --prompt "The "
    workbench sample --checkpoint runs/mdlm --steps 16 --sampler low_confidence   (a masked diffusion run)
    workbench bench                     training speed and time-to-loss against references
    workbench warm                      run every notebook once: what they train is cached for class
    workbench student-edition DIR       the notebooks with the exercise solutions taken out

`workbench train` never replaces a run by accident: onto a run directory that
holds checkpoints it needs --resume (continue) or --overwrite (start over).
It saves every --checkpoint-every steps, on Ctrl-C, and when training stops
on a NaN/inf loss (the last good state). Exit codes: 0 done, 1 training
stopped (NaN/inf), 2 bad input, 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .interrupts import held_interrupts


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


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
    parser.add_argument("--objective", default=None,
                        help="pretraining objective: clm (default), mlm, prefix_lm, t5_span, electra, meap, "
                             "clm_then_mlm, ... (with --resume: the run's own)")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the objective, e.g. -o mask_ratio=0.3 -o strategy=span (repeatable)")
    parser.add_argument("--seed", type=int, default=1337,
                        help="seeds the data sample, the initial weights and training (same seed, same model)")


def parse_objective_options(name: str, pairs: Sequence[str]) -> dict:
    """``["mask_ratio=0.3", ...]`` -> ``{"mask_ratio": 0.3}``, each value read as the type of the option's default
    (JSON for lists, dicts and options without a default). Unknown keys and unreadable values: one clear error."""
    import json

    from .objectives import option_types

    defaults = option_types(name)
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--option {pair!r} is not KEY=VALUE (e.g. --option mask_ratio=0.3)")
        if key not in defaults:
            raise ValueError(f"objective {name!r} has no option {key!r}; its options are: "
                             f"{', '.join(defaults) if defaults else '(none)'}")
        default = defaults[key]
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError("expected true or false")
                value = text.lower() in ("true", "1", "yes")
            elif isinstance(default, int):
                value = int(text)
            elif isinstance(default, float):
                value = float(text)
            elif isinstance(default, str):
                value = text
            else:
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    value = text
        except ValueError as error:
            raise ValueError(f"--option {key}={text!r}: {error} (the default is {default!r})") from None
        options[key] = value
    return options


def _objective(args, saved=None, tokenizer=None):
    """The objective named on the command line, or the run's own (``saved``, a checkpoint entry) on resume."""
    from .objectives import make_objective, objective_from_dict

    if args.objective is None and saved is not None:
        if args.option:
            raise ValueError("--option needs --objective NAME: name the objective whose options these are")
        return objective_from_dict(saved, tokenizer)
    name = args.objective or "clm"
    return make_objective(name, tokenizer, **parse_objective_options(name, args.option))


def _build(args, out_dir: Optional[Path] = None, tokenizer=None, checkpoint_every: Optional[int] = 0,
           saved_objective=None):
    """Data, model, objective and Trainer from CLI arguments and the preset.

    ``tokenizer``: a resumed run's own; ``checkpoint_every=None``: the preset's eval_every;
    ``saved_objective``: a resumed run's objective entry (used unless --objective names one).
    """
    from .data import TokenData, load_text, tokenizer_from_name
    from .models import GPT
    from .presets import preset
    from .train import PrintLogger, Trainer

    chosen = preset(args.preset)
    text = load_text(args.data, n_chars=chosen.corpus_chars, seed=args.seed)
    tokenizer = tokenizer if tokenizer is not None else tokenizer_from_name(args.tokenizer, text)
    objective = _objective(args, saved_objective, tokenizer)
    data = TokenData.from_text(text, tokenizer, source=args.data)
    model_changes = {k: v for k, v in dict(n_layer=args.n_layer, n_head=args.n_head, d_model=args.d_model,
                                           block_size=args.block_size, attention=args.attention,
                                           position=args.position, n_kv_head=args.n_kv_head,
                                           window=args.window).items() if v is not None}
    train_changes = {k: v for k, v in dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr).items()
                     if v is not None}
    # an objective may need ids beyond the tokenizer's (T5's sentinels)
    model = GPT(chosen.model_config(tokenizer.vocab_size + objective.extra_vocab, **model_changes), seed=args.seed)
    config = chosen.train_config(device=args.device, seed=args.seed, **train_changes)
    config = config.replace(checkpoint_every=config.eval_every if checkpoint_every is None else checkpoint_every)
    trainer = Trainer(model, objective, data, config, callbacks=[PrintLogger()], out_dir=out_dir)
    return chosen, text, tokenizer, data, model, trainer


def _run_in(out: Path) -> Optional[str]:
    """Check that ``out`` can hold a run, before any training; say what run it holds already, if any."""
    from .train import checkpoint as ckpt

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory; choose another --out")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {out} cannot be created: {existing} is a file; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} cannot be written: {existing} is not writable; choose another --out")
    if existing != out:
        return None
    steps = ckpt.checkpoint_folders(out)
    if (out / "latest.json").exists():
        return f"{out} holds a run (latest.json, {len(steps)} checkpoint folder(s))"
    return f"{out} holds checkpoint folders ({', '.join(p.name for p in steps)})" if steps else None


def cmd_train(args) -> int:
    from .train import NonFiniteLossError
    from .train import checkpoint as ckpt

    out = Path(args.out)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite deletes it: choose one")
    existing = _run_in(out)
    if existing and not (args.resume or args.overwrite):
        raise ValueError(f"{existing}. Continue it with --resume, start over with --overwrite (deletes its "
                         "checkpoints), or choose another --out")
    resuming = bool(existing) and args.resume
    run_tokenizer = ckpt.load_checkpoint_tokenizer(ckpt.resolve(out)) if resuming else None
    saved_objective = (ckpt.read_checkpoint(out)[1].get("objective") or "clm") if resuming else None
    chosen, _, tokenizer, data, model, trainer = _build(args, out, tokenizer=run_tokenizer,
                                                        checkpoint_every=args.checkpoint_every,
                                                        saved_objective=saved_objective)
    if resuming:
        trainer.load_checkpoint(out, allow_new_data=args.allow_new_data)
        print(f"resumed {out} at step {trainer.step}" + (" (with the run's own tokenizer)" if run_tokenizer else ""))
    elif existing:  # --overwrite, now that everything else checked out
        ckpt.remove_run(out)
        print(f"--overwrite: removed the checkpoints in {out}")
    print(f"preset {chosen.name} | {model.summary()}")
    print(f"objective {trainer.objective.name} ({trainer.objective.extra_repr() or 'default options'}), "
          f"attention {trainer.objective.attention_mode}")
    print(f"data {args.data}: {data.n_tokens:,} tokens ({tokenizer.kind} tokenizer, vocab {tokenizer.vocab_size})")
    try:
        trainer.fit()
    except NonFiniteLossError as error:
        path = trainer.save_checkpoint()
        print(f"error: {error}\nsaved the last good state (step {trainer.step}) to {path}; continue it with "
              "--resume and a lower --lr", file=sys.stderr)
        return 1
    path = trainer.save_checkpoint()
    if trainer.interrupted:
        print(f"saved step {trainer.step} to {path}; continue with the same command plus --resume", file=sys.stderr)
        return 130
    print(f"saved {path} (sample with: workbench sample --checkpoint {out})")
    return 0


def cmd_sample(args) -> int:
    from .generate import sample_text
    from .train import load_model
    from .train.checkpoint import load_objective

    model, tokenizer = load_model(args.checkpoint)
    if tokenizer is None:
        print(f"error: {args.checkpoint} has no tokenizer.json; it was saved without a tokenizer", file=sys.stderr)
        return 2
    objective = load_objective(args.checkpoint, model)
    diffusion = objective.name == "mdlm"
    if not diffusion and (args.steps is not None or args.sampler is not None):
        print(f"error: --steps and --sampler are for masked diffusion runs; {args.checkpoint} was trained with the "
              f"objective {objective.name!r} and samples left to right: leave them out", file=sys.stderr)
        return 2
    for i in range(args.num_samples):
        if diffusion:
            text = _diffusion_sample(model, objective, tokenizer, args, seed=args.seed + i)
        else:
            text = sample_text(model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p, seed=args.seed + i)
        print(text)
        print("-" * 40)
    return 0


def _diffusion_sample(model, objective, tokenizer, args, seed: int) -> str:
    """A masked diffusion run's sample: the prompt, then as many [MASK]s as fit, filled in ``--steps`` steps."""
    import torch

    from .diffusion import generate

    prompt = tokenizer.encode(args.prompt)
    room = model.config.block_size - len(prompt)
    if room < 1:
        raise ValueError(f"the prompt has {len(prompt)} tokens and leaves no room in the context of "
                         f"{model.config.block_size}; a diffusion model writes inside its window: shorten it")
    new = min(args.max_new_tokens, room)
    trace = generate(model, objective, prompt, new, args.steps or new, sampler=args.sampler or "low_confidence",
                     temperature=args.temperature, generator=torch.Generator().manual_seed(seed))
    return tokenizer.decode(trace.tokens.tolist(), skip_special=True)


def cmd_tour(args) -> int:
    from .data import default_story_source
    from .generate import sample_text

    start = time.perf_counter()
    args.data, args.tokenizer, args.objective, args.option = "stories", "char", "clm", []
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


def cmd_warm(args) -> int:
    from .classroom import warm_cache

    preset = args.preset or os.environ.get("WORKBENCH_PRESET") or _default_preset()
    timings = warm_cache(preset, args.notebooks)
    print(f"wall time per notebook (preset {preset}, {os.cpu_count()} cores):")
    for name, seconds in timings:
        print(f"  {name:<32} {seconds:6.1f} s")
    return 0


def _default_preset() -> str:
    from .presets import preset

    return preset().name


def cmd_student_edition(args) -> int:
    from .exercises.editions import write_student_edition

    written = write_student_edition(args.out, args.notebooks or None, overwrite=args.overwrite)
    for name, replaced in written.items():
        print(f"  {name}: {replaced} solutions replaced by stubs")
    print(f"student edition written to {args.out}: open it with `jupyter lab {args.out}`; each check prints "
          "'not yet' until the student's function is written")
    return 0


def cmd_bench(argv: Sequence[str]) -> int:
    from . import bench

    return bench.main(list(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = None if argv[:1] == ["bench"] else _parse(argv)  # the benchmark owns its flags
        with held_interrupts():  # Ctrl-C in the first seconds must not leave a library half imported
            _import_libraries()
        return cmd_bench(argv[1:]) if args is None else args.handler(args)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); a run directory keeps its last complete checkpoint", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as error:  # CheckpointError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2


def _import_libraries() -> None:
    """The heavy imports every command needs (torch, datasets, tokenizers), done in one place."""
    import torch  # noqa: F401

    from . import data, models, train  # noqa: F401


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a GPT and save checkpoints")
    _add_training_args(train)
    train.add_argument("--out", required=True, help="run directory for checkpoints")
    train.add_argument("--resume", action="store_true", help="continue the run in OUT (a new run if OUT has none)")
    train.add_argument("--overwrite", action="store_true", help="start over: delete the checkpoints already in OUT")
    train.add_argument("--allow-new-data", action="store_true",
                       help="with --resume: continue on data other than the run's (e.g. fine-tuning)")
    train.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                       help="save every N steps (default: the preset's eval_every; 0: only at the end)")
    train.set_defaults(handler=cmd_train)

    sample = commands.add_parser("sample", help="generate text from a checkpoint")
    sample.add_argument("--checkpoint", required=True, help="run directory or step-* folder")
    sample.add_argument("--prompt", default="\n")
    sample.add_argument("--max-new-tokens", type=int, default=200)
    sample.add_argument("--temperature", type=float, default=0.8)
    sample.add_argument("--top-k", type=int, default=None)
    sample.add_argument("--top-p", type=float, default=None)
    sample.add_argument("--num-samples", type=_positive_int, default=1)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--steps", type=_positive_int, default=None,
                        help="masked diffusion runs: denoising steps (default: one per new token)")
    sample.add_argument("--sampler", choices=["low_confidence", "random", "ancestral"], default=None,
                        help="masked diffusion runs: the sampler (default: low_confidence)")
    sample.set_defaults(handler=cmd_sample)

    tour = commands.add_parser("tour", help="train a tiny GPT on built-in stories and print samples")
    _add_training_args(tour)
    tour.set_defaults(handler=cmd_tour)

    commands.add_parser("bench", help="training throughput and time-to-loss benchmark (see workbench bench -h)")

    warm = commands.add_parser("warm", help="run every notebook once so that what they train is cached for class")
    warm.add_argument("--preset", choices=("ci", "cpu", "gpu"), default=None,
                      help="the preset the class will use (default: $WORKBENCH_PRESET, else the machine's)")
    warm.add_argument("notebooks", nargs="*", help="notebooks to run (default: all)")
    warm.set_defaults(handler=cmd_warm)

    student = commands.add_parser("student-edition", help="write the notebooks with the solutions taken out")
    student.add_argument("out", help="folder to write the student notebooks into")
    student.add_argument("--overwrite", action="store_true", help="replace student notebooks already in OUT")
    student.add_argument("--notebooks", nargs="*", default=None, help="teacher notebooks (default: all)")
    student.set_defaults(handler=cmd_student_edition)

    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
