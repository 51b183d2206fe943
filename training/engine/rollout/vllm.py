"""Rollouts on a colocated vLLM engine (GPU worker image only); weights pushed in after each optimiser step.

vllm is imported lazily, inside this module's functions: the CPU stack never has it (vllm pins its own torch).
Checked against vLLM's and TRL's source (huggingface/trl trl/generation/vllm_generation.py at f2cd577,
2026-07-24, VLLMGeneration colocate mode; vllm-project/vllm vllm/v1/engine/parallel_sampling.py at 003d3ee):

- Under torchrun every rank builds its own ``LLM`` with ``distributed_executor_backend="external_launcher"`` (as
  TRL's colocate mode does): vLLM joins the ranks torchrun started instead of spawning workers, and each rank's
  engine runs on its own device (cuda:LOCAL_RANK), not all on cuda:0.
- ``logprobs_mode="processed_logprobs"``: the sampled tokens' log-probs after temperature and top-p, comparable
  with the trainer's (temperature-scaled) log-probs for the importance-sampling correction (TRL's comment:
  "Important so temperature scaling/logit tweaking affects the TIS log probs").
- Sleep mode: level 1 (weights copied to CPU, KV cache freed) while the trainer steps. TRL uses level 2 and then
  needs ``collective_rpc("reload_weights")`` to work around vllm-project/vllm#29341 (level 2 discards buffers
  such as rotary caches); level 1 keeps them, and every parameter is overwritten by the sync anyway.
- Weight sync: each parameter through the vLLM model's own ``load_weights`` (it fuses q/k/v and gate/up), full
  tensors under FSDP2 (``full_tensor()``, TRL's _sync_fsdp2_params_to_vllm), then ``reset_prefix_cache`` because
  cached KV blocks were computed with the old weights.
- Seeds: one ``SamplingParams`` per prompt; vLLM gives child j of an n-sample request the seed ``seed + j``
  (ParentRequest._get_child_sampling_params), so prompt seeds are spaced n apart (``prompt_seeds``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from training.engine.distributed import unwrap
from training.engine.rollout import Rollout

# Paths to the in-process model across vLLM versions: TRL's (V1, in-process engine core) first.
_MODEL_PATHS: tuple[Callable[[Any], Any], ...] = (
    lambda llm: llm.llm_engine.model_executor.driver_worker.model_runner.model,
    lambda llm: llm.llm_engine.model_executor.driver_worker.worker.model_runner.model,
    lambda llm: llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model,
)


def cap_max_model_len(requested: int, *, needed: int, model_max_positions: int | None) -> int:
    """vLLM's context length: ``requested`` (0 = ``needed``, the prompt cap plus the completion cap), never past
    the model's positions. An explicit value past them is refused (vLLM would refuse it later, less clearly);
    the default is capped (vLLM then ends a completion that reaches the model's positions, finish_reason length).
    """
    if requested and model_max_positions is not None and requested > model_max_positions:
        raise ValueError(
            f"vllm_max_model_len={requested} exceeds the model's max_position_embeddings={model_max_positions}"
        )
    length = requested or needed
    return min(length, model_max_positions) if model_max_positions is not None else length


def model_max_positions(model_path: str) -> int | None:
    """The model's context length from its config (None when it does not say)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text = getattr(config, "text_config", None) or config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if value else None


class VLLMRollout:
    """A ``vllm.LLM`` sharing the GPU with the trainer; one request per prompt with ``SamplingParams(n=G)``."""

    def __init__(
        self,
        model_path: str,
        *,
        pad_token_id: int,
        gpu_memory_utilization: float,
        max_model_len: int,
        seed: int,
        dtype: str = "auto",
        external_launcher: bool = False,
        enable_sleep_mode: bool = False,
        llm: Any = None,
    ) -> None:
        """``external_launcher``: this process is one rank of a torchrun job (RANK, WORLD_SIZE, LOCAL_RANK and
        MASTER_ADDR/PORT in the environment, as torchrun sets them). ``llm``: an engine already built (tests)."""
        self.pad_token_id = pad_token_id
        self.enable_sleep_mode = enable_sleep_mode
        self.asleep: set[str] = set()
        if llm is None:
            # Keep the engine core in this process, so its model object is reachable for in-place weight loads.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            import vllm

            extra: dict[str, Any] = {}
            if external_launcher:
                extra["distributed_executor_backend"] = "external_launcher"
            llm = vllm.LLM(
                model=model_path,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                seed=seed,
                dtype=dtype,
                enable_prefix_caching=True,
                enable_sleep_mode=enable_sleep_mode,
                logprobs_mode="processed_logprobs",
                # TRL: vLLM V1's memory profiler is misled by the default 32768 on a shared GPU.
                max_num_batched_tokens=max(4096, max_model_len),
                # Rollouts change weights every step; CUDA graphs would be captured for nothing on tiny models.
                enforce_eager=True,
                **extra,
            )
        self.llm = llm
        self.sleep()

    def sleep(self) -> None:
        """Level 1: weights to CPU memory, KV cache freed, so the trainer's step has the GPU (no-op without
        sleep mode)."""
        if self.enable_sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def _wake(self, tags: list[str]) -> None:
        wanted = [tag for tag in tags if tag in self.asleep]
        if wanted:
            torch.cuda.empty_cache()  # TRL: "required to avoid OOM in some cases"
            self.llm.wake_up(tags=wanted)
            self.asleep -= set(wanted)

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
            seeds = list(prompt_seeds(seed, first_prompt, len(prompts), n=n))
        self._wake(["weights", "kv_cache"])
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
        self.sleep()
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
        """Load the trainer's current parameters into the vLLM model, then drop KV blocks computed with the old ones.
        Every rank calls it (under FSDP2 gathering each parameter is a collective)."""
        # TRL wakes the weights before loading: load_weights must write into mapped memory (trl#5142).
        self._wake(["weights"])
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


def prompt_seeds(seed: int, first_prompt: int, count: int, *, n: int) -> list[int]:
    """Per-request seeds: prompt p of a step (counted over every rank's prompts) gets seed + p·n, and vLLM gives
    its j-th completion seed + p·n + j (ParentRequest._get_child_sampling_params): every completion of the step
    has its own seed, the same whichever rank samples it and however many ranks share the step."""
    return [(seed + (first_prompt + i) * n) % (2**31 - 1) for i in range(count)]


def _named_weights(model: torch.nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    # Tied embeddings appear once in named_parameters; vLLM's loader re-ties lm_head itself. Names lose the
    # activation-checkpoint wrapper's prefix, as TRL's _fix_param_name_to_vllm does.
    for name, param in model.named_parameters():
        value = param.detach()
        if isinstance(value, DTensor):
            value = value.full_tensor()
        yield name.replace("_checkpoint_wrapped_module.", ""), value


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
