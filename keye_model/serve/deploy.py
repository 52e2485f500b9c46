"""The deploy step: render, validate and (when a cluster answers) install the keye-serve chart.

    keye stage deploy --model s3://models/keye/run-42/final --output out/deploy --preset keye-vl-671b-a37b

1. values from the model URI and ``ServeConfig`` (bad input fails here, before helm runs);
2. ``helm template`` with the real binary, every object validated offline (``validate.py``);
3. values and manifests stored under ``output`` and logged to MLflow;
4. if a Kubernetes API server answers: ``helm upgrade --install --wait``, wait for each group's
   leader to be Ready, then the same image + text smoke request as ``helm test``; endpoint and
   latency go to MLflow. With no cluster (the local default) the result says plainly that
   nothing was deployed (``deployed=0``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from keye_model import storage
from keye_model.log import get_logger
from keye_model.serve import cluster, helm, smoke
from keye_model.serve.config import ServeConfig
from keye_model.serve.validate import load_documents, validate_manifests
from keye_model.serve.values import build_values
from keye_model.stage import StageFailed, StageResult, local_output
from keye_model.tracking import stage_run

log = get_logger("deploy")


def _values_files(cfg: ServeConfig, chart: Path, generated: Path) -> list[Path]:
    files: list[Path] = []
    if cfg.values_file:
        path = (
            chart / cfg.values_file
            if (chart / cfg.values_file).is_file()
            else Path(cfg.values_file)
        )
        if not path.is_file():
            raise FileNotFoundError(
                f"serve.values_file: {cfg.values_file} is neither in {chart} nor a file"
            )
        files.append(path)
    # The generated file comes last so the run's layout and model location win over the recipe file.
    return [*files, generated]


def _release_objects(manifests: str) -> tuple[str, str, int, int]:
    """(LeaderWorkerSet name, API Service name, Service port, replicas) from rendered manifests."""
    docs = load_documents(manifests)
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
    svc = next(d for d in docs if d["kind"] == "Service")
    return (
        lws["metadata"]["name"],
        svc["metadata"]["name"],
        svc["spec"]["ports"][0]["port"],
        lws["spec"]["replicas"],
    )


def deploy(cfg: ServeConfig, *, output: str, model: str) -> StageResult:
    """Render + validate the chart for ``model``; install and smoke-test it when a cluster is reachable."""
    with local_output(output) as out:
        return _deploy(cfg, model, output, out)


def _deploy(cfg: ServeConfig, model_uri: str, output: str, out: Path) -> StageResult:
    values = build_values(cfg, model_uri)
    helm_bin = helm.find_helm()
    chart = helm.chart_dir(cfg.chart)
    values_path = out / "values.yaml"
    values_path.write_text(yaml.safe_dump(values, sort_keys=False))
    files = _values_files(cfg, chart, values_path)
    log.info("rendering %s (helm %s) for %s", chart, helm_bin, model_uri)
    manifests = helm.template(chart, cfg.release, cfg.namespace, files, cfg.set_values)
    manifests_path = out / "manifests.yaml"
    manifests_path.write_text(manifests)

    probe = cluster.probe_cluster(cfg.cluster_probe_timeout_s)
    lws_crd = cfg.lws_crd or None
    if probe.reachable and not lws_crd:
        # Validate against what the cluster serves; without the CRD the install cannot work at all.
        lws_crd = cluster.installed_crd()
        if lws_crd is None:
            raise ValueError(
                "the cluster has no LeaderWorkerSet CRD: install LWS (leaderworkerset.x-k8s.io) first"
            )
    errors = validate_manifests(manifests, cfg.kubernetes_version, lws_crd)
    if errors:
        (out / "validation-errors.txt").write_text("\n".join(errors) + "\n")
        raise ValueError(
            f"rendered manifests are invalid ({len(errors)} errors, kept in {output}): {errors[0]}"
        )
    kinds = sorted({d["kind"] for d in load_documents(manifests)})
    log.info("validated %s against Kubernetes %s", ", ".join(kinds), cfg.kubernetes_version)
    lws_name, svc_name, port, replicas = _release_objects(manifests)
    endpoint = cfg.endpoint or f"http://{svc_name}.{cfg.namespace}.svc:{port}"

    details = {"kinds": kinds, "cluster": probe.reason, "server": probe.server, "chart": str(chart)}
    with stage_run("deploy", cfg) as run:
        run.log_artifact(values_path, "deploy")
        run.log_artifact(manifests_path, "deploy")
        run.set_tags({"model_uri": model_uri, "release": f"{cfg.namespace}/{cfg.release}"})
        if not probe.reachable or not cfg.install:
            why = (
                f"no cluster reachable ({probe.reason})"
                if not probe.reachable
                else "serve.install is false"
            )
            message = (
                f"not deployed: {why}; rendered and validated manifests are in "
                f"{storage.join(output, manifests_path.name)}"
            )
            metrics = {"deployed": 0.0, "objects": float(len(load_documents(manifests)))}
        else:
            log.info(
                "helm upgrade --install %s into %s on %s", cfg.release, cfg.namespace, probe.server
            )
            helm.upgrade_install(
                chart, cfg.release, cfg.namespace, files, cfg.set_values, cfg.helm_timeout
            )
            ready_s = cluster.wait_leaders_ready(
                cfg.namespace, lws_name, replicas, cfg.ready_timeout_s
            )
            api_key = (
                cluster.read_secret_value(cfg.namespace, cfg.api_key_secret, "api-key")
                if cfg.api_key_secret
                else None
            )
            run.set_tags({"endpoint": endpoint})
            try:
                answer = smoke.chat_smoke_test(endpoint, api_key, cfg.smoke_timeout_s)
            except smoke.SmokeTestError as err:
                run.log_metrics({"deployed": 1.0, "leader_ready_s": ready_s, "smoke_ok": 0.0})
                hint = (
                    ""
                    if cfg.endpoint
                    else " (outside the cluster, set serve.endpoint, e.g. to a port-forward)"
                )
                raise StageFailed(f"installed, but the smoke test failed{hint}: {err}") from err
            log.info("smoke answer in %.2f s: %s", answer.latency_s, answer.answer[:200])
            run.log_text(answer.answer, "deploy/smoke_answer.txt")
            message = f"deployed {cfg.release} to {probe.server} namespace {cfg.namespace}; endpoint {endpoint}"
            metrics = {
                "deployed": 1.0,
                "leader_ready_s": ready_s,
                "smoke_latency_s": answer.latency_s,
                "smoke_ok": 1.0,
            }
        run.log_metrics(metrics)
        details["mlflow_run_id"] = run.run_id
    log.info(message)
    if metrics["deployed"]:
        outputs_extra = {"endpoint": endpoint}
    else:
        outputs_extra = {}
        details["endpoint_if_deployed"] = endpoint
    result = StageResult(
        stage="deploy",
        outputs={
            "manifests": storage.join(output, manifests_path.name),
            "values": storage.join(output, values_path.name),
            **outputs_extra,
        },
        metrics=metrics,
        message=message,
        details=details,
    )
    return result
