"""One run over several processes: torchrun's ranks, DDP or FSDP2 around the model, and the few
collectives train.py needs.

    torchrun --nproc_per_node 4 train.py --parallel ddp  ...     # a replica per GPU
    torchrun --nproc_per_node 2 train.py --parallel fsdp ...     # weights sharded across GPUs

torchrun starts the processes and gives each its RANK, WORLD_SIZE and LOCAL_RANK; PyTorch's
own process group (nccl on GPUs, gloo on CPU) moves the numbers. Nothing here launches or
supervises processes: when a rank dies, torchrun stops the others (they get SIGTERM, print one
line and exit non-zero), and a collective that waits longer than --dist-timeout fails.

Exact gradients. Each rank computes the summed loss of its share of the global batch
(data/batches.py). Dividing it by the target tokens of the *whole* global step (an all-reduced
count) and multiplying by the number of ranks (DDP and FSDP average gradients over ranks) gives
every rank the gradient one process would get from the whole global batch. Gradients are only
exchanged after the last micro-batch of a step (DDP's no_sync, FSDP's
set_requires_gradient_sync), so accumulation costs no extra communication.

FSDP2 (torch.distributed.fsdp.fully_shard) is applied to every transformer block and then to the
loss module at the root, which owns the embedding, the final norm and lm_head. Each rank keeps
1/N of every parameter between uses; a block's full weights exist only while it computes.
train.py shards each block as soon as the loader has read it (shard_block), so a rank never holds
the whole model while loading either.
"""

import contextlib
import datetime
import os
import signal
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn

from model.errors import UserError
from model.quant.linear4bit import Linear4bit

PARALLEL = ("none", "ddp", "fsdp")
NF4_SHARDED = ("weight", "absmax", "nested_absmax")   # Linear4bit tensors FSDP shards (see below)


@dataclass
class World:
    """Who this process is. The defaults are a plain single-process run."""
    parallel: str = "none"
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mesh: object = field(default=None, repr=False, compare=False)   # FSDP's DeviceMesh, made on first use

    @property
    def distributed(self) -> bool:
        return self.parallel != "none"

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder's shared files and prints the logs."""
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """The sums of `values` over all ranks, in one all-reduce (float64: counts stay exact)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (a Ctrl-C, say, that reached only some)."""
        return self.sum(float(flag))[0] > 0

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def describe(self) -> str:
        if not self.distributed:
            return "one process"
        return (f"{self.parallel.upper()}, {self.size} ranks ({dist.get_backend()} on {self.device.type}); "
                f"rank {self.rank} is pid {os.getpid()}")


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(parallel: str, device_flag: str, timeout_s: float) -> World:
    """Joins torchrun's process group for --parallel ddp|fsdp; a plain World for none.

    --device auto and cuda mean this rank's GPU (cuda:LOCAL_RANK); cpu means gloo on CPU.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if parallel not in PARALLEL:
        raise UserError(f"--parallel {parallel}: choose {', '.join(PARALLEL)}")
    if parallel == "none":
        if launched_by_torchrun() and size > 1:
            raise UserError(f"torchrun started {size} processes but --parallel is none: add --parallel ddp "
                            "or --parallel fsdp (or run python train.py without torchrun)")
        return World()
    if not launched_by_torchrun():
        raise UserError(f"--parallel {parallel} runs under torchrun: torchrun --nproc_per_node N "
                        f"train.py --parallel {parallel} ...")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    gpu = device_flag in ("auto", "cuda") and torch.cuda.is_available()
    if device_flag.startswith("cuda:"):
        raise UserError(f"--device {device_flag}: under torchrun each rank takes cuda:LOCAL_RANK; use "
                        "--device cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
    if device_flag == "cuda" and not gpu:
        raise UserError("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu (gloo)")
    if gpu and local_rank >= torch.cuda.device_count():
        raise UserError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs "
                        "are visible; lower --nproc_per_node")
    device = torch.device(f"cuda:{local_rank}") if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if gpu else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    # torchrun answers a dead rank, or its own Ctrl-C, by sending the others a signal; say so in
    # one line instead of dying silently mid-collective.
    signal.signal(signal.SIGTERM, _stopped_by_torchrun(rank))
    if rank != 0:   # the log comes from rank 0; every rank's errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    return World(parallel, rank, size, local_rank, device)


def _stopped_by_torchrun(rank: int):
    def handler(signum, frame):
        print(f"rank {rank}: stopped by torchrun (SIGTERM): another rank failed or the job was "
              "cancelled; resume from the last checkpoint with --resume", file=sys.stderr, flush=True)
        os._exit(143)   # no cleanup: the process group is already broken
    return handler


def lost_a_rank(error: BaseException) -> bool:
    """Whether an error from a collective means another rank died or stopped answering (a
    closed or reset connection, a timed-out wait), not a fault of this rank's own."""
    text = str(error).lower()
    return isinstance(error, dist.DistNetworkError) or any(
        k in text for k in ("closed by peer", "reset by peer", "timed out"))


