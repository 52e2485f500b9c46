"""RL throughput on the tiny model, each figure beside its baseline measured in the same run.

- rollout tokens/s in process, with the KV cache against without it (the baseline);
- GSPO update time per sample: forward + GSPO loss + backward + AdamW step on rollout-shaped
  batches, against the forward pass alone (the share the update adds);
- verifier checks/s: the rule check against the model verifier (tiny model as judge, in process,
  a fresh verifier per pass so every check asks the model).

Each timed figure is the best of ``--repeats`` passes after one untimed pass (the CPU is shared,
so the least disturbed pass is the most faithful). About a minute on 2 CPU cores::

    .venv/bin/python benchmarks/bench_rl.py [--prompts 8] [--group 4] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def best_of(repeats: int, fn) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4, help="responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from keye_model.model.assembly import assemble
    from keye_model.rl.config import SamplingConfig, VerifierConfig
    from keye_model.rl.gspo import gspo_loss, token_logprobs
    from keye_model.rl.rollout import InProcessRollout
    from keye_model.rl.verifier import Verifier, VerifyItem

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="keye-bench-rl-"))
    assemble("tiny", str(work / "tiny"), seed=0)
    rollout = InProcessRollout.from_pretrained(work / "tiny")
    prompts = [
        [{"role": "user", "content": f"Compute {i} + {i + 3} and explain each step."}]
        for i in range(args.prompts)
    ]
    # Same seed in both modes, so both sample the very same tokens (tests check this).
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)

    def rollout_rate(use_cache: bool) -> float:
        rollout.use_cache = use_cache
        before = rollout.generated_tokens
        seconds = best_of(args.repeats, lambda: rollout.generate(prompts, sampling, args.group))
        tokens = (rollout.generated_tokens - before) / (args.repeats + 1)
        return tokens / seconds

    with_cache = rollout_rate(True)
    without_cache = rollout_rate(False)
    rollout.use_cache = True

    # ---- GSPO update on batches shaped like the rollout's
    samples = [s for g in rollout.generate(prompts, sampling, args.group, seed=1) for s in g]
    prompt_ids = [rollout.encode(p)["input_ids"][0].tolist() for p in prompts]
    rows = [prompt_ids[i // args.group] + s.response_ids for i, s in enumerate(samples)]
    width = max(len(r) for r in rows)
    pad = rollout.pad_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    attn = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    resp_len = max(len(s.response_ids) for s in samples)
    targets = ids[:, -resp_len:]
    mask = torch.tensor(
        [[t >= resp_len - len(s.response_ids) for t in range(resp_len)] for s in samples]
    )
    model = rollout.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    old = torch.tensor([[0.0] * (resp_len - len(s.logprobs)) + s.logprobs for s in samples])
    advantages = torch.randn(len(samples))

    def forward():
        logits = model(input_ids=ids, attention_mask=attn).logits[:, -resp_len - 1 : -1]
        return token_logprobs(logits, targets, temperature=sampling.temperature)

    def update():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = gspo_loss(forward(), old, advantages, mask)
        loss.backward()
        optimizer.step()

    def forward_only():
        with torch.no_grad():
            forward()

    update_s = best_of(args.repeats, update) / len(samples)
    forward_s = best_of(args.repeats, forward_only) / len(samples)
    model.eval()

    # ---- verifier
    items = [
        VerifyItem(
            f"{i} + 3?", f"<think>{i} + 3 = {i + 3}</think>\\boxed{{{i + 3 + i % 2}}}", str(i + 3)
        )
        for i in range(32)
    ]
    rule = Verifier(VerifierConfig())
    rule_rate = len(items) / best_of(args.repeats, lambda: rule.verify(items))
    judge_cfg = VerifierConfig(use_model=True, judge_max_new_tokens=16)

    def judged():
        # a fresh verifier each pass: every item goes to the judge model
        Verifier(judge_cfg, rollout, judge_id="bench").verify(items)

    model_rate = len(items) / best_of(args.repeats, judged)
    rollout.close()
    shutil.rmtree(work, ignore_errors=True)

    print(
        f"tiny model, {args.prompts} prompts x {args.group} responses, <= {args.max_new_tokens} new tokens"
    )
    print(f"rollout in process, KV cache     {with_cache:10.1f} tokens/s")
    print(f"rollout in process, no KV cache  {without_cache:10.1f} tokens/s   (baseline)")
    print(f"  KV cache speed-up              {with_cache / without_cache:10.2f}x")
    print(f"GSPO update (fwd+bwd+AdamW)      {update_s * 1e3:10.2f} ms/sample")
    print(f"forward only                     {forward_s * 1e3:10.2f} ms/sample   (baseline)")
    print(f"  update / forward               {update_s / forward_s:10.2f}x")
    print(f"verifier, rule                   {rule_rate:10.1f} checks/s")
    print(
        f"verifier, model (tiny judge)     {model_rate:10.1f} checks/s   (fallbacks: all, random judge)"
    )
    print(f"  rule / model                   {rule_rate / model_rate:10.1f}x")


if __name__ == "__main__":
    main()
