"""One rank of a launched GSPO stage (``torchrun -m keye_model.rl.worker ...``).

torchx starts this module on every rank (locally or in a Volcano job), as it starts
``keye_model.train.worker`` for the training stages; rank 0 writes ``<output>/gspo_result.json``
for the launching stage function to read back.
"""

from __future__ import annotations

import argparse
import json
import sys

from keye_model import storage


def main(argv: list[str] | None = None) -> int:
    import torch.distributed as dist

    from keye_model.config_utils import apply_overrides
    from keye_model.rl.config import GSPOConfig
    from keye_model.rl.loop import GSPORun, run_gspo
    from keye_model.rl.stages import RESULT_FILE

    parser = argparse.ArgumentParser(prog="keye_model.rl.worker", description=__doc__)
    parser.add_argument("--config-json", required=True, help="The stage's GSPOConfig as JSON.")
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--save-every", type=int, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    cfg = apply_overrides(GSPOConfig(), json.loads(args.config_json))
    run = GSPORun(
        cfg, args.output, args.model, args.data, args.max_steps, args.save_every, args.resume
    )
    result = run_gspo(run)
    if dist.get_rank() == 0:
        result.write(storage.join(args.output, RESULT_FILE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
