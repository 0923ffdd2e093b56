"""Compare variants on held-out rows: the base model, LoRA runs, and char-RNN/LSTM baselines.

    python evaluate.py --variants base,runs/r16,runs/lstm --out eval/       # bundled 62 eval rows
    python evaluate.py --variants base --limit 10 --max-new-tokens 64
    python evaluate.py --variants base,runs/r16 --judge --judge-base-url http://localhost:8000/v1 --judge-model m

Each variant answers every eval row; then, per variant:
  seed_cosine   the seed report's mean cosine over all token pairs of last hidden states (of one
                fixed model, the base LLM, for every variant), kept for comparison: it barely moves
  sts           cosine of all-MiniLM-L6-v2 sentence vectors, answer vs reference
  mrr, r@1      passage ranking: each answer retrieves its own reference among all references
  ppl           perplexity of the reference answers under the variant (LLMs; bits/char for char models)
  rouge_l       ROUGE-L F1 against the reference
  words, stop   mean answer length in words, share of answers that ended by themselves
  rep3, dist2   repeated word 3-grams within answers, distinct word bigrams across answers
  flagged       share of answers the safety layer's output screening flags
  judge         optional LLM-as-judge (1-5), on any OpenAI-compatible endpoint
Writes results.md, results.csv, results.json, chart.png and examples.jsonl into --out.
"""

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tqdm import tqdm

import safety
from data import build_examples, eval_batches, load_rows, pad_id_for
from data.format import chat_format_for
from data.rows import SAMPLE_DIR
from evaluation import metrics
from evaluation.judge import Judge
from lora.peft_format import CONFIG_NAME
from model import load_model, load_tokenizer
from model.errors import UserError
from model.generation import SamplingConfig, generate
from model.loss import target_nll
from model.minilm import load_sentence_encoder
from model.rnn import bits_per_char, is_char_run, load_char_model, row_text, sample_answer
from model.checkpoint.load import parse_quantize, resolve_model_dir
from model.compile import compile_decoding
from training.checks import check_device, check_dtype, check_range
from training.flags import opt, parse_config
from training.run_config import read_run_config, say_taken, take_base


@dataclass
class EvaluateConfig:
    variants: str = opt("base", "comma-separated: 'base' and/or run folders (a LoRA adapter or an rnn/lstm run)")
    model: str | None = opt(None, "base model folder or hub id; none: the embedded SmolLM2", nullable=True)
    data: str | None = opt(None, "evaluation rows; none: the bundled data/sample/eval.jsonl", nullable=True)
    limit: int | None = opt(None, "use only the first N evaluation rows; none: all of them")
    out: str = opt("eval", "folder for results.md/csv/json, chart.png, examples.jsonl")
    max_new_tokens: int = opt(128, "answer length limit (tokens; x4 characters for char models)")
    temperature: float = opt(0.0, "LLM sampling temperature (0 = greedy)")
    char_temperature: float = opt(0.8, "sampling temperature for the char models")
    template: str | None = opt(None, "prompt format; none: each run's own, from its train_config.json "
                                     "(chat for base)", choices=("chat", "alpaca"))
    seed: int = opt(0, "seed for sampling; results are deterministic under it")
    sts_model: str | None = opt(None, "sentence encoder; none: the packaged all-MiniLM-L6-v2", nullable=True)
    dtype: str = opt("float32", "float32, bfloat16 or float16")
    device: str = opt("auto", "auto (cuda when there is a GPU, else cpu), cpu, cuda or cuda:N")
    quantize: str | None = opt(None, "none; nf4 (QLoRA's 4-bit storage); int4 or int8: weight-only integer "
                                      "linears for faster decoding, lm_head included")
    compile: bool = opt(False, "decode through torch.compile (model/compile.py): faster answers after a "
                               "one-time compile at load (it prints how long)")
    judge: bool = opt(False, "also score answers with an LLM judge")
    judge_base_url: str | None = opt(None, "OpenAI-compatible endpoint of the judge")
    judge_model: str | None = opt(None, "judge model name")
    judge_api_key: str | None = opt(None, "judge API key", env="OPENAI_API_KEY", secret=True)


