"""Talk to a model: one answer (--prompt), a multi-turn chat (no --prompt), or an
OpenAI-compatible HTTP server (--serve).

    python generate.py                                   # chat with the embedded default model
    python generate.py --prompt "I can't sleep before exams"
    python generate.py --adapter runs/cpu-smollm2        # chat with a fine-tuned adapter
    python generate.py --serve --port 8000               # POST /v1/chat/completions
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from model.errors import UserError
from training.flags import opt, parse_config
from training.run_config import read_run_config, say_taken, take_base


@dataclass
class GenerateConfig:
    # the model
    model: str | None = opt(None, "model folder or hub repo id; none: the embedded SmolLM2-135M-Instruct",
                            nullable=True)
    adapter: str | None = opt(None, "a LoRA adapter folder (a train.py run folder or PEFT adapter); a run "
                                    "folder also sets --model, --quantize nf4 and --chat-format alpaca as it "
                                    "trained, unless given here",
                              nullable=True)
    dtype: str = opt("float32", "float32, bfloat16 or float16")
    device: str = opt("auto", "auto (cuda when there is a GPU, else cpu), cpu, cuda or cuda:N")
    quantize: str | None = opt(None, "none; nf4 (QLoRA's 4-bit storage); int4 or int8: weight-only integer "
                                      "linears for faster decoding, lm_head included")
    compile: bool = opt(False, "decode through torch.compile (model/compile.py): faster tokens after a "
                               "one-time compile at load (it prints how long; cached on disk after); "
                               "not with --serve")
    # what to say
    prompt: str | None = opt(None, "answer this one message and exit; none: an interactive chat")
    system: str = opt("safety", "system prompt: 'safety' (the safety layer's boundaries prompt), '' for "
                                "none, or your own text")
    chat: bool = opt(True, "wrap the text in the model's chat format; --no-chat feeds --prompt raw")
    chat_format: str | None = opt(None, "prompt format; none: detected from the tokenizer",
                                  choices=("llama3", "chatml", "alpaca"))
    locale: str = opt("US", "crisis resources to show (US, GB, IE, CA, AU, NZ, IN, DE, FR, INTL)")
    # sampling
    max_new_tokens: int = opt(256, "most tokens to generate per answer")
    temperature: float = opt(0.0, "sampling temperature; 0 = greedy")
    top_p: float = opt(1.0, "nucleus sampling mass (1 = off)")
    top_k: int = opt(0, "sample among the k most likely tokens (0 = off)")
    seed: int | None = opt(None, "random seed for sampling")
    # the server (--serve)
    serve: bool = opt(False, "run an OpenAI-compatible HTTP server instead of chatting")
    host: str = opt("127.0.0.1", "server address: this machine only; 0.0.0.0 = every interface")
    port: int = opt(8000, "server port (0 = any free port)")
    model_name: str | None = opt(None, "model name the server reports; none: from --model")
    api_key: str | None = opt(None, "ask every request for 'Authorization: Bearer KEY' and answer 401 "
                                    "without it; without one, a --host other than loopback prints a "
                                    "warning", env="LLAMACARE_API_KEY", secret=True)
    max_body: int = opt(1 << 20, "largest request body in bytes (1048576 = 1 MiB); a larger "
                                 "Content-Length is answered 413 before the body is read")
    read_timeout: float = opt(30.0, "seconds a client has to send a whole request (line, headers and "
                                    "body: 408 past it) and to start the next one on an open "
                                    "connection (closed past it)")
    max_connections: int = opt(32, "connections served at once (each holds a thread); one more is "
                                   "answered 503 at once")
    max_batch: int = opt(8, "requests decoding together in one batch; more wait for a free slot")
    max_context: int = opt(2048, "tokens (prompt + reply) one batch slot holds, at most the model's "
                                 "context; the KV cache holds max-batch of them (SmolLM2 in float32: "
                                 "45 KiB a token, 90 MiB a slot of 2048)")


def parse_args(argv=None) -> GenerateConfig:
    return parse_config(GenerateConfig, argv, description=__doc__)[0]


def check_args(args) -> None:
    """A one-line error naming the flag for any value a run cannot use, before the model loads."""
    from model.checkpoint.load import parse_quantize
    from safety.respond import locales, resolve_locale
    from training.checks import check_device, check_dtype, check_range
    check_range("--max-new-tokens", args.max_new_tokens, 1)
    args.quantize = parse_quantize(args.quantize)
    check_range("--temperature", args.temperature, 0)
    check_range("--top-p", args.top_p, 0, 1, True, True)
    check_range("--top-k", args.top_k, 0)
    check_dtype(args.dtype)
    args.device = check_device(args.device)
    if resolve_locale(args.locale)[1]:
        raise UserError(f"--locale {args.locale}: no crisis resources for it; choose one of "
                        f"{', '.join(locales())}")


def follow_the_run(args) -> None:
    """With --adapter of a train.py run folder, what that run trained on fills the flags left
    unset: its base (--model), its 4-bit base (--quantize nf4) and, for --template alpaca, its
    prompt format (--chat-format). Says so on stderr, once."""
    if not args.adapter:
        return
    run = read_run_config(args.adapter)  # {} for a plain PEFT folder: nothing recorded beyond the adapter
    taken = take_base(args, {Path(args.adapter): run}, "--adapter")
    if args.chat_format is None and run.get("template") == "alpaca":
        args.chat_format = "alpaca"
        taken.append("--chat-format alpaca")
    say_taken([args.adapter], taken)


def main(argv=None):
    args = parse_args(argv)
    follow_the_run(args)   # before check_args: an unset --quantize is still None there
    check_args(args)
    if not args.chat and args.prompt is None and not args.serve:  # before the slow model load
        raise UserError("--no-chat needs --prompt: pass the text to continue, e.g. "
                        "--no-chat --prompt \"Once upon a time\"")
    if args.serve and args.compile:
        raise UserError("--compile applies to one conversation at a time; the server (--serve) "
                        "batches requests and decodes eagerly: drop one of the two")
    if args.serve:  # check the server's flags before the slow model load
        from server import ServerConfig
        server_config = ServerConfig(
            host=args.host, port=args.port, model_name=args.model_name or (args.model or "SmolLM2-135M-Instruct"),
            api_key=args.api_key,
            max_body=args.max_body, read_timeout=args.read_timeout, max_connections=args.max_connections,
            max_batch=args.max_batch, max_context=args.max_context)
    import safety
    from assistant import Assistant
    from model import load_model, load_tokenizer
    from model.tokenizer.chat import get_chat_format
    from model.generation import SamplingConfig, TextStream, generate_stream
    from model.checkpoint.load import resolve_model_dir

    folder = resolve_model_dir(args.model)
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, dtype=args.dtype, device=args.device, quantize=args.quantize,
                       adapter=args.adapter)
    if args.compile:
        from model.compile import compile_decoding
        compile_decoding(model)
    fmt = get_chat_format(tokenizer, args.chat_format if args.chat else "none")
    system = safety.SYSTEM_PROMPT if args.system == "safety" else (args.system or None)
    assistant = Assistant(model, tokenizer, fmt, locale=args.locale, system_prompt=system)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed)

    if args.serve:
        from server import serve
        serve(assistant, sampling, server_config)
        return

    if not args.chat:  # raw text in, raw continuation out: no template, no chat safety turn
        ids = tokenizer.encode(args.prompt, bos=tokenizer.bos_id is not None)
        stream, start, n = TextStream(tokenizer), time.perf_counter(), 0
        for token in generate_stream(model, ids, sampling, [tokenizer.eos_id]):
            print(stream.push(token), end="", flush=True)
            n += 1
        print(stream.flush())
        _report_speed(n, time.perf_counter() - start)
        return

    if args.prompt is not None:
        _answer(assistant, [{"role": "user", "content": args.prompt}], sampling)
        return

    print(safety.DISCLAIMER)
    print("Type a message; /reset starts over, /exit quits.\n")
    history: list[dict] = []
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = []
            print("(conversation cleared)\n")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        print("assistant> ", end="", flush=True)
        reply = _answer(assistant, history, sampling)
        history.append({"role": "assistant", "content": reply})
        print()


def _answer(assistant, messages, sampling) -> str:
    parts = []
    for piece in assistant.reply_stream(messages, sampling):
        print(piece, end="", flush=True)
        parts.append(piece)
    print()
    info = assistant.last
    if info.screened:
        print(f"[safety] the model's answer was replaced ({', '.join(info.screen_reasons)})", file=sys.stderr)
    if not info.crisis:
        _report_speed(info.completion_tokens, info.seconds)
    return "".join(parts)


def _report_speed(n_tokens: int, seconds: float):
    print(f"[{n_tokens} tokens in {seconds:.2f} s, {n_tokens / max(seconds, 1e-9):.1f} tokens/s]",
          file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
