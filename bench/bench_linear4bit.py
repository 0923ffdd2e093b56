"""Time a Linear4bit against a dense nn.Linear: forward, and forward + backward to the input.

    python bench/bench_linear4bit.py                       # 576x1536 and 4096x4096, 512 tokens
    python bench/bench_linear4bit.py --shapes 2048x8192 --tokens 256 --device cuda

Three ways to run the same layer:
  dense          nn.Linear in float32, weight frozen (as the base model is under QLoRA)
  nf4 torch      Linear4bit rebuilding its weight with model/quant/nf4.py's plain PyTorch code
  nf4 bnb        Linear4bit rebuilding its weight with bitsandbytes' kernel (same bits)
Each cell is the median of --repeats runs after --warmup untimed ones. The 4-bit layers
dequantize the whole weight on every call, in forward and again in backward: that is the price
of keeping ~4.1 bits per weight instead of 32.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere
from model.quant.linear4bit import Linear4bit  # noqa: E402
from model.quant.nf4 import dequantizer  # noqa: E402
from model.errors import UserError  # noqa: E402


def median_ms(fn, warmup: int, repeats: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def stored_bytes(layer: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()])


def bench_shape(in_features, out_features, args, device) -> list[tuple[str, float, float, int]]:
    torch.manual_seed(0)
    dense = nn.Linear(in_features, out_features, bias=False, device=device).requires_grad_(False)
    layers = {"dense float32": dense}
    for backend in ("torch", "bitsandbytes"):
        try:
            dequantizer(backend, device)
        except UserError:
            print(f"(skipping nf4 {backend}: not usable on {device})")
            continue
        layers[f"nf4 {backend}"] = Linear4bit.from_linear(dense, torch.float32, backend=backend)
    x = torch.randn(args.tokens, in_features, device=device)
    x_grad = x.clone().requires_grad_()
    rows = []
    for name, layer in layers.items():
        def forward():
            with torch.no_grad():
                layer(x)

        def forward_backward():
            layer(x_grad).sum().backward()
            x_grad.grad = None

        rows.append((name, median_ms(forward, args.warmup, args.repeats, device),
                     median_ms(forward_backward, args.warmup, args.repeats, device), stored_bytes(layer)))
    return rows


def parse_shape(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--shapes {text}: write each shape as INxOUT, e.g. 576x1536") from None
    return a, b


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="576x1536,4096x4096",
                   help="comma-separated INxOUT linear shapes (default: a SmolLM2 MLP up-projection "
                        "and a Llama-3-8B attention projection)")
    p.add_argument("--tokens", type=int, default=512, help="rows of the input batch (batch x sequence)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per cell; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} CPU threads, {args.tokens} tokens, "
          f"median of {args.repeats} runs\n")
    header = ("shape (in x out)", "layer", "forward ms", "fwd+bwd ms", "weight MiB")
    print(f"| {header[0]:16s} | {header[1]:18s} | " + " | ".join(f"{h:>10s}" for h in header[2:]) + " |")
    print(f"|{'-' * 18}|{'-' * 20}|{'-' * 12}|{'-' * 12}|{'-' * 12}|")
    for text in args.shapes.split(","):
        shape = parse_shape(text)
        for name, fwd, fwd_bwd, size in bench_shape(*shape, args, device):
            cells = " | ".join(f"{v:10.2f}" for v in (fwd, fwd_bwd, size / 2**20))
            print(f"| {f'{shape[0]} x {shape[1]}':16s} | {name:18s} | {cells} |")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