def parse_args(argv=None) -> EvaluateConfig:
    return parse_config(EvaluateConfig, argv, description=__doc__)[0]



COLUMNS = ["variant", "kind", "seed_cosine", "sts", "mrr", "recall_at_1", "ppl", "bits_per_char",
           "rouge_l", "words", "stop_rate", "rep3", "dist2", "flagged", "judge"]


@dataclass
class Variant:
    name: str
    kind: str            # base | lora | rnn | lstm
    path: Path | None
    template: str
    run: dict = field(default_factory=dict)  # the run's train_config.json; {} for base or a plain adapter


def parse_variants(text: str, template: str | None = None) -> list[Variant]:
    """--variants as Variants; `template` (--template) overrides each run's own prompt format."""
    out = []
    for item in [v.strip() for v in text.split(",") if v.strip()]:
        if item == "base":
            out.append(Variant("base", "base", None, template or "chat"))
            continue
        path = Path(item)
        if not path.is_dir():
            raise UserError(f"--variants: '{item}' is neither 'base' nor a run folder; train it first "
                            f"(python train.py --out {item}, with --arch lstm for a char baseline)")
        run_cfg = read_run_config(path)
        if is_char_run(path):
            out.append(Variant(path.name, run_cfg.get("arch", "char"), path, "char"))
        elif (path / CONFIG_NAME).is_file():
            out.append(Variant(path.name, "lora", path, template or run_cfg.get("template", "chat"), run_cfg))
        else:
            raise UserError(f"--variants: {path} holds neither an adapter ({CONFIG_NAME}) nor a char model")
    if not out:
        raise UserError("--variants: name at least one variant")
    return out


def follow_the_runs(args, variants: list[Variant]) -> None:
    """The LoRA runs' base (--model) and 4-bit storage (--quantize nf4), from their
    train_config.json, fill those flags when they are unset: every variant, 'base' included,
    then answers on the model the adapters were trained on. Says so on stderr, once."""
    runs = {v.path: v.run for v in variants if v.kind == "lora" and v.run}
    say_taken(runs, take_base(args, runs, "--variants"))


def check_args(args) -> None:
    """A one-line error naming the flag for any value a run cannot use, before anything loads."""
    if args.limit is not None:
        check_range("--limit", args.limit, 1)
    check_range("--max-new-tokens", args.max_new_tokens, 1)
    args.quantize = parse_quantize(args.quantize)
    check_range("--temperature", args.temperature, 0)
    check_range("--char-temperature", args.char_temperature, 0, None, False)
    check_dtype(args.dtype)
    args.device = check_device(args.device)
    if args.judge and not (args.judge_base_url and args.judge_model):
        raise UserError("--judge needs --judge-base-url and --judge-model")


