"""Process-group setup that works the same under the deepspeed launcher, torchrun and plain python.

The accelerator is chosen here, before deepspeed is imported anywhere (deepspeed resolves its
accelerator on import): CUDA + nccl when a GPU is visible, otherwise DeepSpeed's CPU accelerator +
gloo. Every launcher exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a plain
`python -m chunksft.train` gets a one-rank group on a free loopback port instead of deepspeed's MPI
discovery (which would need mpi4py).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_distributed() -> DistInfo:
    """Select the accelerator, initialise the process group, set the device and CPU threads."""
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    import deepspeed  # noqa: E402  (after DS_ACCELERATOR is set)

    if not cuda:
        skip_shm_comm_build()
    backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    world_size = dist.get_world_size()
    # torchrun exports LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE.
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", world_size)))
    if not cuda and "OMP_NUM_THREADS" not in os.environ:
        # Ranks on one host share its cores; oversubscribing them slows every rank down.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), world_size, local_rank, local_world_size, device, backend)


def shutdown_distributed() -> None:
    """Destroy the process group before the interpreter exits. Left alive, gloo's threads race the
    interpreter's teardown and a process that returned cleanly can still abort ("terminate called
    without an active exception", exit -6), e.g. right after refusing a busy output folder."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def skip_shm_comm_build() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory CPU communication op at start-up.

    On CPU, `deepspeed.init_distributed` compiles `deepspeed_shm_comm` on a machine's first start
    (1-3 silent minutes), and a build interrupted midway leaves a lock under ~/.cache/torch_extensions
    on which every later start waits forever. That op serves only `inference_all_reduce` (tensor-
    parallel inference); ZeRO-3 training communicates through torch.distributed (gloo), so marking
    the op unavailable, the state DeepSpeed itself falls back to on platforms without it, changes no
    collective that training runs.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def all_mean(values: torch.Tensor) -> torch.Tensor:
    """Elementwise mean of a float tensor over all ranks (a copy; the input is untouched)."""
    out = values.detach().clone().float()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is True on at least one rank (every rank gets the same answer)."""
    return max_over_ranks([float(flag)], device)[0] > 0


def max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Elementwise maximum of `values` over all ranks: several agreements for one all-reduce."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def on_main(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only (it reads or writes shared files); every rank returns its result, or
    raises the exception it raised, so all ranks take the same path."""
    outcome = None
    if dist.get_rank() == 0:
        try:
            outcome = fn()
        except Exception as exc:
            outcome = exc
    outcome = broadcast_from_main(outcome)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled; for small decisions, not tensors)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
