"""Run the curate stage with a pause after chosen progress events, so a test can kill it mid-run.

    python tests/curate_slow_run.py OUTPUT --after write_done=0.6 --set curate.num_synthetic=84

The pause is an ``on_event`` hook of ``keye_model.data.curate.curate`` defined here, in
``__main__``: forked workers of the local engine find it by reference and Ray workers receive it
by value (cloudpickle), so the same wrapper slows down either engine. Nothing test-only lives in
the stage's own code.
"""

from __future__ import annotations

import argparse
import time

PAUSES: dict[str, float] = {}


def pause(event: str, unit: str) -> None:
    """Sleep after ``event`` for the configured seconds."""
    seconds = PAUSES.get(event, 0.0)
    if seconds > 0:
        time.sleep(seconds)


def main() -> None:
    from keye_model.config_utils import parse_assignments
    from keye_model.data.curate import curate
    from keye_model.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--input", dest="inputs", action="append", default=[])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--after", action="append", default=[], metavar="EVENT=SECONDS", help="Pause after EVENT."
    )
    args = parser.parse_args()
    for item in args.after:
        event, _, seconds = item.partition("=")
        PAUSES[event] = float(seconds)
    recipe = load_recipe(args.preset).override(parse_assignments(args.overrides))
    curate(recipe.curate, args.inputs, args.output, on_event=pause)


if __name__ == "__main__":
    main()
