"""The Ray engine of the curation stage (``curate.engine=ray``): Ray tasks and Ray Data jobs.

It calls the same functions as the local engine, only distributed, so both engines take the same
decisions and write byte-identical output whatever the number of workers:

- scan and write: one Ray task per work unit, ``num_workers`` in flight, running the same
  ``scan_unit`` / ``write_unit`` (a worker process builds the operators once and keeps them for
  its later tasks);
- dedup (``keye_model.data.dedup``), a Ray Data job: signatures read per unit; per kind, route
  rows are grouped by a partition of their route (a route group is never split), in rounds of a
  few bands when one shuffle would not fit the object store, and ``kind_edges`` verifies the
  candidates of each partition; the driver forms connected components from the edges; members
  are grouped by a partition of their component and ``resolve`` decides per component; drops
  are grouped by unit and written beside the scan output. Below ``ray_shuffle_min``
  signatures the same ``dedup.run_local`` runs as one task instead (shuffles cost more than
  they spread there).

The driver holds only the duplicate edges (components need them all at once); signatures,
route rows and samples stay on the workers.

    ray.init(num_cpus=2, include_dashboard=False)        # or let curate start one (ray_address '')
    curate(dataclasses.replace(cfg, engine="ray"), inputs, output)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np

from keye_model.data.config import CurateConfig
from keye_model.data.dedup import (
    KIND_COLUMNS,
    PARTITION_BYTES_PER_ROW,
    PARTITION_ROWS,
    DedupPlan,
    Edges,
    add_totals,
    kind_edges,
    members_of,
    read_signatures,
    read_unit_drops,
    resolve,
    route_partition,
    route_rows,
    run_local,
    scan_summary,
    signatures_uri,
    summary,
    take,
    totals,
    write_unit_drops,
)
from keye_model.data.neardup import components
from keye_model.data.readers import WorkUnit
from keye_model.log import get_logger, progress

log = get_logger("curate")
# Shuffle partitions (``RayEngine.partitions``): one per worker while the input is small (every
# extra partition is a few more tasks; measured here, 4 per worker tripled a 1,200-sample dedup's
# time to 3 s), up to PARTITIONS_PER_WORKER per worker once each holds BALANCE_ROWS, to balance
# uneven route groups; more when a partition would pass dedup.PARTITION_ROWS. The result does
# not depend on any of them.
PARTITIONS_PER_WORKER = 4
BALANCE_ROWS = 1 << 16
# Bytes of one route row in the shuffle besides its code: route, slot, rest, node and part.
ROUTE_ROW_BYTES = 40


@contextlib.contextmanager
def ray_runtime(cfg: CurateConfig) -> Iterator[int]:
    """Ray for one stage run: the session already open, else ``cfg.ray_address``; yields CPUs.

    ``ray_address`` '' starts a private local Ray with ``num_workers`` CPUs and no dashboard and
    stops it afterwards; a session the caller opened (a test, a notebook) is used as it is.
    """
    import ray
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    started = False
    if not ray.is_initialized():
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, logging_level="WARNING")
        else:
            ray.init(
                address="local",
                num_cpus=cfg.num_workers or os.cpu_count() or 1,
                include_dashboard=False,
                logging_level="WARNING",
            )
        started = True
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per dataset run
    context = DataContext.get_current()
    saved = (context.enable_progress_bars, context.shuffle_strategy)
    context.enable_progress_bars = False  # one line per phase from our logger instead
    # Measured here: a small groupby takes ~0.1 s with the sort-based shuffle against ~5 s with
    # the hash shuffle, which starts aggregator actors first.
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        context.enable_progress_bars, context.shuffle_strategy = saved
        if started:
            ray.shutdown()


class RayEngine:
    """Scan, dedup and write on Ray; the same interface as ``curate.LocalEngine``."""

    name = "ray"

    def __init__(self, cpus: int, num_workers: int, shuffle_min: int = 0, round_bytes: int = 0):
        self.workers = max(1, num_workers or cpus)
        self.shuffle_min = shuffle_min
        self.round_bytes = round_bytes

    def rounds(self, route_bytes: int, plan: DedupPlan, kind: str) -> int:
        """Shuffle rounds for one kind's route rows: each round at most ``round_bytes`` (default:
        half the cluster's object store, so a round does not spill to disk), one copy at least."""
        import ray

        budget = self.round_bytes or ray.cluster_resources().get("object_store_memory", 0) // 2
        wanted = math.ceil(route_bytes / budget) if budget else 1
        rounds = max(1, min(wanted, plan.rows_per_signature(kind)))
        if rounds > 1:
            log.info(
                "dedup %s: %d shuffle rounds of ~%.0f MB", kind, rounds, route_bytes / rounds / 1e6
            )
        return rounds

    def partitions(self, rows: int) -> int:
        """Partitions of a shuffle of ``rows`` rows (see BALANCE_ROWS)."""
        balanced = min(PARTITIONS_PER_WORKER, max(1, math.ceil(rows / BALANCE_ROWS)))
        return max(balanced * self.workers, math.ceil(rows / PARTITION_ROWS))

    def _tasks(self):
        from ray.data import TaskPoolStrategy

        return TaskPoolStrategy(size=self.workers)

    def _map_units(self, fn: Callable, units: list[WorkUnit], args: tuple, desc: str) -> None:
        """Run ``fn(unit, *args)`` for every unit as Ray tasks, at most ``num_workers`` at once.

        Plain tasks, not a Ray Data ``map``: a unit is already a whole task's work and needs no
        shuffle, and Ray Data's streaming executor spent ~0.3 driver CPU seconds per second of
        scan here. Ray keeps a job's worker processes, so the operators a scan task builds
        (``curate._scanner``'s per-process cache) serve the next tasks there. A failed task
        raises its own exception here, after the tasks in flight have finished.
        """
        for _ in progress(self._finished(fn, units, args), desc=desc, total=len(units)):
            pass

    def _finished(self, fn: Callable, units: list[WorkUnit], args: tuple) -> Iterator[None]:
        """Submit ``fn(unit, *args)`` tasks, ``num_workers`` in flight; yield as each finishes."""
        import ray

        task = ray.remote(num_cpus=1, max_retries=0)(fn)
        arguments = [ray.put(a) for a in args]  # shipped once, not once per unit
        pending, queue = [], list(units)
        while queue or pending:
            while queue and len(pending) < self.workers:
                pending.append(task.remote(queue.pop(0), *arguments))
            done, pending = ray.wait(pending, num_returns=1)
            try:
                _get(done)
            except Exception:
                ray.wait(pending, num_returns=len(pending))  # let the running units finish
                raise
            yield

    def scan(
        self,
        units: list[WorkUnit],
        cfg_json: str,
        tokenizer_json: str,
        work: str,
        on_event: Callable | None,
    ) -> None:
        """Phase 1 for ``units`` (``curate.scan_unit`` in Ray tasks)."""
        self._map_units(_scan, units, (cfg_json, tokenizer_json, work, on_event), "scan")

    def write(
        self,
        units: list[WorkUnit],
        cfg_json: str,
        work: str,
        output: str,
        factors: dict[str, float],
        on_event: Callable | None,
    ) -> None:
        """Phase 4 for ``units`` (``curate.write_unit`` in Ray tasks)."""
        self._map_units(_write, units, (cfg_json, work, output, factors, on_event), "write")

    def dedup(self, plan: DedupPlan, units: list[WorkUnit], work: str) -> dict:
        """Phase 2 as a Ray Data job (one task below ``shuffle_min`` signatures); writes the
        drop files and returns the summary."""
        import ray
        import ray.data

        rows = [{"index": u.index, "name": u.name} for u in units]
        if not rows:
            return summary(totals({}), totals({}), Counter(), Edges.empty(), 0)
        count = sum(scan_summary(work, u.name)["passed"] for u in units) if self.shuffle_min else 0
        if count < self.shuffle_min:
            log.info(
                "dedup: %d signatures (< ray_shuffle_min %d): one Ray task", count, self.shuffle_min
            )
            single = ray.remote(num_cpus=1, max_retries=0)(run_local)
            return _get(single.remote(plan, units, work))
        tasks = self._tasks()
        sigs = (
            ray.data.from_items(rows, override_num_blocks=min(len(rows), self.partitions(0)))
            .map_batches(_read_units, fn_args=(work,), batch_size=1, compute=tasks)
            .materialize()
        )
        everything = _sum_totals(sigs)
        found = []
        for kind in plan.kinds:
            if not everything["kinds"].get(kind):
                continue  # no signature of this kind (often: videos): skip its shuffle
            route_count = everything["kinds"][kind] * plan.rows_per_signature(kind)
            rounds = self.rounds(
                route_count * (ROUTE_ROW_BYTES + plan.code_width(kind)), plan, kind
            )
            parts = self.partitions(math.ceil(route_count / rounds))
            for round_ in ((r, rounds) for r in range(rounds)):
                routed = sigs.map_batches(
                    _route, fn_args=(plan, kind, parts, round_), batch_format="numpy", compute=tasks
                )
                edges = routed.groupby("part", num_partitions=parts).map_groups(
                    _edges,
                    fn_args=(plan, kind),
                    batch_format="numpy",
                    compute=tasks,
                    # Tells Ray's scheduler how many of these fit on a node at once.
                    memory=math.ceil(route_count / rounds / parts) * PARTITION_BYTES_PER_ROW,
                )
                for batch in edges.iter_batches(batch_format="numpy", batch_size=None):
                    found.append(_edges_from_rows(batch))
        edges = Edges.merge(found)
        nodes, labels = components(edges.first, edges.second)
        count = int((nodes == labels).sum())  # a component's label is its smallest node
        log.info("dedup: %d edges, %d components", len(edges.first), count)
        graph = ray.put((nodes, labels))
        parts = self.partitions(len(nodes))
        drops = (
            sigs.map_batches(_members, fn_args=(graph, parts), batch_format="numpy", compute=tasks)
            .groupby("part", num_partitions=parts)
            .map_groups(_resolve, fn_args=(plan,), batch_format="numpy", compute=tasks)
            .materialize()
        )
        names = {u.index: u.name for u in units}
        drops.groupby("unit", num_partitions=min(len(units), parts)).map_groups(
            _write_drops, fn_args=(work, names), batch_format="numpy", compute=tasks
        ).materialize()
        dropped = _sum_totals(drops)
        reasons = Counter(dropped["reasons"])
        return summary(everything, dropped, reasons, edges, count)


