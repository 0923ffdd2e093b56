"""Run under torchrun by tests/test_distributed.py: one global batch through DDP and FSDP2 on a
tiny random Llama (float32 and NF4), and the loss, the full LoRA gradients and each rank's bytes
of the frozen 4-bit weights written to --out for the test to compare with one process.

    torchrun --nproc_per_node 2 tests/dist_worker.py --model DIR --out DIR
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora.inject import LoRAConfig, inject  # noqa: E402
from model import load_model  # noqa: E402
from model.loss import TargetLoss  # noqa: E402
from model.quant.linear4bit import Linear4bit  # noqa: E402
from training.step import train_step  # noqa: E402
from training import distributed  # noqa: E402


class NoStep:
    """train_step's optimizer and scaler, doing nothing: the gradients stay to be read."""
    def unscale_(self, optimizer): pass
    def scale(self, loss): return loss
    def step(self, optimizer): pass
    def update(self): pass
    def zero_grad(self, set_to_none=True): pass


def micro_batches(rank: int, world: int, rows: int, accum: int) -> list[dict]:
    """This rank's share of `accum` fixed global micro-batches of `rows` rows each."""
    from data.batches import shard_batch
    from data.format import Example
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(accum):
        examples = []
        for _ in range(rows):
            n = int(torch.randint(4, 20, (1,), generator=g))
            ids = torch.randint(3, 300, (n,), generator=g).tolist()
            cut = int(torch.randint(1, n - 1, (1,), generator=g))
            examples.append(Example(ids, [-100] * cut + ids[cut:]))
        out.append(shard_batch(examples, list(range(len(examples))), 0, rank, world))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--parallel", default="ddp,fsdp")
    p.add_argument("--quantize", default="none,nf4")
    p.add_argument("--cpu-offload", action="store_true")
    args = p.parse_args()
    results = {}
    modes = args.parallel.split(",")
    joined = distributed.setup(modes[0], "cpu", 120)   # one process group serves every mode
    for parallel in modes:
        world = dataclasses.replace(joined, parallel=parallel)
        for quantize in args.quantize.split(","):
            name = f"{parallel}-{quantize}"
            model = load_model(args.model, quantize=None if quantize == "none" else quantize, quiet=True)
            torch.manual_seed(1)
            inject(model, LoRAConfig(8, 16, 0.0, False, "q,k,v,o,gate,up,down"))
            nf4 = [getattr(m, n) for m in model.modules() if isinstance(m, Linear4bit)
                   for n in distributed.NF4_SHARDED]
            total_nf4 = sum(t.numel() * t.element_size() for t in nf4)
            total_base = sum(t.numel() * t.element_size() for t in [*model.buffers(), *(
                p for p in model.parameters() if not p.requires_grad)])   # everything frozen
            module = distributed.wrap(TargetLoss(model), model, world,
                                      cpu_offload=args.cpu_offload and parallel == "fsdp")
            params = [p for p in module.parameters() if p.requires_grad]
            micro = micro_batches(world.rank, world.size, rows=5, accum=2)
            loss, n_targets, _ = train_step(module, micro, params, NoStep(), NoStep(), 0.0,
                                            torch.device("cpu"), torch.float32, False, world)
            grads = {n: distributed.full_tensor(p.grad).detach().clone()
                     for n, p in model.named_parameters() if p.requires_grad}
            nf4_params = [t for m in model.modules() if isinstance(m, Linear4bit)
                          for t in (getattr(m, n) for n in distributed.NF4_SHARDED)]
            frozen = [p for p in model.parameters() if not p.requires_grad] + list(model.buffers())
            results[name] = {"loss": loss, "n_targets": n_targets, "nf4_total_bytes": total_nf4,
                             "base_total_bytes": total_base,
                             f"nf4_bytes_rank{world.rank}": distributed.local_bytes(nf4_params),
                             f"base_bytes_rank{world.rank}": distributed.local_bytes(frozen)}
            every = [None] * world.size if world.distributed else None
            if world.distributed:
                torch.distributed.all_gather_object(every, results[name])
                for r in every:
                    results[name].update(r)
            if world.is_main:
                save_file(grads, str(Path(args.out) / f"{name}.safetensors"))
    distributed.teardown(joined)
    if joined.is_main:
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
