"""A stand-in for the few Kubernetes API endpoints torchx's kubernetes scheduler calls.

No kube-apiserver can run here (REFERENCE §6), so the launch tests talk HTTP to this FastAPI app
through the real ``kubernetes`` client and torchx's real scheduler code. It stores created Volcano
Jobs, answers ``.../jobs/{name}/status`` with a scripted sequence of phases, serves each pod's log
(refusing it while the job is Pending or for the first ``refuse_logs`` requests, like a
container that has not started) and records deletes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

VOLCANO = "/apis/batch.volcano.sh/v1alpha1/namespaces/{namespace}/jobs"
TIMESTAMP = "2026-01-01T00:00:00.000000000Z"


@dataclass
class FakeVolcano:
    """Scripted cluster state: phases returned one per status call (the last one repeats)."""

    phases: list[str]
    logs: dict[int, str] = field(default_factory=dict)  # node index -> that pod's log text
    created: list[dict] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_calls: int = 0
    log_requests: list[dict] = field(default_factory=list)
    refuse_logs: int = 0  # refuse this many log requests first (a container still starting)

    def phase(self) -> str:
        return self.phases[min(self.status_calls, len(self.phases) - 1)]

    def app(self) -> FastAPI:
        api = FastAPI()

        @api.post(VOLCANO)
        async def create(namespace: str, request: Request):
            body = await request.json()
            self.created.append({"namespace": namespace, "body": body})
            return JSONResponse(body, status_code=201)

        @api.get(VOLCANO + "/{name}/status")
        def status(namespace: str, name: str):
            phase = self.phase()
            self.status_calls += 1
            job = self.created[-1]["body"]
            tasks = {t["name"]: {"phase": {_task_phase(phase): 1}} for t in job["spec"]["tasks"]}
            return {
                "metadata": {"name": name, "namespace": namespace},
                "status": {"state": {"phase": phase}, "taskStatusCount": tasks},
            }

        @api.delete(VOLCANO + "/{name}")
        def delete(namespace: str, name: str):
            self.deleted.append(f"{namespace}:{name}")
            return {"kind": "Status", "status": "Success"}

        @api.get("/api/v1/namespaces/{namespace}/pods/{pod}/log")
        def log(namespace: str, pod: str, request: Request):
            self.log_requests.append({"pod": pod, **request.query_params})
            if self.phase() == "Pending" or len(self.log_requests) <= self.refuse_logs:
                message = f'container "{pod}" is waiting to start: ContainerCreating'
                return JSONResponse(
                    {"kind": "Status", "status": "Failure", "message": message, "code": 400},
                    status_code=400,
                )
            # Pod names are <job>-<role>-<node>-0 (torchx's Volcano task naming).
            node = int(pod.rsplit("-", 2)[-2])
            text = self.logs.get(node, "")
            if request.query_params.get("timestamps", "").lower() == "true":
                text = "".join(f"{TIMESTAMP} {line}\n" for line in text.splitlines())
            return PlainTextResponse(text)

        return api


def _task_phase(job_phase: str) -> str:
    return {"Completed": "Succeeded", "Failed": "Failed"}.get(job_phase, job_phase)
