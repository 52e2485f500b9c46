"""KFP v2 components: one module per stage, each a thin typed wrapper around a keye_model entry.

Components only move arguments: the recipe JSON in, the stage's manifest (a StageResult) out.
Payloads (shards, checkpoints, reports) live under the run's storage root, not in artifacts.
"""