def main(argv=None):
    args = parse_args(argv)
    variants = parse_variants(args.variants, args.template)
    follow_the_runs(args, variants)  # before check_args: an unset --quantize is still None there
    check_args(args)
    rows, stats = load_rows(args.data or str(SAMPLE_DIR / "eval.jsonl"))
    rows = rows[: args.limit] if args.limit else rows
    print(f"evaluation rows: {len(rows)} ({stats.summary()})")
    out = Path(args.out)  # made only when the results are written: a failed run leaves no empty folder
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: this is a file; name a folder for the results")

    folder = resolve_model_dir(args.model)
    tokenizer = load_tokenizer(folder)
    base = load_model(folder, dtype=args.dtype, device=args.device, quantize=args.quantize, quiet=True)

    # ------------------------------------------------------------------ answers, one variant at a time
    answered = {}
    for v in variants:
        t0 = time.perf_counter()
        if v.kind in ("base", "lora"):
            model = base
            if v.kind == "lora":
                # adapter= merges it first when the weights become int4 / int8
                model = load_model(folder, dtype=args.dtype, device=args.device, quantize=args.quantize,
                                   adapter=v.path, quiet=True)
            if args.compile and model.compiled_decode is None:   # variants share one compile
                compile_decoding(model)
            answers, stopped = answer_llm(model, tokenizer, v, rows, args)
            extra = {"ppl": reference_perplexity(model, tokenizer, v.template, rows, args.device)}
            del model
        else:
            answers, stopped, extra = answer_char(v, rows, args)
        answered[v.name] = (answers, stopped, extra, time.perf_counter() - t0)

    # ------------------------------------------------------------------ metrics, all variants
    print("scoring: sentence embeddings, the seed's token cosine, ROUGE-L, safety ...")
    encoder = load_sentence_encoder(args.sts_model)
    refs = [r.output for r in rows]
    ref_emb = encoder.encode(refs)
    ref_hidden = [_last_hidden(base, tokenizer, t, args.device) for t in refs]
    results, examples_out = [], []
    for v in variants:
        answers, stopped, extra, seconds = answered[v.name]
        emb = encoder.encode([a or " " for a in answers])
        cos = [metrics.seed_token_cosine(_last_hidden(base, tokenizer, a or " ", args.device), h)
               for a, h in zip(answers, ref_hidden)]
        result, examples = score(v, answers, stopped, extra, seconds, rows, emb, ref_emb, cos, args)
        results.append(result)
        examples_out += examples

    write_outputs(out, results, examples_out)
    print(Path(out / "results.md").read_text())
    print(f"results in {out}:")
    for label, name in (("table", "results.md"), ("table", "results.csv"), ("table", "results.json"),
                        ("chart", "chart.png"), ("answers", "examples.jsonl")):
        if (out / name).is_file():  # chart.png needs matplotlib
            print(f"  {label + ':':<10}{out / name}")


def answer_llm(model, tokenizer, v: Variant, rows, args) -> tuple[list[str], list[bool]]:
    """Each row's answer (system: the row's instruction, user: its input), and whether it ended
    by itself; row i samples with seed args.seed + i, so results do not depend on the order."""
    fmt = chat_format_for(tokenizer, v.template)
    answers, stopped = [], []
    for i, row in enumerate(tqdm(rows, desc=f"{v.name}: answering", dynamic_ncols=True)):
        prompt = fmt.encode_prompt([{"role": "system", "content": row.instruction},
                                    {"role": "user", "content": row.input}])
        cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed + i)
        result = generate(model, prompt, cfg, fmt.stop_ids)
        answers.append(tokenizer.decode(result.ids).strip())
        stopped.append(result.stopped)
    return answers, stopped


@torch.no_grad()
def reference_perplexity(model, tokenizer, template: str, rows, device) -> float:
    """Perplexity of the reference answers under the model: exactly the training loss, held out."""
    examples, _ = build_examples(rows, tokenizer, template, 4096, progress=False)
    total, n = 0.0, 0
    for batch in eval_batches(examples, 4, pad_id_for(tokenizer)):
        nll, k = target_nll(model, batch["input_ids"].to(device), batch["labels"].to(device))
        total, n = total + float(nll), n + k
    return metrics.perplexity(total, n)


def answer_char(v: Variant, rows, args) -> tuple[list[str], list[bool], dict]:
    """A char model's answers (4 characters per --max-new-tokens), and its bits per character
    on the rows' reference text."""
    char_model, vocab = load_char_model(v.path)
    max_chars = args.max_new_tokens * 4
    answers, stopped = [], []
    for i, row in enumerate(tqdm(rows, desc=f"{v.name}: answering", dynamic_ncols=True)):
        text = sample_answer(char_model, vocab, row.input, max_chars=max_chars,
                             temperature=args.char_temperature, seed=args.seed + i)
        answers.append(text.strip())
        stopped.append(len(text) < max_chars)
    bpc = bits_per_char(char_model, vocab, "".join(row_text(r.input, r.output) for r in rows))
    return answers, stopped, {"bits_per_char": bpc}


