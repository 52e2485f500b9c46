"""Point a running SGLang server (or ``keye serve local``) at new weights without restarting it.

The RL loop writes the policy to storage the server can read, then calls::

    refresh_weights("http://sglang:30000", "s3://bucket/run/policy/step-40")

which drives SGLang's own admin endpoints in order: ``POST /pause_generation`` (running requests
are aborted, new ones wait), ``POST /flush_cache`` (no cached prefix from the old weights can be
reused), ``POST /update_weights_from_disk`` with ``{"model_path": ...}``, and
``POST /continue_generation``. Any failure raises ``RefreshError`` naming the step and the
server's message. A failed update leaves the server on its previous weights; generation is
continued anyway so a shared server is never left paused, and the error tells the caller that
the old weights still answer.
"""

from __future__ import annotations

from pathlib import Path

from keye_model.log import get_logger

log = get_logger("serve")


class RefreshError(RuntimeError):
    """A weight refresh that did not complete; the message names the failed step."""


def refresh_weights(
    endpoint: str,
    model_dir: str | Path,
    weight_version: str | None = None,
    timeout_s: float = 600.0,
    api_key: str | None = None,
) -> dict:
    """Pause, flush, load ``model_dir`` and continue on the server at ``endpoint``; its update reply.

    ``model_dir`` is a path as the *server* sees it (a local directory is made absolute) or an
    ``s3://`` prefix. ``weight_version`` is recorded by the server (``/get_weight_version``).
    """
    import httpx

    from keye_model import storage

    base = endpoint.rstrip("/").removesuffix("/v1")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
    path = str(model_dir) if storage.is_s3(str(model_dir)) else str(Path(model_dir).absolute())
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    with httpx.Client(base_url=base, timeout=timeout_s, headers=headers) as client:

        def call(step: str, body: dict | None = None) -> httpx.Response:
            try:
                resp = client.post(step, json=body) if body is not None else client.post(step)
            except httpx.HTTPError as err:
                raise RefreshError(f"{base}{step}: {type(err).__name__}: {err}") from err
            if resp.status_code != 200:
                raise RefreshError(f"{base}{step}: HTTP {resp.status_code}: {resp.text[:500]}")
            return resp

        call("/pause_generation")
        try:
            call("/flush_cache")
            body = {"model_path": path}
            if weight_version is not None:
                body["weight_version"] = weight_version
            reply = call("/update_weights_from_disk", body).json()
            if not reply.get("success", False):
                raise RefreshError(f"{base}/update_weights_from_disk: {reply.get('message')}")
        except RefreshError as err:
            try:
                call("/continue_generation")
            except RefreshError as again:
                raise RefreshError(
                    f"{err}; and generation could not be continued: {again}"
                ) from err
            raise RefreshError(f"{err} (the server continues on its previous weights)") from err
        call("/continue_generation")
    log.info("%s now serves %s (%s)", base, path, reply.get("message", ""))
    return reply
