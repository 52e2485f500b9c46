"""One rank of a launched stage (``torchrun -m keye_model.train.worker --stage NAME ...``).

torchx starts this module on every rank (locally or in a Volcano job) for every launched stage:
the gradient stages run the shared training loop, ``gspo`` runs the RL loop on the same engine.
Rank 0 writes ``<output>/stage_run.json`` for the launching stage function to read back.
"""

from __future__ import annotations

import argparse
import json
import sys

from keye_model import storage

RESULT_FILE = "stage_run.json"


def main(argv: list[str] | None = None) -> int:
    import torch.distributed as dist

    from keye_model.config_utils import apply_overrides

    parser = argparse.ArgumentParser(prog="keye_model.train.worker", description=__doc__)
    parser.add_argument("--stage", required=True, help="align, pretrain, anneal, sft or gspo.")
    parser.add_argument("--config-json", required=True, help="The stage's config as JSON.")
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--save-every", type=int, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    config = json.loads(args.config_json)
    where = (args.output, args.model, args.data, args.max_steps, args.save_every, args.resume)
    if args.stage == "gspo":
        from keye_model.rl.config import GSPOConfig
        from keye_model.rl.loop import GSPORun, run_gspo

        result = run_gspo(GSPORun(apply_overrides(GSPOConfig(), config), *where))
    else:
        from keye_model.train.config import TrainConfig
        from keye_model.train.loop import Run, train

        result = train(Run(args.stage, apply_overrides(TrainConfig(), config), *where))
    if dist.get_rank() == 0:
        result.write(storage.join(args.output, RESULT_FILE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