def first_line(error: BaseException) -> str:
    """The part of a gloo/nccl message a person needs: its first line, without the source path."""
    line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return line.split("] ", 1)[-1].split(". This is typically", 1)[0][:200]


def teardown(world: World):
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- wrapping
def shard_nf4_weights(model: nn.Module) -> int:
    """Makes the packed 4-bit bytes of every Linear4bit frozen Parameters, so FSDP shards them.

    FSDP shards parameters only; Linear4bit keeps its tensors as buffers, which FSDP would copy
    whole onto every rank. Two known ways to shard 4-bit weights:
      - torchao's NF4Tensor is a tensor subclass that tells FSDP2 how to all-gather its inner
        packed data and scales (its fsdp_pre_all_gather / fsdp_post_all_gather hooks);
      - Answer.AI's FSDP + QLoRA stores bitsandbytes' packed bytes in a bfloat16 tensor
        (quant_storage) because FSDP1 flattens a unit's parameters into one tensor of one dtype.
    FSDP2 needs neither: it shards each parameter on its own, along dim 0, and all-gathers
    parameters of mixed dtypes as raw bytes. So the packed uint8 weight, its uint8 absmax and
    float32 nested absmax simply become frozen Parameters, as they are. The forward pass is
    unchanged: while a block computes, FSDP has put the gathered tensors back in place and
    Linear4bit dequantizes them as always. The tiny NF4 code, nested code and offset stay
    buffers, a copy on each rank. Returns the number of layers changed.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            for name in NF4_SHARDED:
                tensor = module._buffers.pop(name)
                module.register_parameter(name, nn.Parameter(tensor, requires_grad=False))
            changed += 1
    return changed


def wrap(loss_module: nn.Module, model: nn.Module, world: World, cpu_offload: bool = False) -> nn.Module:
    """The module train.py calls: loss_module as it is, inside DDP, or sharded with FSDP2."""
    if world.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        # Every rank loads the same checkpoint and seeds LoRA alike, so nothing needs a broadcast
        # at start (init_sync=False); buffers (the frozen 4-bit weights) never change, so forward
        # passes skip syncing them.
        return DistributedDataParallel(loss_module, device_ids=[world.device] if world.device.type == "cuda" else None,
                                       forward_sync_buffers=False, init_sync=False)
    if world.parallel == "fsdp":
        from torch.distributed.fsdp import FSDPModule, fully_shard
        for block in model.layers:
            if not isinstance(block, FSDPModule):   # shard_block did it while loading, normally
                shard_block(block, world, cpu_offload)
        fully_shard(loss_module, **_fsdp_options(world, cpu_offload))
    return loss_module


def shard_block(block: nn.Module, world: World, cpu_offload: bool = False) -> None:
    """FSDP2 on one transformer block: this rank keeps 1/N of each of its parameters (the 4-bit
    weights included) and the full ones are freed. train.py calls it as each block finishes
    loading, so a rank never holds the whole model."""
    from torch.distributed.fsdp import fully_shard
    shard_nf4_weights(block)
    fully_shard(block, **_fsdp_options(world, cpu_offload))


def _fsdp_options(world: World, cpu_offload: bool) -> dict:
    """fully_shard's mesh (one per run, made on first use) and offload policy."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy
    if world.mesh is None:
        world.mesh = init_device_mesh(world.device.type, (world.size,))
    # Offloading keeps the shards, their gradients and AdamW's state in CPU RAM; pinned
    # memory (faster copies) only exists with a GPU.
    policy = CPUOffloadPolicy(pin_memory=world.device.type == "cuda") if cpu_offload else OffloadPolicy()
    return {"mesh": world.mesh, "offload_policy": policy}


def gradient_sync(module: nn.Module, world: World, sync: bool):
    """A context for one micro-batch's backward: gradients are exchanged only when sync is True
    (the step's last micro-batch); before that each rank just accumulates its own."""
    if world.parallel == "ddp" and not sync:
        return module.no_sync()
    if world.parallel == "fsdp":
        module.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def loss_scale(world: World) -> int:
    """DDP and FSDP average gradients over ranks; multiplying each rank's loss by the number of
    ranks turns that average back into the sum the global normalisation needs."""
    return world.size if world.distributed else 1


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A parameter, gradient or norm in full: FSDP's sharded DTensors are gathered (a collective,
    so every rank must call it in the same order); plain tensors come back as they are."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def local_bytes(tensors) -> int:
    """Bytes this rank holds of `tensors` (its shard, for FSDP's DTensors)."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)
