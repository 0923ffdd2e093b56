"""Serving several people at once: N concurrent chat requests against the same N one after another.

    python bench/bench_serve.py                         # 8 requests, 64 tokens each, float32
    python bench/bench_serve.py --quantize int4 --json serve.json

The server of `generate.py --serve` (server.py) runs in this process on 127.0.0.1 with the
embedded SmolLM2-135M-Instruct, decoding every request in flight in one batch
(model/batch_generation.py, --max-batch slots). As in server.serve, the model decodes on the
main thread and the clients and HTTP run on others; --decoder-thread gives the decoder a thread
of its own instead, to show what that costs. Each request is a streamed chat completion with
its own prompt, greedy, at most --max-tokens new tokens (the prompts ask for long answers, so
they run to the limit; one that stops early is reported). Two passes, each alone:

    one after another   request 1, then request 2, ... (what a one-request-at-a-time server gives)
    concurrent          all N sent at once, each from its own thread

Reported per pass: total completion tokens / wall time, and the time to first token of each
request (from sending it to the first streamed text; the safety layer releases text a sentence
at a time, so this is the time to the first screened sentence), p50 and p95. The concurrent
pass's answers are checked to equal the one-after-another ones.
"""

import argparse
import http.client
import json
import os
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere

from bench.common import cpu_name  # noqa: E402

PROMPTS = [
    "Tell me, in detail, how to build a calming evening routine before exams.",
    "I moved to a new city and I feel lonely. Describe several ways to meet people.",
    "Explain step by step how breathing exercises can help with stress at work.",
    "Write a long, kind letter to someone who feels overwhelmed by their studies.",
    "Describe a week-long plan for sleeping better, one day at a time.",
    "What are many small things a person can do on a hard day? Please list and explain them.",
    "Explain how to talk to a friend who seems sad, with examples of what to say.",
    "Describe in detail how journaling can help someone who worries a lot.",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=8, help="requests per pass (default: 8)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per request (default: 64)")
    p.add_argument("--max-batch", type=int, default=8, help="the server's batch slots (default: 8)")
    p.add_argument("--quantize", default="none", help="none, int8 or int4 weights (default: none)")
    p.add_argument("--decoder-thread", action="store_true",
                   help="decode on a thread of the decoder's own, not on the main thread as "
                        "generate.py --serve does")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE as JSON")
    args = p.parse_args(argv)
    if args.requests < 1 or args.max_tokens < 1 or args.max_batch < 1:
        p.error("--requests, --max-tokens and --max-batch must be at least 1")
    return args


def one_request(port: int, prompt: str, max_tokens: int) -> dict:
    """A streamed chat completion: its text, completion tokens, finish reason and timings."""
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    text, first, tokens, finish = "", None, 0, None
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[len("data: "):])
        for choice in event.get("choices", []):
            piece = choice.get("delta", {}).get("content")
            if piece:
                first = first if first is not None else time.perf_counter() - start
                text += piece
            finish = choice.get("finish_reason") or finish
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
    conn.close()
    return {"text": text, "tokens": tokens, "finish": finish, "ttft_s": first,
            "seconds": time.perf_counter() - start}


def run_pass(port: int, prompts: list[str], max_tokens: int, concurrent: bool) -> dict:
    results = [None] * len(prompts)

    def run(k):
        results[k] = one_request(port, prompts[k], max_tokens)

    start = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for k in range(len(prompts)):
            run(k)
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    ttfts = sorted(r["ttft_s"] for r in results if r["ttft_s"] is not None)
    return {"wall_s": wall, "tokens": tokens, "tok_s": tokens / wall, "results": results,
            "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
            "ttft_p95_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))] if ttfts else None}


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from assistant import Assistant
    from model import load_model, load_tokenizer
    from model.generation import SamplingConfig
    from model.tokenizer.chat import get_chat_format
    from server import make_server

    tokenizer = load_tokenizer(None)
    model = load_model(None, quantize=args.quantize, quiet=True)
    assistant = Assistant(model, tokenizer, get_chat_format(tokenizer), system_prompt=None)
    httpd = make_server(assistant, SamplingConfig(max_new_tokens=args.max_tokens), port=0,
                        max_batch=args.max_batch, max_context=1024,
                        decoder_thread=args.decoder_thread)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    prompts = [PROMPTS[k % len(PROMPTS)] + ("" if k < len(PROMPTS) else f" ({k})")
               for k in range(args.requests)]
    passes, failure = {}, []

    def client():
        try:
            one_request(port, "hello", 4)                                   # warm-up
            passes["one after another"] = run_pass(port, prompts, args.max_tokens, False)
            passes["concurrent"] = run_pass(port, prompts, args.max_tokens, True)
        except BaseException as e:
            failure.append(e)
        finally:
            httpd.decoder.close()   # ends decoder.run() below

    clients = threading.Thread(target=client)
    clients.start()
    try:
        if not args.decoder_thread:
            httpd.decoder.run()     # the main thread decodes, as in server.serve
        clients.join()
    finally:
        httpd.shutdown()
        httpd.server_close()
    if failure:
        raise failure[0]

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    print(f"\n## Serving: {args.requests} chat requests, SmolLM2-135M-Instruct, "
          f"{args.quantize if args.quantize != 'none' else 'float32'}, CPU\n")
    print(f"`{command}`\n")
    where = "a thread of its own (--decoder-thread)" if args.decoder_thread else "the main thread"
    print(f"decoding on {where}; "
          f"{args.max_tokens} new tokens each (greedy), server batch slots {args.max_batch}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}\n")
    print("| pass | wall s | completion tokens | tokens/s | time to first text p50 s | p95 s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in passes.items():
        print(f"| {name} | {r['wall_s']:.1f} | {r['tokens']} | {r['tok_s']:.1f} | "
              f"{r['ttft_p50_s']:.2f} | {r['ttft_p95_s']:.2f} |")
    ratio = passes["concurrent"]["tok_s"] / passes["one after another"]["tok_s"]
    verdict = "met" if ratio >= 4 else "NOT met"
    print(f"\nconcurrent / one after another: {ratio:.2f}x tokens/s (target >= 4x: {verdict})")
    same = [a["text"] == b["text"] for a, b in zip(passes["concurrent"]["results"],
                                                   passes["one after another"]["results"])]
    print(f"the same answers in both passes: {sum(same)} of {len(same)}")
    short = [r["tokens"] for r in passes["concurrent"]["results"] if r["tokens"] < args.max_tokens]
    if short:
        print(f"requests that stopped before {args.max_tokens} tokens: {len(short)} ({short})")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "args": vars(args), "passes": passes,
                                               "ratio": ratio, "cpu": cpu_name()}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
