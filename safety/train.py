"""python -m safety.train: rebuild the crisis classifier from safety/data/corpus/.

    corpus items (messages; conversations' user turns joined), windows of WordPiece pieces
      -> writers dealt into --folds folds; fold 0's writers are the development split
      -> a head on all-MiniLM-L6-v2 (variants below), trained on the other folds' items
      -> its scores on fold 0 ("dev": text by hands it never saw)
      -> threshold: the one with the most room under both targets on dev (crisis recall >=
         --recall-target, false alarms <= --false-alarm-target; recall first if none meets both)
      -> that same head ships, with that threshold
      -> safety/classifier/head.safetensors, config.json, report.json

Variants (--variant; --compare measures all three on the same split):
    logistic  logistic regression on the frozen encoder's mean-pooled vectors
    mlp       one GELU hidden layer on the same vectors
    lora      LoRA (lora/layer.py) on the top --lora-layers encoder layers + a logistic head,
              trained together (train_lora.py); shipped: all 6 layers, the best dev figures

A text's logit is the highest of its windows' logits, in training as in use (classifier.py),
so a crisis line buried in a long message is learned as the reason for its label.

    python -m safety.train                 # the shipped variant, about 8 minutes on 2 cores
    python -m safety.train --compare       # logistic vs MLP vs LoRA, same split
    python -m safety.train --loko          # leave-one-kind-out recall per crisis kind (resumable)
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.jsonl import BadLine, jsonl_objects

from .classifier import (CONFIG_FILE, FOLDER, HEAD_FILE, CrisisClassifier, HeadConfig,
                         category_logits, crisis_logits)
from .categories import RISK_CATEGORIES
from .errors import SafetyError
from .train_data import Item, corpus_hash, long_texts, read_corpus, user_text, writer_folds

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("logistic", "mlp", "lora")


@dataclass
class TrainConfig:
    corpus: str = str(ROOT / "safety" / "data" / "corpus")
    out: str = str(FOLDER)
    variant: str = "lora"
    compare: bool = False
    loko: bool = False
    loko_together: int = 1
    recall_target: float = 0.95
    false_alarm_target: float = 0.08
    folds: int = 4
    dev_folds: int = 1
    window: int = 64
    overlap: int = 16
    hidden: int = 256
    steps: int = 400
    lr: float = 0.05
    weight_decay: float = 1e-4
    lora_layers: int = 6
    lora_r: int = 8
    lora_epochs: int = 3
    long_texts: int = 20
    seed: int = 0
    check_sets: str = str(ROOT / "tests" / "data" / "safety")
    progress: bool = True


def parse_args(argv=None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m safety.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=d.corpus,
                   help=f"folder of labelled *.jsonl files (default: {d.corpus})")
    p.add_argument("--out", default=d.out, help="folder for head.safetensors, config.json and "
                   f"report.json (default: {d.out})")
    p.add_argument("--variant", choices=VARIANTS, default=d.variant,
                   help="the head to ship: logistic regression or a one-layer MLP on the frozen "
                   "encoder, or LoRA on the top encoder layers + logistic head "
                   f"(default: {d.variant}, the best of --compare within the time budget)")
    p.add_argument("--compare", action="store_true",
                   help="also measure every variant on the same writer folds and report each")
    p.add_argument("--loko", action="store_true",
                   help="leave-one-kind-out: for each crisis kind, train without it (see "
                   "--loko-together) and report its recall at the shipped threshold")
    p.add_argument("--loko-together", type=int, default=d.loko_together,
                   help="with --loko, crisis kinds left out of training this many at a time "
                   "(1: one training per kind, about 6 minutes each; 2 halves the time, and "
                   "each kind's recall comes from a head that saw neither it nor its partner); "
                   "an interrupted --loko run resumes where it stopped "
                   f"(default: {d.loko_together})")
    p.add_argument("--recall-target", type=float, default=d.recall_target,
                   help="dev crisis recall the threshold must keep; the threshold is the one "
                   "with the most room under this and --false-alarm-target on dev, or, when no "
                   f"threshold meets both, the highest that keeps this (default: {d.recall_target})")
    p.add_argument("--false-alarm-target", type=float, default=d.false_alarm_target,
                   help="dev false-alarm rate the threshold should stay under (default: "
                   f"{d.false_alarm_target})")
    p.add_argument("--folds", type=int, default=d.folds,
                   help="writers are dealt round-robin into this many folds; 0: one fold per "
                   f"writer (default: {d.folds})")
    p.add_argument("--dev-folds", type=int, default=d.dev_folds,
                   help="how many folds are scored by a head trained without them: the dev "
                   "items that choose the threshold; each costs one training; --dev-folds "
                   "equal to --folds, or --folds 0, scores every item "
                   f"(default: {d.dev_folds})")
    p.add_argument("--window", type=int, default=d.window,
                   help=f"WordPiece pieces per window (default: {d.window})")
    p.add_argument("--overlap", type=int, default=d.overlap,
                   help=f"pieces shared by neighbouring windows (default: {d.overlap})")
    p.add_argument("--hidden", type=int, default=d.hidden,
                   help=f"units of the MLP variant's hidden layer (default: {d.hidden})")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"full-batch Adam steps for a frozen-encoder head (default: {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr,
                   help=f"Adam learning rate of the frozen-encoder heads (default: {d.lr})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"L2 penalty on the head weights (default: {d.weight_decay})")
    p.add_argument("--lora-layers", type=int, default=d.lora_layers,
                   help=f"top encoder layers that get LoRA in the lora variant (default: {d.lora_layers})")
    p.add_argument("--lora-r", type=int, default=d.lora_r,
                   help=f"LoRA rank of the lora variant (default: {d.lora_r})")
    p.add_argument("--lora-epochs", type=int, default=d.lora_epochs,
                   help=f"epochs of the lora variant (default: {d.lora_epochs})")
    p.add_argument("--long-texts", type=int, default=d.long_texts,
                   help="per writer, this many long calm texts (sentences of "
                   "safety/classifier/small_talk.txt and the writer's calm messages) and half as "
                   "many with one of the writer's crisis messages inside, plus each small-talk "
                   "sentence alone as calm; training only, never in the dev figures; 0: none "
                   f"(default: {d.long_texts})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"torch seed (default: {d.seed})")
    p.add_argument("--check-sets", default=d.check_sets,
                   help="folder with crisis.jsonl and non_crisis.jsonl scored at the end as an "
                   f"outside check; '' skips it (default: {d.check_sets})")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (logs, tests)")
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    if not 0 < cfg.recall_target <= 1:
        p.error(f"--recall-target {cfg.recall_target} must be in (0, 1]")
    if not 0 <= cfg.false_alarm_target < 1:
        p.error(f"--false-alarm-target {cfg.false_alarm_target} must be in [0, 1)")
    if cfg.loko_together < 1:
        p.error(f"--loko-together {cfg.loko_together} must be at least 1")
    if cfg.folds < 0 or cfg.folds == 1:
        p.error(f"--folds {cfg.folds} must be 0 (one per writer) or at least 2")
    if cfg.dev_folds < 1 or (cfg.folds and cfg.dev_folds > cfg.folds):
        p.error(f"--dev-folds {cfg.dev_folds} must be in 1..--folds ({cfg.folds})")
    if not 0 <= cfg.overlap < cfg.window <= 510:
        p.error(f"--window {cfg.window} must be at most 510 and above --overlap {cfg.overlap}")
    return cfg


# ---------------------------------------------------------------------- windows -> vectors
@dataclass
class Embedded:
    emb: torch.Tensor        # (n_windows, dim) unit vectors
    idx: torch.Tensor        # (n_items, max_windows) window numbers of each item (padded with 0)
    valid: torch.Tensor      # (n_items, max_windows) True for a real window


def embed(encoder: CrisisClassifier, texts: list[str], progress: bool, what: str) -> Embedded:
    chunk = 64
    parts, owners = [], []
    for start in tqdm(range(0, len(texts), chunk), desc=f"encoding {what}", unit="x64 texts",
                      disable=not progress, file=sys.stderr):
        emb, owner = encoder.window_embeddings(texts[start:start + chunk])
        parts.append(emb)
        owners += [start + o for o in owner]
    emb = torch.cat(parts) if parts else torch.empty(0, encoder.bert.cfg.hidden)
    return Embedded(emb, *window_index(owners, len(texts)))


def window_index(owner: list[int], n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    per_item: list[list[int]] = [[] for _ in range(n_items)]
    for j, i in enumerate(owner):
        per_item[i].append(j)
    width = max((len(w) for w in per_item), default=1)
    idx = torch.zeros(n_items, width, dtype=torch.long)
    valid = torch.zeros(n_items, width, dtype=torch.bool)
    for i, w in enumerate(per_item):
        idx[i, :len(w)] = torch.tensor(w, dtype=torch.long)
        valid[i, :len(w)] = True
    return idx, valid


def item_logits(window_logits: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(n_windows,) -> (n_items,): each item's highest window."""
    per = window_logits[idx].masked_fill(~valid, float("-inf"))             # (n_items, width)
    return per.max(dim=1).values


