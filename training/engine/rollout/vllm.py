"""Rollouts on a colocated vLLM engine (GPU worker image only); weights pushed in after each optimiser step.

vllm is imported lazily, inside this module's functions: the CPU stack never has it (vllm pins its own torch).
Weight sync follows the colocated recipe TRL and verl use: each parameter goes through the vLLM model's own
``load_weights`` (which knows how to fuse q/k/v and gate/up projections), then the prefix cache is reset
because cached KV blocks were computed with the old weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch

from training.engine.distributed import unwrap
from training.engine.rollout import Rollout

# Paths to the in-process model across vLLM versions (V1 engine with multiprocessing off, then V0 layouts).
_MODEL_PATHS: tuple[Callable[[Any], Any], ...] = (
    lambda llm: llm.llm_engine.model_executor.driver_worker.worker.model_runner.model,
    lambda llm: llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model,
    lambda llm: llm.llm_engine.model_executor.driver_worker.model_runner.model,
)


class VLLMRollout:
    """A ``vllm.LLM`` sharing the GPU with the trainer; sampling with ``SamplingParams(n=G)``."""

    def __init__(
        self,
        model_path: str,
        *,
        pad_token_id: int,
        gpu_memory_utilization: float,
        max_model_len: int,
        seed: int,
        dtype: str = "auto",
    ) -> None:
        # Keep the engine core in this process, so its model object is reachable for in-place weight loads.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import vllm

        self.pad_token_id = pad_token_id
        self.llm = vllm.LLM(
            model=model_path,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            dtype=dtype,
            enable_prefix_caching=True,
            # Rollouts change weights every step; CUDA graphs would be captured for nothing on tiny models.
            enforce_eager=True,
        )

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
        """Sample ``n`` completions per tokenised prompt in one vLLM call (one request per prompt; with a seed,
        each request's seed is derived from it and the prompt's place in the step: see prompt_seeds)."""
        import vllm
        from vllm.inputs import TokensPrompt

        seeds: list[int | None] = [None] * len(prompts)
        if seed is not None:
            seeds = list(prompt_seeds(seed, first_prompt, len(prompts)))
        params = [
            vllm.SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_new_tokens,
                logprobs=0 if return_logprobs else None,  # 0 = the sampled token's log-prob only
                seed=s,
            )
            for s in seeds
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], sampling_params=params, use_tqdm=False
        )
        sequences: list[list[int]] = []
        seq_logps: list[list[float]] = []
        finished: list[bool] = []
        for request in outputs:
            for completion in request.outputs:
                token_ids = list(completion.token_ids)
                sequences.append(token_ids)
                finished.append(completion.finish_reason == "stop")
                if return_logprobs and completion.logprobs is not None:
                    seq_logps.append(
                        [step[tok].logprob for step, tok in zip(completion.logprobs, token_ids, strict=True)]
                    )
        return _pack(sequences, seq_logps if return_logprobs else None, finished, pad_token_id=self.pad_token_id)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Load the trainer's current parameters into the vLLM model, then drop KV blocks computed with the old ones."""
        weights = _named_weights(unwrap(model))
        target = self._model()
        if target is not None:
            target.load_weights(weights)
        else:  # engine in another process: ship the call there (needs VLLM_ALLOW_INSECURE_SERIALIZATION=1)
            state = list(weights)
            self.llm.apply_model(lambda m: m.load_weights(state))
        self.llm.reset_prefix_cache()

    def _model(self) -> Any:
        for path in _MODEL_PATHS:
            try:
                return path(self.llm)
            except AttributeError:
                continue
        return None


def prompt_seeds(seed: int, first_prompt: int, count: int) -> list[int]:
    """Per-request seeds: prompt i of a step (counted over every rank's prompts) gets seed + i, so its G
    completions are the same whichever rank samples it and however many ranks share the step."""
    return [(seed + first_prompt + i) % (2**31 - 1) for i in range(count)]


def _named_weights(model: torch.nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    # Tied embeddings appear once in named_parameters; vLLM's loader re-ties lm_head itself.
    for name, param in model.named_parameters():
        yield name, param.detach()


def _pack(
    sequences: list[list[int]], logps: list[list[float]] | None, finished: list[bool], *, pad_token_id: int
) -> Rollout:
    width = max(1, max((len(s) for s in sequences), default=1))
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    lp = torch.zeros((len(sequences), width)) if logps is not None else None
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
        if lp is not None and logps is not None:
            lp[i, : len(seq)] = torch.tensor(logps[i])
    return Rollout(ids, mask, lp, torch.tensor(finished, dtype=torch.bool))
