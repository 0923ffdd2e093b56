"""Bad checkpoints get one clear sentence that names the file or key, never a deep traceback."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import UserError, load_model
from tests.helpers import save_hf_checkpoint, tiny_hf_config


@pytest.fixture
def checkpoint(tmp_path):
    save_hf_checkpoint(tiny_hf_config(), tmp_path)
    return tmp_path


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(UserError, match="nope"):
        load_model(tmp_path / "nope")


def test_folder_without_config_json_is_named(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        load_model(tmp_path)


def test_unknown_architecture_is_refused_by_name(checkpoint):
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="MistralForCausalLM"):
        load_model(checkpoint)


def test_unsupported_rope_scaling_is_refused_by_name(checkpoint):
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="yarn"):
        load_model(checkpoint)


def test_missing_safetensors_file_is_named(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors"):
        load_model(checkpoint)


def test_missing_shard_is_named(tmp_path):
    save_hf_checkpoint(tiny_hf_config(), tmp_path, max_shard_size="60KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(UserError, match=shard.name):
        load_model(tmp_path)


def test_truncated_safetensors_file_is_named(checkpoint):
    path = checkpoint / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="model.safetensors"):
        load_model(checkpoint)


def test_corrupt_safetensors_header_is_named(checkpoint):
    (checkpoint / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match="model.safetensors"):
        load_model(checkpoint)


def test_tensor_of_the_wrong_shape_is_named(checkpoint):
    path = checkpoint / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(7, 64)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*\(7, 64\)"):
        load_model(checkpoint)


def test_missing_tensor_is_named(checkpoint):
    path = checkpoint / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.norm.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(UserError, match="norm.weight"):
        load_model(checkpoint)


def test_repo_id_not_available_offline_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="some-org/some-model.*offline"):
        load_model("some-org/some-model")


def test_generate_cli_prints_one_line_error_for_a_missing_model(tmp_path):
    run = subprocess.run([sys.executable, "generate.py", "--model", str(tmp_path / "missing"),
                          "--prompt", "hi"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0]


def test_weights_stream_in_as_frozen_parameters_of_the_requested_dtype(checkpoint):
    model = load_model(checkpoint, dtype="bfloat16")
    params = list(model.parameters())
    assert params and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in params)
    assert not any(p.is_meta for p in params)


@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_on_block_gets_each_block_whole_and_in_order_before_the_next_is_read(checkpoint, quantize, monkeypatch):
    # Two shards holding the blocks out of order: layers.1 and the embedding in the first file,
    # layers.0 and the rest in the second. The loader still fills block 0 first, and hands each
    # block over before reading anything of the next one or of the root.
    tensors = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    first = {k: v for k, v in tensors.items() if k.startswith(("model.layers.1.", "model.embed_tokens"))}
    files = {"a.safetensors": first, "b.safetensors": {k: v for k, v in tensors.items() if k not in first}}
    for name, part in files.items():
        save_file(part, checkpoint / name)
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, part in files.items() for k in part}}))
    seen = []

    def on_block(i, block):
        model = block_owner[0]
        assert not any(t.is_meta for t in block.parameters()) and not any(t.is_meta for t in block.buffers())
        later = [p for b in model.layers[i + 1:] for p in [*b.parameters(), *b.buffers()]]
        assert all(t.is_meta for t in later) and model.norm.weight.is_meta
        assert not any(p.requires_grad for p in block.parameters())
        block.seen = True      # what on_block does to a block stays
        seen.append(i)

    block_owner = []    # the model being built, seen through the loader's block watch
    from model.checkpoint import load as loader
    watch_init = loader._BlockWatch.__init__

    def capture(self, model, *rest):
        block_owner.append(model)
        watch_init(self, model, *rest)
    monkeypatch.setattr(loader._BlockWatch, "__init__", capture)
    model = load_model(checkpoint, quantize=quantize, on_block=on_block)
    assert seen == [0, 1] and all(b.seen for b in model.layers)
    reference = load_model(checkpoint, quantize=quantize)      # the same weights without a hook
    ids = torch.tensor([[1, 5, 9, 2]])
    assert torch.equal(model(ids), reference(ids))


def _fail_on_hub(*args, **kwargs):
    raise AssertionError("the embedded default must not ask the hub")


def test_default_model_is_the_packaged_gguf_copy_and_never_asks_the_hub(monkeypatch, capsys):
    import huggingface_hub
    import model.checkpoint.load as mw
    from model.checkpoint.gguf import default_model_dir
    monkeypatch.setattr(mw.hub, "download", _fail_on_hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _fail_on_hub)
    folder = mw.resolve_model_dir(None)
    assert folder == default_model_dir()
    assert folder.name == "SmolLM2-135M-Instruct-from-gguf"
    assert capsys.readouterr().err == ""        # no "not reachable on the hub" note


def test_a_named_hub_id_is_fetched_from_the_hub(monkeypatch, tmp_path):
    import model.checkpoint.load as mw
    asked = []
    monkeypatch.setattr(mw.hub, "download", lambda repo_id, patterns: asked.append(repo_id) or tmp_path)
    assert mw.resolve_model_dir("HuggingFaceTB/SmolLM2-135M-Instruct") == tmp_path
    assert asked == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