# ---------------------------------------------------------------------------------------------
# What runs on the workers (module level: Ray ships these functions by reference)


def _get(refs):
    """``ray.get`` that raises a failed task's own exception (the worker's traceback in its
    message) rather than Ray's wrapper."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        raise err.as_instanceof_cause() from None


def _scan(unit: WorkUnit, cfg_json: str, tokenizer_json: str, work: str, on_event) -> None:
    from keye_model.data.curate import scan_unit

    scan_unit(unit, cfg_json, tokenizer_json, work, on_event=on_event)


def _write(unit: WorkUnit, cfg_json: str, work: str, output: str, factors, on_event) -> None:
    from keye_model.data.curate import write_unit

    write_unit(unit, cfg_json, work, output, read_unit_drops(work, unit.name), factors, on_event)


def _read_units(batch: dict[str, np.ndarray], work: str) -> dict[str, np.ndarray]:
    from keye_model.data.dedup import concat

    tables = [
        read_signatures(signatures_uri(work, str(name)), int(index))
        for index, name in zip(batch["index"], batch["name"])
    ]
    return concat(tables)


def _route(batch: dict, plan: DedupPlan, kind: str, parts: int, round_: tuple[int, int]) -> dict:
    rows = route_rows(batch, plan, kind, round_)
    if not len(rows["node"]):
        # Ray Data cannot turn a zero-row 2-D array into its tensor column (it falls back to
        # pickled objects): a batch without rows of this kind sends one placeholder (node -1).
        rows = {
            name: np.zeros((1, *column.shape[1:]), column.dtype) for name, column in rows.items()
        }
        rows["node"][:] = -1
    rows["part"] = route_partition(rows["route"], parts)
    return rows


def _edges(batch: dict, plan: DedupPlan, kind: str) -> dict:
    edges = kind_edges(kind, take(batch, batch["node"] >= 0), plan)
    # One extra row (-1, -1) carries the partition's hot-bucket counts.
    return {
        "first": np.r_[edges.first, -1].astype(np.int64),
        "second": np.r_[edges.second, -1].astype(np.int64),
        "capped_buckets": np.r_[np.zeros(len(edges.first)), edges.capped_buckets].astype(np.int64),
        "capped_members": np.r_[np.zeros(len(edges.first)), edges.capped_members].astype(np.int64),
    }


def _edges_from_rows(batch: dict) -> Edges:
    real = batch["first"] >= 0
    return Edges(
        batch["first"][real],
        batch["second"][real],
        int(batch["capped_buckets"].sum()),
        int(batch["capped_members"].sum()),
    )


def _members(batch: dict, graph, parts: int) -> dict:
    import ray

    nodes, labels = ray.get(graph)
    table = members_of(batch, nodes, labels)
    if not table:
        table = take(batch, np.zeros(len(batch["node"]), dtype=bool))
        table["comp"] = np.zeros(0, dtype=np.int64)
    table["part"] = route_partition(table["comp"].astype(np.uint64), parts)
    return table


def _resolve(batch: dict, plan: DedupPlan) -> dict:
    drops = resolve(batch, plan)
    drops["unit"] = drops["node"] >> 32
    return drops


def _write_drops(batch: dict, work: str, names: dict[int, str]) -> dict:
    unit = int(batch["unit"][0])
    write_unit_drops(work, names[unit], batch)
    return {"unit": np.array([unit]), "drops": np.array([len(batch["node"])])}


def _totals_row(batch: dict) -> dict:
    """``dedup.totals`` of a batch, plus its signatures per kind (or its drops per reason)."""
    result = totals(batch)
    if "reason" in batch:
        result["reasons"] = Counter(str(r) for r in batch["reason"])
    else:
        result["kinds"] = {
            kind: int(sum(len(code) > 0 for code in batch[column]))
            for kind, column in KIND_COLUMNS.items()
        }
    return {"totals": np.array([json.dumps(result)], dtype=object)}


def _sum_totals(dataset) -> dict:
    """The sums of ``_totals_row`` over a dataset."""
    parts = [
        json.loads(value)
        for batch in dataset.map_batches(_totals_row, batch_format="numpy").iter_batches(
            batch_format="numpy"
        )
        for value in batch["totals"]
    ]
    result = add_totals(parts)
    for extra in ("kinds", "reasons"):
        counts: Counter = Counter()
        for part in parts:
            counts.update(part.get(extra, {}))
        result[extra] = dict(counts)
    return result
