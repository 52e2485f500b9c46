"""Launch a training stage through torchx: torchrun on this machine or a Volcano job on Kubernetes.

One AppDef serves both: torchx's own ``dist.ddp`` component runs
``torchrun ... -m keye_model.train.worker <the stage's argv>``. The scheduler makes the difference:

- ``local_cwd``: one torchrun with ``launch.nproc_per_node`` CPU processes (the worker picks gloo).
- ``kubernetes``: a Volcano ``batch.volcano.sh/v1alpha1`` Job of ``launch.nodes`` pods with
  ``launch.gpus_per_node`` GPUs and as many ranks each, a memory-backed ``/dev/shm`` of
  ``launch.shm_size``, the S3/MLflow environment, and credentials from Kubernetes Secrets.

``submit_and_follow`` submits (``runner.dryrun`` -> ``runner.schedule``), streams every node's log
lines (each prefixed ``[rankN]:`` by torchrun, so ``kubectl logs`` reads the same), reports state
changes and raises ``LaunchError`` with the failing rank's last lines when the job does not succeed.
"""

from __future__ import annotations

import collections
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from keye_model.log import get_logger
from keye_model.train.config import SCHEDULERS, TrainConfig

WORKER_MODULE = "keye_model.train.worker"
# torchrun prefixes every worker line with this (global rank, not local: unique across nodes).
LOG_PREFIX_TEMPLATE = "[rank${rank}]: "
# Passed literally into the job: where S3 and MLflow are and which run to nest under.
PASSTHROUGH_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "KEYE_PARENT_RUN_ID",
)
# Never written into a job object (anyone who can read Jobs would read them); pods get them from
# the Secrets named by launch.env_secrets instead.
SECRET_ENV = re.compile(r"^AWS_.*(KEY|TOKEN|SECRET).*$|^MLFLOW_TRACKING_(TOKEN|PASSWORD|USERNAME)$")
TAIL_LINES = 40


class LaunchError(RuntimeError):
    """A launched training job ended in a state other than SUCCEEDED."""


def _validate(stage: str, cfg: TrainConfig) -> None:
    """Refuse launch settings that cannot work, naming the field, before anything starts."""
    launch = cfg.launch
    if not stage or not re.fullmatch(r"[a-z][a-z0-9-]*", stage):
        raise ValueError(f"stage name {stage!r} must be lowercase letters, digits and dashes")
    if launch.scheduler not in SCHEDULERS:
        raise ValueError(
            f"launch.scheduler: {launch.scheduler!r} is not one of {', '.join(SCHEDULERS)}"
        )
    for name in ("nproc_per_node", "nodes", "gpus_per_node", "cpu_per_node", "memory_per_node_gb"):
        if getattr(launch, name) < 1:
            raise ValueError(f"launch.{name} must be >= 1, got {getattr(launch, name)}")
    if launch.scheduler == "local_cwd" and launch.nodes != 1:
        raise ValueError(f"launch.nodes: local_cwd runs on this machine only (got {launch.nodes})")
    if not re.fullmatch(r"\d+(\.\d+)?([KMGTPE]i?)?", launch.shm_size):
        raise ValueError(f"launch.shm_size: {launch.shm_size!r} is not a Kubernetes quantity")
    if launch.timeout_s <= 0:
        raise ValueError(f"launch.timeout_s must be > 0, got {launch.timeout_s}")


