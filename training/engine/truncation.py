"""How a prompt + completion is cut to fit, TRL-style, and the count of what was cut (so nothing is lost silently).

The policy is the one TRL's DPOTrainer documented through its 0.x releases (``tokenize_row`` then
``concatenated_forward``), applied here to every recipe that trains on prompt/completion text:

1. the prompt is truncated from the left to ``max_prompt_length`` (the end of a conversation, where the
   completion continues, is what matters; our BOS stays in front of what is kept);
2. the completion (EOS included) is kept up to ``max_completion_length`` tokens;
3. ``max_length`` caps the whole sequence, cutting from the end (``keep_start``).

Because ``max_prompt_length < max_length`` is enforced by the config, step 3 can no longer remove every
completion token, which is how plain ``(prompt + completion)[:max_length]`` destroyed preference data: 13 of
18 HH-RLHF pairs with long shared prompts became identical and DPO learned nothing.

TRL 1.16 differs and we say so: its DPO keeps only ``max_length`` with keep_start and *drops* examples whose
prompt alone fills it; its RewardTrainer drops pairs longer than ``max_length``. We keep TRL 0.x's prompt and
completion limits (nothing dropped that can be saved) and drop, counting them, only examples that carry no
signal after truncation: no completion token left, or a preference pair whose two sides became identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Truncation:
    """The three limits, in tokens; None means no limit of that kind (``max_length`` always applies)."""

    max_length: int
    max_prompt_length: int | None = None
    max_completion_length: int | None = None


@dataclass(frozen=True)
class Cut:
    """One prompt + completion after truncation: its token ids, where the completion starts, what was cut."""

    ids: tuple[int, ...]
    prompt_len: int
    prompt_cut: bool
    completion_cut: bool

    @property
    def completion_len(self) -> int:
        """Completion tokens kept."""
        return len(self.ids) - self.prompt_len


def cut(prompt: Sequence[int], completion: Sequence[int], limits: Truncation, *, bos: int | None = None) -> Cut:
    """Apply the policy above to one example. ``bos``, when the prompt starts with it, survives left truncation."""
    p = list(prompt)
    prompt_cut = False
    if limits.max_prompt_length is not None and len(p) > limits.max_prompt_length:
        prompt_cut = True
        keep = limits.max_prompt_length
        keeps_bos = bos is not None and p[0] == bos and keep > 1
        p = [p[0], *p[len(p) - keep + 1 :]] if keeps_bos else p[len(p) - keep :]
    c = list(completion)
    completion_cut = False
    if limits.max_completion_length is not None and len(c) > limits.max_completion_length:
        c = c[: limits.max_completion_length]
        completion_cut = True
    ids = p + c
    if len(ids) > limits.max_length:
        kept_prompt = min(len(p), limits.max_length)
        prompt_cut = prompt_cut or kept_prompt < len(p)
        completion_cut = completion_cut or len(ids) - limits.max_length > 0
        ids = ids[: limits.max_length]
        return Cut(tuple(ids), kept_prompt, prompt_cut, completion_cut)
    return Cut(tuple(ids), len(p), prompt_cut, completion_cut)


@dataclass
class TruncationReport:
    """What truncation did to a dataset: counted per example (a preference pair is one example)."""

    examples: int = 0
    truncated: int = 0  # lost any token, prompt or completion
    prompt_truncated: int = 0
    completion_truncated: int = 0
    no_completion: int = 0  # lost every completion token: no loss can be taken
    identical_pairs: int = 0  # chosen and rejected became the same tokens: no preference left
    dropped_indices: list[int] = field(default_factory=list)

    def add(self, index: int, cuts: Sequence[Cut], *, pair: bool = False) -> bool:
        """Count one example (its one or two sequences); return whether it is still usable."""
        self.examples += 1
        prompt = any(c.prompt_cut for c in cuts)
        completion = any(c.completion_cut for c in cuts)
        self.prompt_truncated += prompt
        self.completion_truncated += completion
        self.truncated += prompt or completion
        if any(c.completion_len == 0 for c in cuts):
            self.no_completion += 1
            self.dropped_indices.append(index)
            return False
        if pair and cuts[0].ids == cuts[1].ids:
            self.identical_pairs += 1
            self.dropped_indices.append(index)
            return False
        return True

    @property
    def usable(self) -> int:
        """Examples that still carry a training signal."""
        return self.examples - len(self.dropped_indices)

    def summary(self, limits: Truncation) -> str:
        """One log line: the counts and the limits that produced them."""
        parts = [
            f"{self.truncated} of {self.examples} examples truncated "
            f"({self.prompt_truncated} prompts, {self.completion_truncated} completions)",
            f"{self.no_completion} lost every completion token",
        ]
        if self.identical_pairs:
            parts.append(f"{self.identical_pairs} pairs became identical")
        limits_text = (
            f"max_length={limits.max_length}, max_prompt_length={limits.max_prompt_length}, "
            f"max_completion_length={limits.max_completion_length}"
        )
        return "truncation: " + "; ".join(parts) + f" [{limits_text}]"


class UnusableDataError(ValueError):
    """Most of a dataset carries no training signal after truncation: the run stops before its first step."""


def check_usable(report: TruncationReport, limits: Truncation, *, min_usable_fraction: float = 0.5) -> None:
    """Refuse data that truncation left mostly (or wholly) without signal, naming the counts and the fix."""
    if report.examples and report.usable / report.examples >= min_usable_fraction and report.usable > 0:
        return
    raise UnusableDataError(
        f"{report.examples - report.usable} of {report.examples} examples are unusable after truncation "
        f"({report.no_completion} lost every completion token, {report.identical_pairs} pairs became identical). "
        f"{report.summary(limits)}. Raise max_length, lower max_prompt_length, or raise max_completion_length "
        "(the launch form sized from the data shows the token lengths)."
    )
