"""Prompt order, graded rollout groups and dynamic sampling for GSPO (REFERENCE §3, §7; DAPO).

- ``PromptStream``: prompts in a seeded order, reshuffled each epoch; its position is part of a
  checkpoint, so a resumed run continues with the same prompts.
- ``sample_groups``: one generation round - G responses per prompt, graded by the verifier.
- ``collect_groups``: dynamic sampling. Groups whose rewards are all equal carry no advantage and
  are dropped (the test is the reward std, not the mean: a mean filter lets all-equal non-binary
  groups through); fresh prompts refill the batch for up to ``max_rounds`` generation rounds,
  after which ``DynamicSamplingError`` says whether the data was too hard (most dropped groups
  failed every response) or too easy (most passed every response).
- ``loss_mask``: response tokens that carry loss; a truncated response is masked whole (its
  reward still enters its group's statistics).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from keye_model.rl.config import SamplingConfig
from keye_model.rl.rollout import Messages, Rollout, Sample, with_thinking
from keye_model.rl.verifier import Verdict, Verifier, VerifyItem


@dataclass(frozen=True)
class RLPrompt:
    """A verifiable prompt: chat messages (no thinking suffix yet), question text, reference answer."""

    id: str
    messages: Messages
    question: str
    gold: str


@dataclass
class Group:
    """G responses to one prompt with their verdicts."""

    prompt: RLPrompt
    samples: list[Sample]
    verdicts: list[Verdict]

    @property
    def rewards(self) -> list[float]:
        return [v.reward for v in self.verdicts]


def reward_std(rewards: Sequence[float]) -> float:
    """Unbiased standard deviation of one group's rewards (0 for a single reward)."""
    if len(rewards) < 2:
        return 0.0
    mean = sum(rewards) / len(rewards)
    return (sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1)) ** 0.5


class PromptStream:
    """Prompts in a seeded per-epoch shuffle; ``state_dict`` records the position for resume."""

    def __init__(self, prompts: Sequence[RLPrompt], seed: int):
        if not prompts:
            raise ValueError("the prompt set is empty")
        self.prompts = list(prompts)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(f"keye-rl-prompts:{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, count: int) -> list[RLPrompt]:
        """The next ``count`` prompts (wrapping into a new epoch's order)."""
        out = []
        while len(out) < count:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._shuffled(self.epoch)
            out.append(self.prompts[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"prompt stream was saved with seed {state['seed']}, not {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._shuffled(self.epoch)


def sample_groups(
    rollout: Rollout,
    verifier: Verifier,
    prompts: Sequence[RLPrompt],
    sampling: SamplingConfig,
    group_size: int,
    seed: int,
    thinking: str = "auto",
) -> list[Group]:
    """One generation round: ``group_size`` responses per prompt, each graded."""
    if not prompts:
        return []
    messages = [with_thinking(p.messages, thinking) for p in prompts]
    samples = rollout.generate(messages, sampling, n=group_size, seed=seed)
    items = [
        VerifyItem(p.question, s.text, p.gold) for p, group in zip(prompts, samples) for s in group
    ]
    verdicts = verifier.verify(items)
    return [
        Group(p, group, verdicts[i * group_size : (i + 1) * group_size])
        for i, (p, group) in enumerate(zip(prompts, samples))
    ]


# Cap on how many prompts one round draws per missing group (a keep share of 1/8 or less).
MAX_DRAW_FACTOR = 8


class DynamicSamplingError(RuntimeError):
    """No batch of informative groups within the allowed generation rounds."""


@dataclass
class SamplingStats:
    """What dynamic sampling did for one batch (logged to MLflow)."""

    rounds: int = 0
    groups_sampled: int = 0
    groups_kept: int = 0
    dropped_all_fail: int = 0
    dropped_all_pass: int = 0
    groups_surplus: int = 0
    responses: int = 0
    truncated: int = 0
    passes: int = 0
    rewards: list[float] = field(default_factory=list)

    @property
    def groups_dropped(self) -> int:
        return self.dropped_all_fail + self.dropped_all_pass


def diagnose(stats: SamplingStats, wanted: int) -> str:
    """Why dynamic sampling could not fill a batch, and what to change."""
    truncated = stats.truncated / max(stats.responses, 1)
    head = (
        f"dynamic sampling: after {stats.rounds} generation round(s) only {stats.groups_kept} of "
        f"{wanted} groups had rewards that differ; of {stats.groups_dropped} dropped groups "
        f"{stats.dropped_all_fail} failed every response and {stats.dropped_all_pass} passed "
        f"every response ({truncated:.0%} of responses were truncated). "
    )
    if stats.dropped_all_fail >= stats.dropped_all_pass:
        return head + (
            "The data is too hard for this policy: use easier prompts, fine-tune first "
            "(cold-start), raise sampling.max_new_tokens if many responses are truncated, or "
            "allow more generation rounds (gspo.max_generation_rounds)."
        )
    return head + (
        "The data is too easy for this policy: drop prompts it already solves (the cold-start "
        "pass-rate band), use harder data, or allow more generation rounds "
        "(gspo.max_generation_rounds)."
    )


def collect_groups(
    draw: Callable[[int], Sequence[RLPrompt]],
    grade: Callable[[Sequence[RLPrompt], int], list[Group]],
    wanted: int,
    max_rounds: int,
    pass_threshold: float = 0.5,
) -> tuple[list[Group], SamplingStats]:
    """Dynamic sampling: ``wanted`` groups with reward std > 0, within ``max_rounds`` rounds.

    ``draw(k)`` gives the next k prompts; ``grade(prompts, round)`` samples and grades them.
    A round asks for the missing groups divided by the share of groups kept so far (all of
    them before the first round; at most ``MAX_DRAW_FACTOR`` times the missing count), so a
    batch fills in few rounds even when most groups are dropped. Informative groups beyond
    ``wanted`` are not used (``SamplingStats.groups_surplus``).
    """
    stats = SamplingStats()
    kept: list[Group] = []
    while len(kept) < wanted:
        if stats.rounds == max_rounds:
            raise DynamicSamplingError(diagnose(stats, wanted))
        missing = wanted - len(kept)
        share = len(kept) / stats.groups_sampled if stats.groups_sampled else 1.0
        count = min(math.ceil(missing / max(share, 1 / MAX_DRAW_FACTOR)), missing * MAX_DRAW_FACTOR)
        groups = grade(draw(count), stats.rounds)
        stats.rounds += 1
        for group in groups:
            rewards = group.rewards
            stats.groups_sampled += 1
            stats.responses += len(rewards)
            stats.truncated += sum(s.truncated for s in group.samples)
            stats.passes += sum(r >= pass_threshold for r in rewards)
            stats.rewards.extend(rewards)
            if reward_std(rewards) > 0:
                kept.append(group)
            elif rewards[0] >= pass_threshold:
                stats.dropped_all_pass += 1
            else:
                stats.dropped_all_fail += 1
        stats.groups_kept = min(len(kept), wanted)
    stats.groups_surplus = len(kept) - wanted
    return kept[:wanted], stats


def loss_mask(samples: Sequence[Sample], length: int) -> list[list[bool]]:
    """Per response, which of ``length`` padded positions carry loss (none if truncated)."""
    return [[not s.truncated and t < len(s.response_ids) for t in range(length)] for s in samples]