def job_env(scheduler: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a launched job gets: rank-prefixed logs plus the S3/MLflow pass-through."""
    environ = dict(os.environ if environ is None else environ)
    env = {"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": LOG_PREFIX_TEMPLATE}
    if scheduler == "local_cwd":
        # The local job inherits this process's environment (credentials included); only make sure
        # its torchrun is this interpreter's, whatever PATH the caller had.
        env["PATH"] = os.path.dirname(sys.executable)
        return env
    for name in PASSTHROUGH_ENV:
        if environ.get(name):
            env[name] = environ[name]
    env.update(
        {
            name: value
            for name, value in environ.items()
            if name.startswith("AWS_") and not SECRET_ENV.match(name) and value
        }
    )
    return env


def app_def(stage: str, cfg: TrainConfig, argv: list[str], *, module: str = WORKER_MODULE):
    """The torchx AppDef of one stage: torchrun running ``python -m <module> <argv>`` on each node."""
    from torchx.components.dist import ddp

    _validate(stage, cfg)
    launch = cfg.launch
    if launch.scheduler == "local_cwd":
        nodes, procs, gpus = 1, launch.nproc_per_node, 0
    else:
        # One rank per GPU on the cluster, whatever nproc_per_node says for local runs.
        nodes, procs, gpus = launch.nodes, launch.gpus_per_node, launch.gpus_per_node
    return ddp(
        *argv,
        m=module,
        image=launch.image or _train_image(),
        name=f"keye-{stage}",
        j=f"{nodes}x{procs}",
        cpu=launch.cpu_per_node if launch.scheduler == "kubernetes" else procs,
        gpu=gpus,
        # torchx writes memory as "<memMB>M" (decimal megabytes), matching GB = 1000 MB.
        memMB=launch.memory_per_node_gb * 1000,
        env=job_env(launch.scheduler),
        max_retries=0,  # a failed rank fails the stage; resume is the trainer's job (--resume)
        tee=3,  # workers' stdout and stderr both reach the console with the rank prefix
    )


def _train_image() -> str:
    from components.images import TRAIN_IMAGE

    return TRAIN_IMAGE


def scheduler_cfg(cfg: TrainConfig, log_dir: str | None = None) -> dict[str, str]:
    """torchx run options of the configured scheduler."""
    if cfg.launch.scheduler == "kubernetes":
        return {"namespace": cfg.launch.namespace, "queue": cfg.launch.queue}
    return {"log_dir": log_dir} if log_dir else {}


def dryrun(app, cfg: TrainConfig, *, runner=None, log_dir: str | None = None):
    """torchx's dry run of ``app`` on the configured scheduler, with keye's pod settings applied.

    No workspace: the image already holds the code (torchx would otherwise build and push a patched
    image, the ``--workspace=""`` of its CLI). On Kubernetes every pod template gets a
    ``launch.shm_size`` limit on torchx's memory-backed ``/dev/shm`` and ``envFrom`` of the
    ``launch.env_secrets`` Secrets.
    """
    from torchx.runner import get_runner

    runner = runner or get_runner()
    info = runner.dryrun(app, cfg.launch.scheduler, cfg=scheduler_cfg(cfg, log_dir), workspace=None)
    if cfg.launch.scheduler == "kubernetes":
        for task in info.request.resource["spec"]["tasks"]:
            _patch_pod(task["template"], cfg)
    return info


def _patch_pod(pod, cfg: TrainConfig) -> None:
    """Size /dev/shm and mount the credential Secrets as environment (torchx 0.7 has no option)."""
    from kubernetes.client.models import V1EnvFromSource, V1SecretEnvSource

    shm = [
        v for v in pod.spec.volumes if v.empty_dir is not None and v.empty_dir.medium == "Memory"
    ]
    if len(shm) != 1:
        raise RuntimeError(f"expected torchx's one /dev/shm volume, found {len(shm)}")
    shm[0].empty_dir.size_limit = cfg.launch.shm_size
    for container in pod.spec.containers:
        container.env_from = [
            V1EnvFromSource(secret_ref=V1SecretEnvSource(name=name, optional=True))
            for name in cfg.launch.env_secrets
        ] or None


def job_object(info) -> dict:
    """The Volcano Job a kubernetes dry run would create, as plain JSON-ready data."""
    from torchx.schedulers.kubernetes_scheduler import sanitize_for_serialization

    return sanitize_for_serialization(info.request.resource)


def _failing_rank(lines: Iterable[str]) -> int | None:
    """The rank torchrun names as the root cause of a failure, if its summary is in the log."""
    in_root_cause = False
    for line in lines:  # cluster log lines start with a timestamp: search, do not anchor
        if "Root Cause (first observed failure)" in line:
            in_root_cause = True
        elif in_root_cause:
            match = re.search(r"^\S*\s*rank\s*:\s*(\d+)", line)
            if match:
                return int(match.group(1))
    return None


class _LogFollower:
    """Streams one node's log lines in a thread, keeping the last ones for error reports."""

    def __init__(self, runner, handle: str, role: str, node: int, emit, prefix: str, poll_s: float):
        self.lines: collections.deque[str] = collections.deque(maxlen=2000)
        self.error: BaseException | None = None
        self._args = (runner, handle, role, node, emit, prefix, poll_s)
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"log-node{node}")
        self.thread.start()

    def _run(self) -> None:
        runner, handle, role, node, emit, prefix, poll_s = self._args
        received, last_try = 0, False
        while True:
            try:
                for chunk in runner.log_lines(handle, role, node, should_tail=True):
                    for line in chunk.splitlines():
                        received += 1
                        self.lines.append(line)
                        emit(prefix + line)
                return
            except Exception as err:  # noqa: BLE001 - a log error must not hide the job's state
                # A pod that is still starting refuses its log: try again until it has started.
                # Only before the first line (nothing is printed twice), and once more after the
                # job ended (a finished pod's log stays readable).
                status = runner.status(handle)
                if received or status is None or last_try:
                    self.error = err
                    return
                last_try = status.is_terminal()
                time.sleep(poll_s)


