"""Serving the Keye model with SGLang on Kubernetes (chart ``helm/keye-serve``).

- ``config``: ``ServeConfig``, the recipe's serve section;
- ``values``: Helm values from a model URI + config; ``helm``: the real helm binary;
- ``validate``: offline validation of rendered manifests (kubernetes-validate + the LWS CRD);
- ``deploy``: the deploy step (``keye deploy``); ``cluster``: the Kubernetes client side;
- ``fetch``: the chart's S3 download init container; ``smoke``: the chat smoke test.

Submodules are imported on use so that ``python -m keye_model.serve.smoke`` stays light.
"""
