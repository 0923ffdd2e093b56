"""Talk to a model: one answer (--prompt), a multi-turn chat (no --prompt), or an
OpenAI-compatible HTTP server (--serve).

    python generate.py                                   # chat with the embedded default model
    python generate.py --prompt "I can't sleep before exams"
    python generate.py --adapter runs/cpu-smollm2        # chat with a fine-tuned adapter
    python generate.py --serve --port 8000               # POST /v1/chat/completions
"""

import argparse
import os
import sys
import time

from model.errors import UserError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model folder or hub repo id (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder (a train.py run folder or PEFT adapter)")
    p.add_argument("--prompt", default=None, help="answer this one message and exit (default: interactive chat)")
    p.add_argument("--system", default=None,
                   help="system prompt (default: the safety layer's boundaries prompt; '' for none)")
    p.add_argument("--no-chat", action="store_true", help="feed --prompt to the model raw, with no chat template")
    p.add_argument("--chat-format", default=None, choices=["llama3", "chatml", "alpaca"],
                   help="prompt format (default: detected from the tokenizer)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens to generate per answer")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--device", default="auto", help="auto (cuda when there is a GPU, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--quantize", default="none", help="none, or nf4: load the linears in 4-bit NF4 (default: none)")
    p.add_argument("--locale", default="US", help="crisis resources to show (US, GB, IE, CA, AU, NZ, IN, DE, FR, INTL)")
    p.add_argument("--serve", action="store_true", help="run an OpenAI-compatible HTTP server instead of chatting")
    p.add_argument("--host", default="127.0.0.1",
                   help="server address (--serve; default: %(default)s, this machine only; 0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=8000, help="server port (--serve; default: %(default)s; 0 = any free port)")
    p.add_argument("--model-name", default=None, help="model name the server reports (default: from --model)")
    p.add_argument("--api-key", default=None,
                   help="ask every request for 'Authorization: Bearer KEY' and answer 401 without it "
                        "(--serve; default: $LLAMACARE_API_KEY if set, else no key; without one, a --host "
                        "other than loopback prints a warning)")
    p.add_argument("--max-body", type=int, default=1 << 20,
                   help="largest request body in bytes; a larger Content-Length is answered 413 before "
                        "the body is read (--serve; default: %(default)s = 1 MiB)")
    p.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a client has to send a whole request (line, headers and body: 408 past "
                        "it) and to start the next one on an open connection (closed past it) "
                        "(--serve; default: %(default)s)")
    p.add_argument("--max-connections", type=int, default=32,
                   help="connections served at once (each holds a thread); one more is answered 503 "
                        "at once (--serve; default: %(default)s)")
    return p.parse_args(argv)




def check_args(args) -> None:
    """A one-line error naming the flag for any value a run cannot use, before the model loads."""
    from model.weights import parse_quantize
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


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    if args.no_chat and args.prompt is None and not args.serve:  # before the slow model load
        raise UserError("--no-chat needs --prompt: pass the text to continue, e.g. "
                        "--no-chat --prompt \"Once upon a time\"")
    if args.serve:  # check the server's flags before the slow model load
        from server import API_KEY_ENV, ServerConfig
        server_config = ServerConfig(
            host=args.host, port=args.port, model_name=args.model_name or (args.model or "SmolLM2-135M-Instruct"),
            api_key=args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None),
            max_body=args.max_body, read_timeout=args.read_timeout, max_connections=args.max_connections)
    import safety
    from assistant import Assistant
    from model import load_model, load_tokenizer
    from model.chat import get_chat_format
    from model.generation import SamplingConfig, TextStream, generate_stream
    from model.weights import resolve_model_dir

    folder = resolve_model_dir(args.model)
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, dtype=args.dtype, device=args.device, quantize=args.quantize,
                       adapter=args.adapter)
    fmt = get_chat_format(tokenizer, "none" if args.no_chat else args.chat_format)
    system = safety.SYSTEM_PROMPT if args.system is None else (args.system or None)
    assistant = Assistant(model, tokenizer, fmt, locale=args.locale, system_prompt=system)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed)

    if args.serve:
        from server import serve
        serve(assistant, sampling, server_config)
        return

    if args.no_chat:  # raw text in, raw continuation out: no template, no chat safety turn
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