def submit_and_follow(
    app,
    cfg: TrainConfig,
    *,
    runner=None,
    emit: Callable[[str], None] | None = None,
    poll_s: float = 5.0,
) -> str:
    """Submit ``app`` on the configured scheduler, stream its logs, wait; return the app handle.

    Raises ``LaunchError`` (state, failing rank, its last log lines) unless the job SUCCEEDED, and
    cancels the job when it runs past ``launch.timeout_s``.
    """
    from torchx.runner import get_runner
    from torchx.specs import AppState

    log = get_logger("launch")
    emit = emit or (lambda line: print(line, flush=True))
    own_runner = runner is None
    runner = runner or get_runner()
    role = app.roles[0].name
    nodes = app.roles[0].num_replicas
    with tempfile.TemporaryDirectory(prefix="keye-launch-") as log_dir:
        try:
            info = dryrun(app, cfg, runner=runner, log_dir=log_dir)
            handle = runner.schedule(info)
            log.info("submitted %s (%d node(s) x %s)", handle, nodes, role)
            outcome = _follow(runner, handle, role, nodes, cfg, emit, poll_s, log)
        finally:
            if own_runner:
                runner.close()
    if outcome.state != AppState.SUCCEEDED:
        raise LaunchError(outcome.message)
    return handle


@dataclass
class _Outcome:
    """How a followed job ended: its torchx state and, unless it succeeded, why."""

    state: Any
    message: str = ""


def _follow(runner, handle, role, nodes, cfg, emit, poll_s, log) -> _Outcome:
    """Poll the job's state, start log streams once pods run, and collect the outcome."""
    from torchx.specs import AppState

    deadline = time.monotonic() + cfg.launch.timeout_s
    followers: list[_LogFollower] = []
    last_state = None
    while True:
        status = runner.status(handle)
        if status is None:
            return _Outcome(AppState.UNKNOWN, f"{handle}: the scheduler no longer knows this job")
        if status.state != last_state:
            log.info("%s: %s", handle, status.state.name)
            last_state = status.state
        running_or_done = status.state == AppState.RUNNING or status.is_terminal()
        if running_or_done and not followers:
            for node in range(nodes):
                prefix = f"[node{node}] " if nodes > 1 else ""
                followers.append(_LogFollower(runner, handle, role, node, emit, prefix, poll_s))
        if status.is_terminal():
            break
        if time.monotonic() > deadline:
            runner.cancel(handle)
            _join(followers)
            return _Outcome(
                AppState.FAILED,
                f"{handle}: still {status.state.name} after launch.timeout_s="
                f"{cfg.launch.timeout_s:g}s; cancelled",
            )
        time.sleep(poll_s)
    _join(followers)
    if status.state == AppState.SUCCEEDED:
        return _Outcome(status.state)
    return _Outcome(status.state, _failure_message(handle, status, followers))


def _join(followers: list[_LogFollower]) -> None:
    # Streams end when the job is terminal; the timeout only guards a hung log connection.
    for follower in followers:
        follower.thread.join(timeout=60)


def _failure_message(handle: str, status, followers: list[_LogFollower]) -> str:
    """The state, the failing rank and that rank's last log lines (or the last lines of all)."""
    from torchx.specs import NONE

    lines = [line for f in followers for line in f.lines]
    rank = _failing_rank(lines)
    head = f"{handle} ended {status.state.name}"
    if status.msg and status.msg != NONE:
        head += f": {status.msg}"
    if rank is not None:
        tag = LOG_PREFIX_TEMPLATE.replace("${rank}", str(rank))
        own = [line for line in lines if tag in line]
        tail = (own or lines)[-TAIL_LINES:]
        return f"{head}; rank {rank} failed first. Its last lines:\n" + "\n".join(tail)
    errors = [f"node log stream: {f.error}" for f in followers if f.error]
    return f"{head}. Last lines:\n" + "\n".join(errors + lines[-TAIL_LINES:])


def launch(stage: str, cfg: TrainConfig, argv: list[str], **kwargs) -> str:
    """Run one training stage on the configured scheduler and wait for it (``keye stage`` entry)."""
    return submit_and_follow(app_def(stage, cfg, argv), cfg, **kwargs)
