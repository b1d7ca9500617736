"""``python -m traitflow.toy``: write the toy datasets, train the toy models, check them.

python -m traitflow.toy data   [--out datasets]
python -m traitflow.toy train  [--out datasets/models] [--seed 0] [--minutes M]
python -m traitflow.toy verify [--models datasets/models] [--datasets datasets]
"""

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m traitflow.toy", description="The toy world of traitflow.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="write datasets/traits/toy/* and datasets/inference/toy/general.json")
    data.add_argument("--out", type=Path, default=Path("datasets"), help="datasets root (default: datasets)")

    train = sub.add_parser("train", help="train tokenizer, chat model and pessimist LoRA (CPU, minutes)")
    train.add_argument("--out", type=Path, default=Path("datasets/models"))
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--minutes", type=float, default=None, help="cap on wall time (stopping early breaks determinism)")
    train.add_argument("--steps", type=int, default=None, help="chat model steps (default from TrainConfig)")
    train.add_argument("--lora-steps", type=int, default=None)
    train.add_argument("--skip-chat", action="store_true", help="only retrain the LoRA over the existing chat model")

    verify = sub.add_parser("verify", help="generate with the toy models and print keyword-judge numbers")
    verify.add_argument("--models", type=Path, default=Path("datasets/models"))
    verify.add_argument("--datasets", type=Path, default=Path("datasets"))
    verify.add_argument("--max-new-tokens", type=int, default=24)

    args = parser.parse_args(argv)
    if args.command == "data":
        from traitflow.toy.datasets import write_all

        for path in write_all(args.out):
            print(path)
        return 0
    if args.command == "train":
        import dataclasses
        import time

        from traitflow.toy.train import TrainConfig, train_all, train_lora

        config = TrainConfig(seed=args.seed)
        if args.steps is not None:
            config = dataclasses.replace(config, steps=args.steps)
        if args.lora_steps is not None:
            config = dataclasses.replace(config, lora_steps=args.lora_steps)
        if args.skip_chat:
            deadline = time.time() + 60 * args.minutes if args.minutes else None
            summary = {"lora": train_lora(args.out, config, deadline)}
        else:
            summary = train_all(args.out, config, args.minutes)
        print(json.dumps(summary, indent=2))
        return 0
    if args.command == "verify":
        from traitflow.toy.train import verify as run_verify

        report = run_verify(args.models, args.datasets, max_new_tokens=args.max_new_tokens)
        print(json.dumps(report, indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
