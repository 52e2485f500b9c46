"""Post-training: GSPO losses, rollouts, verifiers, dynamic sampling and cold-start filtering.

Top-down: ``stages`` (entry functions) -> ``rollout`` / ``verifier`` / ``sampling`` /
``cold_start`` (library) -> ``gspo`` (pure loss and advantage math). Configs live in ``config``.
"""