def best_window(window_logits, idx, valid) -> torch.Tensor:
    per = window_logits[idx].masked_fill(~valid, float("-inf"))
    return idx.gather(1, per.argmax(dim=1, keepdim=True))[:, 0]             # (n_items,)


# ---------------------------------------------------------------------- frozen-encoder heads
def new_head(dim: int, hidden: int, gen: torch.Generator) -> dict:
    def linear(n_out, n_in):
        bound = 1 / n_in ** 0.5              # nn.Linear's initialisation, from our generator
        return ((torch.rand(n_out, n_in, generator=gen) * 2 - 1) * bound,
                torch.zeros(n_out))
    head = {}
    if hidden:
        head["crisis.up.weight"], head["crisis.up.bias"] = linear(hidden, dim)
        head["crisis.out.weight"], head["crisis.out.bias"] = linear(1, hidden)
    else:
        head["crisis.out.weight"], head["crisis.out.bias"] = torch.zeros(1, dim), torch.zeros(1)
    head["category.weight"], head["category.bias"] = torch.zeros(len(RISK_CATEGORIES), dim), \
        torch.zeros(len(RISK_CATEGORIES))
    return {k: v.requires_grad_() for k, v in head.items()}


def bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean BCE with both classes weighted equally, whatever their counts."""
    pos = y.sum().clamp(min=1)
    neg = (1 - y).sum().clamp(min=1)
    w = torch.where(y > 0, 0.5 / pos, 0.5 / neg)
    return (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum()


def fit_head(data: Embedded, items: list[Item], rows: list[int], cfg: TrainConfig,
             hidden: int) -> dict:
    """Crisis head then category head on the items numbered `rows`, full-batch Adam."""
    gen = torch.Generator().manual_seed(cfg.seed)
    head = new_head(data.emb.shape[1], hidden, gen)
    rows_t = torch.tensor(rows, dtype=torch.long)
    idx, valid = data.idx[rows_t], data.valid[rows_t]
    y = torch.tensor([float(items[r].y) for r in rows])
    crisis = [k for k in head if k.startswith("crisis.")]
    lr = cfg.lr if not hidden else cfg.lr / 5              # the MLP is steadier a little slower
    opt = torch.optim.Adam([head[k] for k in crisis], lr=lr)
    for _ in range(cfg.steps):
        logits = item_logits(crisis_logits(head, data.emb), idx, valid)
        loss = bce(logits, y) + cfg.weight_decay * sum(
            (head[k] ** 2).sum() for k in crisis if k.endswith("weight"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Category head: on each crisis item's highest window, for items whose kind names one.
    with torch.no_grad():
        best = best_window(crisis_logits(head, data.emb), idx, valid)
    labelled = [(b, items[r].category_index) for b, r in zip(best.tolist(), rows)
                if items[r].category_index >= 0]
    if labelled:
        emb = data.emb[torch.tensor([b for b, _ in labelled])]
        target = torch.tensor([c for _, c in labelled])
        opt = torch.optim.Adam([head["category.weight"], head["category.bias"]], lr=cfg.lr)
        for _ in range(cfg.steps):
            loss = F.cross_entropy(category_logits(head, emb), target) + \
                cfg.weight_decay * (head["category.weight"] ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().clone().contiguous() for k, v in head.items()}


def frozen_scores(head: dict, data: Embedded, rows: list[int]) -> list[float]:
    rows_t = torch.tensor(rows, dtype=torch.long)
    with torch.no_grad():
        logits = item_logits(crisis_logits(head, data.emb), data.idx[rows_t], data.valid[rows_t])
    return torch.sigmoid(logits).tolist()


def out_of_fold(fit, score, folds: list[int], dev_folds: int, n: int, n_scored: int,
                progress: bool, what: str) -> tuple[dict[int, float], dict]:
    """{item: score} for the first `n_scored` items in folds 0..dev_folds-1, each from a head
    trained without its fold (items after `n_scored` only ever train), and the head trained
    without fold 0 (the one that ships)."""
    scores, first = {}, None
    for f in tqdm(range(dev_folds), desc=f"{what}: dev folds", disable=not progress,
                  file=sys.stderr):
        train = [i for i in range(n) if folds[i] != f]
        held = [i for i in range(n_scored) if folds[i] == f]
        head = fit(train)
        first = head if first is None else first
        for i, s in zip(held, score(head, held)):
            scores[i] = s
    return scores, first


# ---------------------------------------------------------------------- threshold and metrics
def choose_threshold(scores: list[float], ys: list[int], target: float) -> float:
    """The highest threshold t with recall(score >= t) >= target on these items."""
    pos = sorted((s for s, y in zip(scores, ys) if y), reverse=True)
    if not pos:
        return 0.5
    need = max(1, -(-int(round(target * len(pos) * 1e6)) // 1_000_000))   # ceil(target * n_pos)
    return pos[min(need, len(pos)) - 1]


def balanced_threshold(scores: list[float], ys: list[int], recall_target: float,
                       false_alarm_target: float) -> float:
    """The threshold that leaves the most room under both targets on these items: among the
    thresholds with recall >= recall_target and false alarms <= false_alarm_target, the one
    that maximises min(recall - recall_target, false_alarm_target - false alarms) (the higher
    threshold on a tie). When no threshold meets both, recall wins: choose_threshold."""
    pos = sorted((s for s, y in zip(scores, ys) if y), reverse=True)
    neg = sorted((s for s, y in zip(scores, ys) if not y), reverse=True)
    best, best_room = None, -1.0
    n_neg_above = 0                                   # negatives with score >= t
    for k, t in enumerate(pos):                       # t = the (k+1)-th highest crisis score
        if k + 1 < len(pos) and pos[k + 1] == t:
            continue                                  # recall at t counts every tie
        while n_neg_above < len(neg) and neg[n_neg_above] >= t:
            n_neg_above += 1
        recall = (k + 1) / len(pos)
        false_alarm = n_neg_above / max(len(neg), 1)
        room = min(recall - recall_target, false_alarm_target - false_alarm)
        if room >= 0 and room > best_room:
            best, best_room = t, room
    return best if best is not None else choose_threshold(scores, ys, recall_target)


def operating_points(scores: list[float], ys: list[int]) -> list[dict]:
    """Dev false-alarm rate at other recall targets, for choosing how to use the score."""
    neg = [s for s, y in zip(scores, ys) if not y]
    points = []
    for target in (0.8, 0.9, 0.95, 0.97, 0.99):
        t = choose_threshold(scores, ys, target)
        points.append({"recall_target": target, "threshold": t,
                       "false_alarm": round(sum(s >= t for s in neg) / max(len(neg), 1), 4)})
    return points


def measure(scores: list[float], items: list[Item], threshold: float) -> dict:
    pos = [s for s, it in zip(scores, items) if it.y]
    neg = [s for s, it in zip(scores, items) if not it.y]
    kinds: dict[str, list] = {}
    for s, it in zip(scores, items):
        kinds.setdefault(it.kind, []).append(s >= threshold)
    return {"threshold": threshold,
            "recall": sum(s >= threshold for s in pos) / max(len(pos), 1),
            "false_alarm": sum(s >= threshold for s in neg) / max(len(neg), 1),
            "n_crisis": len(pos), "n_non_crisis": len(neg),
            # crisis kinds: share flagged (recall); non-crisis kinds: share flagged (false alarms)
            "flagged_by_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(kinds.items())}}


# ---------------------------------------------------------------------- the outside check
def read_check_sets(folder: str) -> list[Item]:
    items = []
    for name, y in (("crisis.jsonl", 1), ("non_crisis.jsonl", 0)):
        path = Path(folder) / name
        if not path.is_file():
            return []
        with open(path, "rb") as f:
            for n, row in jsonl_objects(f):
                if isinstance(row, BadLine):
                    raise SafetyError(f"{path} line {n} {row.problem}.")
                text = row.get("text") or user_text(row.get("messages") or [])
                items.append(Item(text, y, row.get("kind", "?"), "check", None))
    return items


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- main
def main(argv=None) -> int:
    cfg = parse_args(argv)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    corpus, out = Path(cfg.corpus), Path(cfg.out)
    if not corpus.is_dir():
        print(f"error: --corpus {corpus} is not a folder; write the labelled corpus there or "
              "pass another folder", file=sys.stderr)
        return 2
    items, skipped = read_corpus(corpus)
    for note in skipped[:10]:
        print(f"skipped {note}", file=sys.stderr)
    labels = {it.y for it in items}
    if labels != {0, 1}:
        print(f"error: {corpus} holds {len(items)} usable items but needs both crisis and "
              "non_crisis ones", file=sys.stderr)
        return 2
    print(f"corpus: {len(items)} items ({sum(it.y for it in items)} crisis) from {corpus}"
          + (f", {len(skipped)} lines skipped" if skipped else ""))
    real = items
    items = real + long_texts(real, cfg.long_texts, cfg.seed)     # training sees both
    print(f"training adds {len(items) - len(real)} texts of small talk, alone or around the "
          "writers' messages")

    from model.minilm import load_sentence_encoder
    head_cfg = HeadConfig(window=cfg.window, overlap=cfg.overlap)
    st = load_sentence_encoder()
    encoder = CrisisClassifier(st.bert, st.tokenizer, {}, head_cfg)
    data = None                     # every item's window vectors, made when a frozen head needs them
    folds, fold_note = writer_folds(items, cfg.folds)
    n_dev = len(set(folds)) if cfg.folds == 0 else cfg.dev_folds
    fold_note += "; dev: fold 0" if n_dev == 1 else f"; dev: folds 0..{n_dev - 1}"
    print(f"dev: out-of-fold scores, {fold_note}")

    def frozen(hidden):
        nonlocal data
        if data is None:
            data = embed(encoder, [it.text for it in items], cfg.progress, "corpus")
        fit = lambda rows: fit_head(data, items, rows, cfg, hidden)           # noqa: E731
        score = lambda head, rows: frozen_scores(head, data, rows)           # noqa: E731
        return fit, score

    trainer = None

    def lora():
        nonlocal trainer            # built once: its cache of the frozen layers' outputs
        if trainer is None:
            from .train_lora import LoraTrainer
            trainer = LoraTrainer(encoder, items, cfg)
        return trainer.fit, trainer.scores

    runs = {"logistic": lambda: frozen(0), "mlp": lambda: frozen(cfg.hidden), "lora": lora}
    variants = VARIANTS if cfg.compare else (cfg.variant,)
    comparison, heads = {}, {}
    for name in variants:
        t = time.time()
        fit, score = runs[name]()
        oof, heads[name] = out_of_fold(fit, score, folds, n_dev, len(items), len(real),
                                       cfg.progress, name)
        dev_items = [real[i] for i in sorted(oof)]           # the corpus's own items only
        dev_scores, ys = [oof[i] for i in sorted(oof)], [it.y for it in dev_items]
        threshold = balanced_threshold(dev_scores, ys, cfg.recall_target,
                                       cfg.false_alarm_target)
        m = measure(dev_scores, dev_items, threshold)
        m["operating_points"] = operating_points(dev_scores, ys)
        m["seconds"] = round(time.time() - t, 1)
        comparison[name] = m
        print(f"  {name:8s} dev recall {m['recall']:.3f}  false alarms {m['false_alarm']:.3f} "
              f"at threshold {threshold:.4f}  ({m['seconds']} s for {n_dev} dev fold{'s' if n_dev > 1 else ''})")

    # The shipped head: the chosen variant trained without fold 0, whose scores on fold 0's
    # writers chose the threshold. Shipping that very head (not a retrain on everything) keeps
    # the threshold calibrated to the weights it is used with, and the rebuild to one training.
    name = cfg.variant
    head = heads[name]
    if name == "lora":
        head_cfg.lora_layers, head_cfg.lora_r = cfg.lora_layers, cfg.lora_r
        head_cfg.lora_alpha = 2.0 * cfg.lora_r
    else:
        head_cfg.hidden = cfg.hidden if name == "mlp" else 0
    dev = comparison[name]
    head_cfg.threshold = dev["threshold"]

    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    # Each file through a temporary name and a rename: a killed run leaves the old ones whole.
    save_file({k: v.contiguous() for k, v in head.items()}, str(out / (HEAD_FILE + ".tmp")))
    os.replace(out / (HEAD_FILE + ".tmp"), out / HEAD_FILE)
    os.chmod(out / HEAD_FILE, 0o644)        # safetensors writes it private; it is not a secret
    head_cfg.extra = {"variant": name, "dev": {k: dev[k] for k in
                      ("recall", "false_alarm", "n_crisis", "n_non_crisis")},
                      "dev_split": fold_note, "recall_target": cfg.recall_target,
                      "false_alarm_target": cfg.false_alarm_target,
                      "corpus_hash": corpus_hash(corpus), "corpus_items": len(real),
                      "long_texts_added": len(items) - len(real)}
    write_json(out / CONFIG_FILE, head_cfg.to_dict())

    check = {}
    check_items = read_check_sets(cfg.check_sets) if cfg.check_sets else []
    if check_items:
        shipped = CrisisClassifier(st.bert, st.tokenizer, head, head_cfg)
        if name == "lora":
            shipped = trainer.classifier(head, head_cfg)
        s = shipped.scores([it.text for it in check_items])
        check = measure(s, check_items, head_cfg.threshold)
        print(f"outside check ({cfg.check_sets}): recall {check['recall']:.3f}, "
              f"false alarms {check['false_alarm']:.3f}")

    report = {"command": "python -m safety.train " + " ".join(argv if argv is not None else sys.argv[1:]),
              "config": asdict(cfg), "shipped": head_cfg.to_dict(), "dev": dev,
              "comparison": comparison, "loko": {}, "outside_check": check,
              "seconds_to_ship": round(time.time() - t0, 1)}
    write_json(out / "report.json", report)
    print(f"shipped {name}: dev recall {dev['recall']:.3f}, false alarms {dev['false_alarm']:.3f}, "
          f"threshold {head_cfg.threshold:.4f}")
    print(f"wrote {out / HEAD_FILE}, {out / CONFIG_FILE}, {out / 'report.json'} "
          f"in {time.time() - t0:.0f} s")

    if cfg.loko:
        from .train_loko import PARTIAL_FILE, leave_kinds_out, mean_recall, table
        fit, score = runs[name]()
        skip = {"progress", "compare", "check_sets", "out", "corpus", "loko"}
        key = {"corpus_hash": head_cfg.extra["corpus_hash"], "threshold": dev["threshold"],
               "config": {k: v for k, v in asdict(cfg).items() if k not in skip}}
        loko = leave_kinds_out(fit, score, items, real, folds, dev["threshold"],
                               cfg.loko_together, key, out, cfg.progress)
        together = "one kind at a time" if cfg.loko_together == 1 else \
            f"{cfg.loko_together} kinds at a time"
        print(f"\nleave-kinds-out ({name}, {together}; a head never shown the kind, threshold "
              f"{dev['threshold']:.4f})\n")
        print(table(loko) + "\n")
        report["loko"] = loko
        report["loko_mean_recall"] = round(mean_recall(loko), 4)
        report["loko_mean_recall_with_lexicon"] = round(mean_recall(loko, "recall_with_lexicon"), 4)
        report["seconds"] = round(time.time() - t0, 1)
        write_json(out / "report.json", report)
        (out / PARTIAL_FILE).unlink(missing_ok=True)            # folded into report.json
    return 0


if __name__ == "__main__":
    sys.exit(main())
