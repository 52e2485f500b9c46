"""A tiny torchrun worker for the launch tests: a gloo all_reduce of each rank's number.

Every rank prints its rank and the reduced sum; ``KEYE_TEST_FAIL_RANK=N`` makes rank N exit with an
error after the all_reduce, so the launcher's failure path sees a real failing rank.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    print(f"rank {rank}/{world} all_reduce sum={value.item():g} args={sys.argv[1:]}", flush=True)
    fail_rank = os.environ.get("KEYE_TEST_FAIL_RANK")
    dist.destroy_process_group()
    if fail_rank is not None and int(fail_rank) == rank:
        print(f"rank {rank} failing on purpose", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
