"""One compiled decode step (gpt-fast's idea): torch.compile turns the hundreds of small
operators of a one-token forward into a few fused kernels.

A decode step moves little data per operator (one token's vector), so in eager mode much of its
time goes to running operators around the work, not to the work. torch.compile (Inductor)
traces the step once and generates code that fuses the norms, rotary embeddings, residual adds and activation
into a few loops around the matrix products, which stay torch's own kernels (int4/int8 included).

What makes the step compile once and stay compiled:
  - the position is a tensor (1,), not a Python int, so a new position is new data, not a new
    graph;
  - inside the compiled step the KV cache is read whole and masked (KVCache.update), instead of
    sliced to the current length, which would be a new shape every step;
  - the cache's length is marked dynamic at the warm-up, so a longer prompt or budget (a new
    cache) reuses the same compiled code. (KVCache is a plain object, not an nn.Module: the
    compiler fixes the shapes of module buffers.)

Prefill (the whole prompt at once) stays eager: it runs once per answer and is mostly matrix
products already. So does the batched server, whose rows sit at different positions.
"""

import os
import shutil
import sys
import time

import torch

from model.errors import UserError

WARMUP_CACHE = 16   # positions of the throwaway cache the warm-up compiles with


def compile_decoding(model, quiet: bool = False) -> float:
    """Sets model.compiled_decode (used by model.generation.generate_stream) and compiles it now,
    on a throwaway cache, so the first answer does not wait; returns the seconds that took. On
    CPU this needs a C++ compiler; Inductor caches the generated code on disk, so later runs
    compile faster."""
    device = model.embed_tokens.weight.device
    if device.type == "cpu" and not _cpp_compiler():
        raise UserError("--compile: torch.compile on CPU needs a C++ compiler (g++ or clang++, "
                        "or $CXX) and none was found; install one or run without --compile")
    step = torch.compile(model.decode, fullgraph=True)
    start = time.perf_counter()
    if not quiet:
        print("compiling the decode step (--compile; once, at load) ...", file=sys.stderr, flush=True)
    try:
        # Called as generate_stream calls it, in inference mode: the guards check that too.
        with torch.inference_mode():
            model.setup_cache(1, WARMUP_CACHE)
            for layer in model.layers:   # any cache length reuses this compile
                torch._dynamo.mark_dynamic(layer.self_attn.kv_cache.k, 2)
                torch._dynamo.mark_dynamic(layer.self_attn.kv_cache.v, 2)
            token = torch.zeros(1, 1, dtype=torch.long, device=device)       # (1, 1)
            position = torch.zeros(1, dtype=torch.long, device=device)       # (1,)
            model.decode(token, position)   # eager first: lazy setup (an import) is not traced
            step(token, position)
    except torch._dynamo.exc.TorchDynamoException as e:   # a compiler failure, an untraceable step
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--compile: torch.compile failed ({first[:200]}); run without "
                        f"--compile") from None
    finally:
        model.clear_cache()
    model.compiled_decode = step
    seconds = time.perf_counter() - start
    if not quiet:
        print(f"compiled in {seconds:.0f} s", file=sys.stderr, flush=True)
    return seconds


def _cpp_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None
