"""Run under torchrun by tests/test_distributed.py: train.py's FSDP load, watched. Each time a
block has been loaded, the bytes this rank holds of the model are written down just before the
block is sharded and just after, and once more when the root has been read; the test checks that
no rank ever holds more than its shards plus the one block, then the root, in hand.

    torchrun --nproc_per_node 2 tests/dist_load_worker.py --model DIR --out DIR
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from model.checkpoint import load as loader  # noqa: E402
from training import distributed  # noqa: E402


def held_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model this rank holds: loaded tensors in full, sharded ones by their shard."""
    tensors = [t for t in [*model.parameters(), *model.buffers()] if not t.is_meta]
    return distributed.local_bytes(tensors)


def full_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cfg, _ = train.parse_args(["--model", args.model, "--quantize", "nf4", "--parallel", "fsdp",
                               "--device", "cpu", "--lora-r", "4"])
    world = distributed.setup("fsdp", "cpu", 120)

    built = []   # the model the loader builds, seen through its block watch
    watch_init = loader._BlockWatch.__init__

    def seeing(self, model, *rest):
        built.append(model)
        watch_init(self, model, *rest)
    loader._BlockWatch.__init__ = seeing

    calls = []
    shard = distributed.shard_block

    def watched(block, w, cpu_offload=False):
        before, block_bytes = held_bytes(built[0]), full_bytes(block)
        shard(block, w, cpu_offload)
        calls.append({"before": before, "after": held_bytes(built[0]), "block": block_bytes})
    distributed.shard_block = watched

    wrap, loaded = distributed.wrap, {}

    def wrapping(loss_module, model, w, cpu_offload=False):   # the root is read, not sharded yet
        loaded["held"] = held_bytes(model)
        return wrap(loss_module, model, w, cpu_offload)
    distributed.wrap = wrapping

    _, _, model, _ = train.load_for_training(cfg, world, torch.device("cpu"), torch.float32)
    unsharded = {"blocks": sum(c["block"] for c in calls), "whole": full_bytes(model),
                 "before_root_sharded": loaded["held"]}
    Path(args.out, f"rank{world.rank}.json").write_text(json.dumps({"calls": calls, **unsharded}))
    distributed.teardown(world)


if __name__ == "__main__":
    main()
