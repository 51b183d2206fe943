"""Rollouts behind one interface: Hugging Face / plain torch everywhere, vLLM when a GPU and vllm are present."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Rollout:
    """``n`` completions per prompt, groups contiguous: row i belongs to prompt i // n."""

    completion_ids: torch.Tensor  # (N, T) long, padded with pad_id after the end
    completion_mask: torch.Tensor  # (N, T) 1 on real tokens (EOS included), 0 on padding
    logprobs: torch.Tensor | None  # (N, T) sampling log-probabilities, if asked for
    finished: torch.Tensor  # (N,) bool: ended with EOS (False = cut at max_new_tokens)


class RolloutBackend(Protocol):
    """What GRPO needs from a sampler."""

    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        return_logprobs: bool = False,
        seed: int | None = None,
        first_prompt: int = 0,
        total_prompts: int | None = None,
    ) -> Rollout:
        """Sample ``n`` completions for each tokenised prompt.

        ``seed``: draw from a stream of this seed alone (``rollout_seed``) rather than torch's global one.
        ``first_prompt`` / ``total_prompts``: these prompts are [first, first + len) of a step's ``total``
        prompts split over ranks; with a seed, a prompt's completions then depend on its place in the whole
        step, not on how many processes share it (a 2-process run samples what a 1-process run samples).
        """
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the sampler use ``model``'s current weights (after an optimiser step)."""
        ...


def rollout_seed(run_seed: int, generation_index: int) -> int:
    """The sampling seed of one generation batch: a pure function of the run's seed and the batch's index, so
    a resumed run samples exactly what the uninterrupted one did (a backend seeded once at start-up would
    continue its stream from wherever the restart left it)."""
    return (run_seed * 1_000_003 + generation_index * 7_919 + 0x5EED) % (2**31 - 1)


def vllm_available() -> bool:
    """A GPU is present and vllm is importable (checked without importing it)."""
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def choose_backend(requested: str) -> str:
    """'auto' -> 'vllm' when available, else 'hf'; asking for 'vllm' without it is an error, not a silent fallback."""
    if requested == "auto":
        return "vllm" if vllm_available() else "hf"
    if requested == "vllm" and not vllm_available():
        raise RuntimeError("rollout_backend='vllm' needs a CUDA GPU and the vllm package (the GPU worker image)")
    return requested
