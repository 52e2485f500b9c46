"""Data curation (REFERENCE §2.1): the pool every later stage trains and evaluates on.

Read top-down:

- ``curate.py``: the stage entry ``curate(cfg, inputs, output)`` and its resumable phases
- ``config.py``: ``CurateConfig`` (filters, dedup, mixture), a field of the recipe
- ``readers.py``: input discovery, up-front validation, WebDataset / Parquet / JSONL readers
- ``operators.py``: per-sample filters (decode, size, text quality, language, image-text score)
- ``dedup.py``, ``neardup.py``: exact / perceptual / MinHash dedup and their indexes
- ``mixture.py``: re-sampling to a category mixture under a token budget
- ``synth/``: synthetic chart, table, OCR, receipt and math VQA with ground truth
- ``records.py``: the ``Sample`` record and its WebDataset encoding; ``plots.py``: MLflow figures
"""
