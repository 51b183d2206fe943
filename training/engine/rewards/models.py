"""Model-based rewards: a reward-model checkpoint, and a rubric judge that grades each rubric item yes/no."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from training.engine.adapters import is_adapter_folder, load_merged
from training.engine.batching import encode_completion, encode_prompt, pad_left, positions
from training.engine.data import JUDGE_TEMPLATE, PromptExample, render_step_prompt
from training.engine.modeling import frozen, moved

__all__ = [
    "JUDGE_TEMPLATE",
    "CompletionUnderPolicy",
    "ProcessRewardModel",
    "RewardModelReward",
    "RubricJudge",
]  # the template lives with the data it makes


class RewardModelReward:
    """The scalar head of a ``reward_model`` run's checkpoint on prompt + completion."""

    def __init__(self, path: str, *, device: torch.device, batch_size: int = 32) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if is_adapter_folder(path):  # a LoRA reward model: its base, adapters and score head merged
            loaded = load_merged(path, head="sequence_classifier")
        else:
            loaded = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        self.model = frozen(moved(loaded, device))
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, completions: Sequence[str], examples: Sequence[PromptExample]) -> list[float]:
        """r_φ(prompt, completion) per completion."""
        pad = int(self.model.config.pad_token_id)
        rows = [encode_prompt(self.tokenizer, e.prompt + c) for c, e in zip(completions, examples, strict=True)]
        scores: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            ids, mask = _right_pad(rows[start : start + self.batch_size], pad_id=pad)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            scores += logits[:, 0].float().cpu().tolist()
        return scores


class RubricJudge:
    """Reward = fraction of rubric items a judge model says the response satisfies.

    Each item is asked separately ("does the response satisfy: <item>? yes/no"); the item counts as satisfied
    when the judge's next-token logit for "yes" beats "no" (Gunjal et al. 2025, "Rubrics as Rewards": a rubric
    item is a checklist criterion graded independently; the reward aggregates the satisfied fraction).
    """

    def __init__(self, path: str, *, device: torch.device, batch_size: int = 32) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        loaded = (
            load_merged(path, head="causal_lm")
            if is_adapter_folder(path)
            else AutoModelForCausalLM.from_pretrained(path)
        )
        self.model = frozen(moved(loaded, device))
        self.device = device
        self.batch_size = batch_size
        self.yes_id, self.no_id = self._answer_tokens(path)

    def _answer_tokens(self, path: str) -> tuple[int, int]:
        spelling = answer_spellings(self.tokenizer)
        if spelling is None:
            raise ValueError(f"the judge's tokenizer ({path}) does not tell 'yes' from 'no' by their first token")
        return spelling[2], spelling[3]

    @torch.no_grad()
    def satisfied(self, prompt: str, response: str, items: Sequence[str]) -> list[bool]:
        """The judge's verdict on each rubric item."""
        queries = [JUDGE_TEMPLATE.format(prompt=prompt, response=response, item=item) for item in items]
        verdicts: list[bool] = []
        pad = int(self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0)
        for start in range(0, len(queries), self.batch_size):
            rows = [encode_prompt(self.tokenizer, q) for q in queries[start : start + self.batch_size]]
            ids, mask = pad_left(rows, pad_id=pad)
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits[:, -1]
            verdicts += (logits[:, self.yes_id] > logits[:, self.no_id]).cpu().tolist()
        return verdicts

    def __call__(self, completions: Sequence[str], examples: Sequence[PromptExample]) -> list[float]:
        """Fraction of each example's rubric items satisfied (0 when the example has no rubric)."""
        scores: list[float] = []
        for completion, example in zip(completions, examples, strict=True):
            if not example.rubric:
                scores.append(0.0)
                continue
            verdicts = self.satisfied(example.prompt, completion, example.rubric)
            scores.append(sum(verdicts) / len(verdicts))
        return scores


class ProcessRewardModel:
    """A ``process_reward_model`` run's checkpoint: the probability that each step of a completion violates a policy.

    A completion's steps are its non-empty lines; step k is scored in the context the model was trained on
    (``render_step_prompt``: the task, then the steps before it), as σ(logit)."""

    def __init__(self, path: str, *, device: torch.device, batch_size: int = 32) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        loaded = (
            load_merged(path, head="sequence_classifier")  # a LoRA run's folder: base, adapters and head merged
            if is_adapter_folder(path)
            else AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        )
        self.model = frozen(moved(loaded, device))
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def step_violations(self, task: str, completion: str) -> list[float]:
        """P(violation) of each step (line) of ``completion``."""
        steps = [line for line in completion.splitlines() if line.strip()]
        # Tokenised as the recipe trained it: the context, then the step with EOS (the head reads that last token).
        rows = [
            encode_prompt(self.tokenizer, render_step_prompt(task, steps[:k])) + encode_completion(self.tokenizer, step)
            for k, step in enumerate(steps)
        ]
        pad = int(self.model.config.pad_token_id)
        probs: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            ids, mask = _right_pad(rows[start : start + self.batch_size], pad_id=pad)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            probs += torch.sigmoid(logits[:, 0].float()).cpu().tolist()
        return probs


class CompletionUnderPolicy:
    """Completion under Policy (ST-WebAgentBench's CuP) as a GRPO reward: 1 when the task is completed and no step
    violates a policy, else 0. Completion is the exact-match verifier against the row's answer (a row without an
    answer counts as completed, so the reward is "no step violates"); a step violates when the process reward
    model gives it a probability above ``threshold``."""

    def __init__(self, prm: ProcessRewardModel, *, threshold: float = 0.5) -> None:
        self.prm = prm
        self.threshold = threshold

    def __call__(self, completions: Sequence[str], examples: Sequence[PromptExample]) -> list[float]:
        from training.engine.rewards.verifiers import exact_match

        done = exact_match(completions, examples)
        scores: list[float] = []
        for completion, example, success in zip(completions, examples, done, strict=True):
            completed = success == 1.0 or example.answer is None
            if not completed:
                scores.append(0.0)
                continue
            violated = any(p > self.threshold for p in self.prm.step_violations(example.prompt, completion))
            scores.append(0.0 if violated else 1.0)
        return scores


def answer_spellings(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str, int, int] | None:
    """How the judge reads "yes" and "no": the first spellings whose first tokens differ (a character tokenizer
    would otherwise compare the leading space with itself), with those token ids. A judge trained on people's
    verdicts (the rubric_judge recipe) is taught these same spellings."""
    unk = tokenizer.unk_token_id
    for yes, no in ((" yes", " no"), ("yes", "no"), (" Yes", " No"), ("Yes", "No")):
        y = tokenizer(yes, add_special_tokens=False)["input_ids"]
        n = tokenizer(no, add_special_tokens=False)["input_ids"]
        if y and n and y[0] != n[0] and unk not in (y[0], n[0]):
            return yes, no, int(y[0]), int(n[0])
    return None


def _right_pad(rows: list[list[int]], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
