"""Data curation (REFERENCE §2.1): the pool every later stage trains and evaluates on.

Read top-down:

- ``curate.py``: the stage entry ``curate(cfg, inputs, output)`` and its resumable phases
- ``config.py``: ``CurateConfig`` (filters, dedup, mixture), a field of the recipe
- ``readers.py``: input discovery, up-front validation, WebDataset / Parquet / JSONL readers
- ``operators.py``: per-sample filters (decode, size, text quality, language, image-text score)
- ``dedup.py``, ``neardup.py``: exact / perceptual / video / MinHash dedup (band-keyed candidates,
  verification, connected components), one implementation for both engines
- ``ray_curate.py``: the ``curate.engine=ray`` engine (Ray Data); ``rayjob.py``: the KubeRay
  ``RayJob`` the curate step creates on a cluster; ``README.md``: the 1T-token plan
- ``formats.py``: Data-Juicer, LLaVA and Hugging Face record shapes
- ``mixture.py``: re-sampling to a category mixture under a token budget
- ``synth/``: synthetic chart, table, OCR, receipt, math and one-digit-sum VQA with ground truth
- ``records.py``: the ``Sample`` record and its WebDataset encoding; ``plots.py``: MLflow figures
"""
