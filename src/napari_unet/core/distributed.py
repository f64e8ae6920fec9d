"""Data-parallel training with torch.distributed (gloo on CPUs, nccl on GPUs).

Each training step's batch of ``B`` samples has global indices ``step * B + j``;
every process computes its contiguous share of them (:func:`batch_share`), and
since a sample is a pure function of the run's seed and its index (see
``samples.SampleStream``), N processes see exactly the samples one process would.
The loss is the weighted sum over the local samples divided by the weight summed
over all processes, and gradients are summed across processes, so every process
takes the step one process would take on the whole batch, up to float rounding.

Processes are started by torchrun (``torch.distributed.run``): on one machine with
``napari-unet train ... --nproc N``, on several with torchrun's own rendezvous
options. A script launched by torchrun that initialises the default process group
trains the same way: :class:`~napari_unet.core.train.Trainer` detects the group.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, validates and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_group() -> ProcessGroup:
    """The default torch.distributed process group, if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size())
    return ProcessGroup()


def join_from_environment(device: torch.device) -> ProcessGroup:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE``,
    ``RANK``, ...), if any and not joined yet; on CPUs split the cores between the
    processes of this machine. Returns :func:`current_group`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return current_group()


def batch_share(batch_size: int, group: ProcessGroup) -> range:
    """The slots ``j`` of a global batch that this process computes (contiguous, as
    even as possible)."""
    if batch_size < group.world_size:
        raise ConfigError(
            f"a batch of {batch_size} cannot be split over {group.world_size} processes: "
            f"use a batch size of at least {group.world_size}, or fewer processes"
        )
    base, extra = divmod(batch_size, group.world_size)
    start = group.rank * base + min(group.rank, extra)
    return range(start, start + base + (group.rank < extra))


#: Handles of the latest collectives. A gloo worker thread drops its reference to a
#: collective's tensors just after the caller has its result; were that the last
#: reference, the thread would need the GIL to free them, and when the interpreter is
#: already exiting it aborts the process ("terminate called without an active
#: exception": 8 of 309 two-process runs of the distributed test on this project's
#: 2-core machines; 0 of 339 with the handles held). Held here, the last reference
#: is this module's, dropped with the GIL.
_LATEST_COLLECTIVES: deque[dist.Work] = deque(maxlen=4)


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> None:
    """Reduce ``tensor`` in place over all processes and wait for the result."""
    work = dist.all_reduce(tensor, op=op, async_op=True)
    work.wait()
    _LATEST_COLLECTIVES.append(work)


def sum_over_processes(value: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """``value`` summed over all processes (``value`` itself when alone)."""
    if group.distributed:
        value = value.clone()
        _all_reduce(value, dist.ReduceOp.SUM)
    return value


def sum_gradients(parameters: Sequence[nn.Parameter], group: ProcessGroup) -> None:
    """Replace every parameter's gradient by its sum over all processes (one message)."""
    if not group.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    _all_reduce(flat, dist.ReduceOp.SUM)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def collective_device() -> torch.device:
    """Where the tensors of a collective made here must be: on this process's GPU
    when the default group is nccl's, which reduces CUDA tensors only ("No backend
    type associated with device type cpu"); else on the CPU (gloo, or a group
    initialised as "cpu:gloo,cuda:nccl")."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def max_over_processes(value: float, group: ProcessGroup) -> float:
    """The largest ``value`` over all processes (``value`` itself when alone)."""
    if not group.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=collective_device())
    _all_reduce(tensor, dist.ReduceOp.MAX)
    return float(tensor.item())


def any_process(flag: bool, group: ProcessGroup) -> bool:
    """Whether ``flag`` is true on any process, so that all stop at the same step."""
    if not group.distributed:
        return flag
    value = torch.tensor([int(flag)], device=collective_device())
    _all_reduce(value, dist.ReduceOp.MAX)
    return bool(value.item())


def launch(nproc: int, cli_arguments: Sequence[str]) -> None:
    """Run ``napari-unet`` with ``cli_arguments`` in ``nproc`` processes on this machine
    under torchrun; raises ``ChildFailedError`` (after torchrun stopped the others)
    when one of them fails."""
    from torch.distributed import run as torchrun

    # the launcher's own notes on a Ctrl-C ("Sending process 10125 closing signal SIGINT", one
    # per process) are not the user's business: the processes say what they do; a process it had
    # to kill is (it is given SHUTDOWN_TIMEOUT_S to finish its step and write its files)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).addFilter(_signal_notes_left_out)
    # "--" ends torchrun's own options, so none of ours is read as an abbreviation of one of its
    torchrun.main([
        "--standalone", f"--nproc-per-node={nproc}", f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
        "-m", "--", "napari_unet.cli", *cli_arguments,
    ])  # fmt: skip


#: Seconds the launcher gives the processes to stop after a Ctrl-C before it kills them:
#: a step of the 3D network on a CPU and the writing of model and checkpoint take more
#: than torchrun's 30.
SHUTDOWN_TIMEOUT_S = 600


def _signal_notes_left_out(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("closing signal" in message or "death signal" in message)
