"""torchrun support: DDP or FSDP2 over N processes; metrics reduced across ranks; one full checkpoint from rank 0.

Command-line contract (what the GPU worker launches for a run that asks for N GPUs):

    torchrun --standalone --nproc-per-node N -m training.engine RUN_SPEC.json

with ``CUDA_VISIBLE_DEVICES`` naming the run's N GPUs (rank i uses ``cuda:LOCAL_RANK``). Without torchrun
(``python -m training.engine RUN_SPEC.json``) the engine is one process and joins no group. The config's
``distributed`` field picks DDP (every rank holds the whole model; gradients all-reduced) or FSDP2
(``torch.distributed.fsdp.fully_shard`` per decoder layer and on the root: weights, gradients and
optimiser state sharded). ``batch_size`` is the global batch: each rank takes ``batch_size / world_size``
of each step's examples (contiguous shares of the same seeded order), so a run's data, losses, gradients and
metrics do not depend on how many processes share it. Rank 0 alone reports and writes checkpoints; a
checkpoint holds full (unsharded) weights and optimiser state, so any number of processes can resume it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

TORCHRUN_COMMAND = ("torchrun", "--standalone", "--nproc-per-node")  # then N, "-m", "training.engine", SPEC


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    joined: bool = False  # in a process group (torchrun, even with one process)
    strategy: str = "ddp"  # "ddp" or "fsdp", from the recipe config (set by RunContext.create)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reports and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether this process is in a process group (collectives are needed and legal)."""
        return self.joined

    @property
    def fsdp(self) -> bool:
        """Whether the trained model is sharded with FSDP2."""
        return self.joined and self.strategy == "fsdp"


def launched_by_torchrun() -> bool:
    """torchrun (torch.distributed.run) sets these for every worker it starts."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun described in the environment, else run as a single process."""
    if not launched_by_torchrun():
        return DistInfo()
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group(backend="gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, joined=True)


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DDP-wrap or FSDP2-shard the trained module in a process group; otherwise return it unchanged.

    FSDP2: ``fully_shard`` on every decoder layer, then on the root (embeddings, final norm and LM head, tied
    or not, stay in the root's group), as the PyTorch FSDP2 tutorial and TorchTitan shard Llama.
    """
    if not info.enabled:
        return model
    if info.strategy == "fsdp":
        mesh = init_device_mesh(_device_type(), (info.world_size,))
        for layer in _decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    device_ids = [info.local_rank] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=device_ids)


wrap_ddp = wrap_model  # the name recipes used before FSDP existed


def _device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (``model.model.layers`` for Llama-family ones), found by
    transformers' own ``_no_split_modules`` names, which list exactly the classes that must not be split."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (an FSDP2 module is the model itself, its class extended in place)."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    assert isinstance(inner, torch.nn.Module)
    return inner


@contextmanager
def gathered(model: torch.nn.Module, info: DistInfo) -> Iterator[torch.nn.Module]:
    """The model with full weights on every rank for a while (generation, evaluation), FSDP2 or not.

    Under FSDP2 every group is unsharded once and kept so (no reshard after forward), so forward passes inside
    need no collectives: ranks may run different numbers of them (a decode loop that stops when its own rows
    end) without waiting for each other. Costs one full copy of the weights per rank while it lasts.
    """
    inner = unwrap(model)
    outermost = not _GATHERED.get(id(inner))
    groups = [m for m in inner.modules() if isinstance(m, FSDPModule)] if info.fsdp and outermost else []
    for group in groups:
        group.set_reshard_after_forward(False, recurse=False)
        group.unshard()
    _GATHERED[id(inner)] = _GATHERED.get(id(inner), 0) + 1
    try:
        yield inner
    finally:
        _GATHERED[id(inner)] -= 1
        for group in groups:
            group.reshard()
            group.set_reshard_after_forward(True, recurse=False)


_GATHERED: dict[int, int] = {}  # id(model) -> depth of nested ``gathered`` blocks (evaluation samples inside one)


def all_sum(values: Mapping[str, float], info: DistInfo) -> dict[str, float]:
    """Each value summed over ranks (float64); the identity on one process."""
    return _reduce(values, info, dist.ReduceOp.SUM)


def all_mean(values: Mapping[str, float], info: DistInfo) -> dict[str, float]:
    """Each value averaged over ranks: the global value of a mean over equal shares (a batch split evenly)."""
    total = all_sum(values, info)
    return {k: v / info.world_size for k, v in total.items()}


def all_min(values: Mapping[str, float], info: DistInfo) -> dict[str, float]:
    """Each value's minimum over ranks."""
    return _reduce(values, info, dist.ReduceOp.MIN)


def all_max(values: Mapping[str, float], info: DistInfo) -> dict[str, float]:
    """Each value's maximum over ranks."""
    return _reduce(values, info, dist.ReduceOp.MAX)


def _reduce(values: Mapping[str, float], info: DistInfo, op: Any) -> dict[str, float]:
    if not info.enabled or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=op)
    return dict(zip(keys, tensor.tolist(), strict=True))


def all_gather_rows(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's rows of ``tensor`` in rank order (dim 0; the other dims must agree); as is on one process."""
    if not info.enabled:
        return tensor
    local = tensor.detach().contiguous().to(_collective_device())
    parts = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(tensor.device)


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def grad_norm_value(norm: torch.Tensor) -> float:
    """``clip_grad_norm_``'s result as a number (under FSDP2 it is a replicated DTensor)."""
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm)


def full_model_state(model: torch.nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The trained model's full state dict on CPU for rank 0 to save (a collective under FSDP2: every rank
    calls it); None where nothing needs gathering (the model's own ``save_pretrained`` then reads it)."""
    if not info.fsdp:
        return None
    state: dict[str, torch.Tensor] = {}
    seen: dict[int, torch.Tensor] = {}  # tied weights (embeddings = LM head) stay one tensor, so that
    for name, value in unwrap(model).state_dict(keep_vars=True).items():  # save_pretrained drops the tie
        if id(value) not in seen:
            full = value.full_tensor() if isinstance(value, DTensor) else value
            seen[id(value)] = full.detach().cpu()
        state[name] = seen[id(value)]
    return state


def full_optimizer_state(optimizer: torch.optim.Optimizer, info: DistInfo) -> dict[str, Any]:
    """The optimiser's state dict with full tensors (a collective under FSDP2: every rank calls it).

    The result has the single-process layout (state keyed by parameter position), so a checkpoint written by
    any number of processes, with DDP or FSDP2, loads into any other.
    """
    state = optimizer.state_dict()
    if not info.fsdp:
        return state
    # New dicts: state_dict() hands out the optimiser's live per-parameter dicts, which must keep their shards.
    state["state"] = {
        index: {k: v.full_tensor().cpu() if isinstance(v, DTensor) else v for k, v in entry.items()}
        for index, entry in state["state"].items()
    }
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], info: DistInfo) -> None:
    """Load a full optimiser state saved by ``full_optimizer_state``; under FSDP2 each tensor is first cut into
    this rank's shard of its parameter (every rank read the same file, so no data moves between ranks)."""
    if info.fsdp:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, entry in state["state"].items():
            param = params[int(index)]
            if not isinstance(param, DTensor):
                continue
            for key, value in list(entry.items()):
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    entry[key] = distribute_tensor(
                        value.to(param.device), param.device_mesh, param.placements, src_data_rank=None
                    )
    optimizer.load_state_dict(state)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others will read)."""
    if info.enabled:
        dist.barrier()


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group cleanly."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