def score(v: Variant, answers, stopped, extra: dict, seconds: float, rows, emb, ref_emb, cos,
          args) -> tuple[dict, list[dict]]:
    """One variant's row of the results table, and its answers with their per-row scores."""
    refs = [r.output for r in rows]
    sts = metrics.semantic_similarity(emb, ref_emb)
    rank = metrics.ranking(emb, ref_emb)
    rouge = [metrics.rouge_l_f1(a, r) for a, r in zip(answers, refs)]
    screens = [safety.screen_output(a, conversation=[{"role": "user", "content": r.input}])
               for a, r in zip(answers, rows)]
    length = metrics.mean_length_and_stop_rate(answers, stopped)
    judge_means = None
    if args.judge:
        judge = Judge(args.judge_base_url, args.judge_model, args.judge_api_key)
        for a, r in tqdm(list(zip(answers, rows)), desc=f"{v.name}: judging", dynamic_ncols=True):
            judge.score(r.input, a, r.output)
        summary = judge.summary()
        print(f"{v.name}: {summary.line()}")
        judge_means = summary.means.get("overall")
    result = {"variant": v.name, "kind": v.kind, "seed_cosine": _mean(cos), "sts": _mean(sts),
              "mrr": rank["mrr"], "recall_at_1": rank["recall_at_1"], "ppl": extra.get("ppl"),
              "bits_per_char": extra.get("bits_per_char"), "rouge_l": _mean(rouge),
              "words": length["mean_words"], "stop_rate": length["stop_rate"],
              "rep3": _mean([metrics.repetition_rate(a) for a in answers]),
              "dist2": metrics.distinct_n(answers, 2),
              "flagged": _mean([0.0 if s.safe else 1.0 for s in screens]), "judge": judge_means,
              "seconds": round(seconds, 1)}
    examples = [{"variant": v.name, "index": i, "input": r.input, "reference": r.output, "answer": a,
                 "stopped": stopped[i], "sts": round(sts[i], 4), "rouge_l": round(rouge[i], 4),
                 "flagged": not screens[i].safe, "flag_reasons": list(screens[i].reasons)}
                for i, (a, r) in enumerate(zip(answers, rows))]
    return result, examples


@torch.no_grad()
def _last_hidden(model, tokenizer, text: str, device) -> torch.Tensor:
    ids = torch.tensor([tokenizer.encode(text)[:1024] or [0]], device=device)
    return model.hidden_states(ids)[0].float().cpu()  # (T, dim)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _fmt(value, key) -> str:
    if value is None:
        return "–"
    if key in ("variant", "kind"):
        return str(value)
    if key in ("ppl", "words"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def write_outputs(out: Path, results: list[dict], examples: list[dict]):
    out.mkdir(parents=True, exist_ok=True)
    header = "| " + " | ".join(COLUMNS) + " |"
    lines = [header, "|" + "---|" * len(COLUMNS)]
    for r in results:
        lines.append("| " + " | ".join(_fmt(r.get(k), k) for k in COLUMNS) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + ["seconds"])
        writer.writeheader()
        writer.writerows(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    with open(out / "examples.jsonl", "w") as f:
        for e in examples:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    plot(results, out / "chart.png")


def plot(results: list[dict], path: Path):
    """Grouped bars: one group per metric (all on a 0-1 scale), one bar per variant."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; skipping chart.png")
        return
    keys = ["seed_cosine", "sts", "mrr", "recall_at_1", "rouge_l", "stop_rate", "flagged"]
    width = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for j, r in enumerate(results):
        values = [r.get(k) or 0.0 for k in keys]
        ax.bar([i + j * width for i in range(len(keys))], values, width, label=r["variant"])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], keys)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (0-1)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
