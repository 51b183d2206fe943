"""Hugging Face checkpoint folders plus the trainer state that makes a resumed run equal an uninterrupted one."""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict, runtime_checkable

import torch
from transformers import PreTrainedTokenizerBase

TRAINER_STATE = "trainer_state.pt"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@runtime_checkable
class Saveable(Protocol):
    """What a checkpoint folder is written from: a transformers model (whole weights) or a peft model (its
    adapters and ``modules_to_save``: a PEFT folder)."""

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """Write the model's files into ``save_directory``."""
        ...


class TrainerState(TypedDict):
    """Everything beyond the weights that an exact resume needs."""

    step: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    # One entry per rank: what Recipe.state_dict returned (GRPO's generation batch). Older checkpoints lack it.
    recipe: NotRequired[list[object]]


def save_model_folder(
    folder: Path,
    *,
    model: Saveable,
    tokenizer: PreTrainedTokenizerBase,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a folder that the next run's ``model_name_or_path`` and sampling can load: a Hugging Face folder
    (``from_pretrained``, vLLM), or for a LoRA run a PEFT folder (``adapters.load_merged`` makes it a plain model).

    ``state_dict``: the full weights when ``model`` holds only a shard of them (FSDP2; distributed.full_model_state).
    """
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(folder)


def save_checkpoint(
    *,
    output_dir: Path,
    step: int,
    model: Saveable,
    tokenizer: PreTrainedTokenizerBase,
    optimizer_state: dict[str, Any],
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    recipe_states: list[object] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``<output_dir>/checkpoint-<step>/`` atomically: a cancel mid-write never leaves a half checkpoint.

    ``optimizer_state`` is the full (unsharded) state (distributed.full_optimizer_state), ``state_dict`` the
    full weights when ``model`` is sharded: one checkpoint, loadable by any number of processes.
    """
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model_folder(tmp, model=model, tokenizer=tokenizer, state_dict=state_dict)
    state: TrainerState = {
        "step": step,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng(),
        "recipe": recipe_states if recipe_states is not None else [],
    }
    torch.save(state, tmp / TRAINER_STATE)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def load_trainer_state(folder: Path) -> TrainerState:
    """Read a checkpoint's trainer state (weights are loaded through the model path)."""
    path = folder / TRAINER_STATE
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a resumable checkpoint: {TRAINER_STATE} is missing")
    state: TrainerState = torch.load(path, map_location="cpu", weights_only=False)
    return state


def recipe_state(state: TrainerState, *, rank: int, world_size: int) -> Mapping[str, object]:
    """This rank's recipe state, or an empty one (an older checkpoint, or one written by another world size:
    the ranks' shares of the data differ, so a saved generation batch would not be this rank's)."""
    saved = state.get("recipe", [])
    entry = saved[rank] if len(saved) == world_size else None
    return entry if isinstance(entry, Mapping) else {}


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint folder with the highest step, if any."""
    found: list[tuple[int, Path]] = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            if (match := _CHECKPOINT_RE.match(child.name)) and (child / TRAINER_STATE).exists():
                found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def capture_rng() -> dict[str, Any]:
    """Python's and torch's generator states."""
    rng: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    """Put back what ``capture_rng`` saved."""
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
