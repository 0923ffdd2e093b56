"""The 4-bit model end to end, against transformers + bitsandbytes as the reference: loading
SmolLM2 in NF4, what it costs in quality, saving it (model/checkpoint/save.py) and reading it back, reading
folders that transformers quantized, peak memory while quantizing a 1B-parameter checkpoint,
and corrupt 4-bit checkpoints."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model import UserError, load_model
from model.checkpoint import save as save_module
from model.quant.linear4bit import Linear4bit
from model.checkpoint.save import save_checkpoint
from tests.helpers import save_hf_checkpoint, tiny_hf_config

REPO = Path(__file__).resolve().parents[1]
PROMPT = "I have been feeling anxious before work every morning. What can I do?"
BUFFERS = ("weight", "absmax", "nested_absmax", "nested_code", "offset", "code")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """This file's big forwards and quantizations run in one thread: on a small, shared machine
    two threads spend most of their time waiting for each other (several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def no_torch_compile():
    """bitsandbytes torch.compiles its CPU fallbacks on first use: tens of seconds, same numbers."""
    import torch._dynamo
    with torch._dynamo.config.patch(disable=True):
        yield


def bnb_config():
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)


def hf_4bit(folder, quantize: bool):
    """transformers + bitsandbytes on CPU (no device_map needed in transformers 5): quantizing
    a full-precision folder on load, or reading a 4-bit one as saved.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 runs eval-mode 4-bit layers through a fused
    kernel that computes in bfloat16 whatever bnb_4bit_compute_dtype says (and repacks the
    weight in place on first use). The reference is its float32 computation as configured, so
    that path is switched off."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM
    kwargs = {"quantization_config": bnb_config()} if quantize else {}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def max_logit_diff(ours_logits, hf, ids) -> float:
    with torch.no_grad():
        return (ours_logits - hf(ids).logits).abs().max().item()


def logits(model, ids):
    with torch.no_grad():
        return model(ids)


def linear4bit_layers(model) -> dict[str, Linear4bit]:
    return {name: m for name, m in model.named_modules() if isinstance(m, Linear4bit)}


@pytest.fixture(scope="module")
def ids(smollm2_tokenizer):
    return torch.tensor([smollm2_tokenizer.encode(PROMPT, bos=True)])


@pytest.fixture(scope="module")
def ours_nf4(smollm2_dir):
    return load_model(smollm2_dir, quantize="nf4", dtype="float32", compute_dtype="float32", quiet=True)


@pytest.fixture(scope="module")
def ours_logits(ours_nf4, ids):
    return logits(ours_nf4, ids)


@pytest.fixture(scope="module")
def hf_nf4(smollm2_dir):
    return hf_4bit(smollm2_dir, quantize=True)


@pytest.fixture(scope="module")
def saved_nf4(ours_nf4, smollm2_dir, tmp_path_factory):
    """Our NF4 SmolLM2 written by save_checkpoint (full-precision tensors kept in float32)."""
    return save_checkpoint(ours_nf4, tmp_path_factory.mktemp("nf4") / "smollm2-nf4",
                           dtype=torch.float32, source_dir=smollm2_dir)


# ----------------------------------------------------------------------------- SmolLM2 in NF4
@pytest.mark.slow
def test_nf4_smollm2_logits_match_transformers_bitsandbytes(ours_logits, hf_nf4, ids):
    assert max_logit_diff(ours_logits, hf_nf4, ids) <= 1e-3


def test_every_packed_weight_equals_the_bytes_transformers_bitsandbytes_made(ours_nf4, hf_nf4):
    theirs = dict(hf_nf4.named_modules())
    layers = linear4bit_layers(ours_nf4)
    assert len(layers) == 30 * 7
    for name, layer in layers.items():
        ref = theirs[f"model.{name}"].weight
        assert torch.equal(layer.weight, ref.data.view(-1, 1)), name
        assert torch.equal(layer.absmax, ref.quant_state.absmax), name


@pytest.mark.parametrize("name", ["layers.0.self_attn.q_proj", "layers.29.mlp.down_proj"])
def test_real_weights_quantize_to_bitsandbytes_quantize_4bit_bytes(ours_nf4, smollm2_dir, name):
    functional = pytest.importorskip("bitsandbytes.functional")
    from safetensors import safe_open
    with safe_open(str(smollm2_dir / "model.safetensors"), framework="pt") as f:
        w = f.get_tensor(f"model.{name}.weight")
    packed, ref = functional.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    layer = ours_nf4.get_submodule(name)
    assert torch.equal(layer.weight, packed) and torch.equal(layer.absmax, ref.absmax)
    assert torch.equal(layer.nested_absmax, ref.state2.absmax) and torch.equal(layer.offset, ref.offset)


def test_nf4_perplexity_stays_within_50_percent_of_float32(smollm2, ours_nf4, smollm2_tokenizer):
    # Measured: float32 30.3, nf4 40.4 (+33%; +25% to +37% on other rows). Transformers +
    # bitsandbytes NF4 gives the same logits (above), so this is the format's own cost on a 135M
    # model whose float weights were themselves decoded from a Q4_1 GGUF; QLoRA's near-lossless
    # NF4 figures are for 7B+ models. A wrong nibble order, scale or code table puts it in the
    # thousands.
    lines = (REPO / "data/sample/eval.jsonl").read_text().splitlines()[:4]
    text = "\n\n".join(f"{row['input']}\n{row['output']}" for row in map(json.loads, lines))
    ids = torch.tensor([smollm2_tokenizer.encode(text, bos=True)[:256]])      # (1, 256)

    def perplexity(model) -> float:
        predicted = logits(model, ids)[0, :-1]                  # (255, vocab): predicts ids[1:]
        return math.exp(F.cross_entropy(predicted.float(), ids[0, 1:]).item())

    full, nf4 = perplexity(smollm2), perplexity(ours_nf4)
    print(f"held-out perplexity: float32 {full:.3f}, nf4 {nf4:.3f}")
    assert nf4 / full < 1.5


# ----------------------------------------------------------------------------- saving and reading back
def test_saved_nf4_folder_reads_back_without_requantizing(saved_nf4, ours_nf4, ours_logits, ids,
                                                         monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_model quantized a weight that was already 4-bit")
    monkeypatch.setattr("model.quant.linear4bit.quantize_nf4", refuse)
    again = load_model(saved_nf4, quantize="nf4", dtype="float32", compute_dtype="float32")
    before, after = linear4bit_layers(ours_nf4), linear4bit_layers(again)
    assert before.keys() == after.keys()
    for name in before:
        for buffer in BUFFERS:
            assert torch.equal(getattr(after[name], buffer), getattr(before[name], buffer)), (name, buffer)
    assert torch.equal(logits(again, ids), ours_logits)


def test_saved_nf4_folder_has_bitsandbytes_layout_and_quantization_config(saved_nf4):
    config = json.loads((saved_nf4 / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "bitsandbytes" and qc["load_in_4bit"] and qc["bnb_4bit_quant_type"] == "nf4"
    assert qc["bnb_4bit_use_double_quant"] and qc["bnb_4bit_compute_dtype"] == "float32"
    tensors = load_file(saved_nf4 / "model.safetensors")
    prefix = "model.layers.3.mlp.up_proj.weight"
    assert {k for k in tensors if k.startswith(prefix)} == {
        prefix, *(f"{prefix}.{s}" for s in ("absmax", "quant_map", "nested_absmax", "nested_quant_map",
                                            "quant_state.bitsandbytes__nf4"))}
    assert tensors[prefix].dtype == torch.uint8 and tensors[prefix].shape == (1536 * 576 // 2, 1)
    assert "lm_head.weight" not in tensors                      # tied: the embedding is the head
    assert (saved_nf4 / "tokenizer.json").is_file()


def test_transformers_bitsandbytes_loads_our_saved_nf4_folder(saved_nf4, ours_logits, ids):
    hf = hf_4bit(saved_nf4, quantize=False)
    assert max_logit_diff(ours_logits, hf, ids) <= 1e-3


def test_transformers_saved_4bit_folder_loads_into_ours(tmp_path):
    # Dimensions are multiples of 64, where bitsandbytes' CPU kernels are exact; sharded.
    cfg = tiny_hf_config(hidden_size=128, intermediate_size=256, num_attention_heads=4)
    save_hf_checkpoint(cfg, tmp_path / "base")
    hf = hf_4bit(tmp_path / "base", quantize=True)
    hf.save_pretrained(tmp_path / "q", max_shard_size="40KB")
    assert (tmp_path / "q/model.safetensors.index.json").is_file()

    ours = load_model(tmp_path / "q", quantize="nf4", dtype="float32", compute_dtype="float32")
    assert len(linear4bit_layers(ours)) == 2 * 7
    ids = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(0))
    assert max_logit_diff(logits(ours, ids), hf, ids) <= 1e-3


def test_large_checkpoints_are_sharded_with_an_index_and_read_back(monkeypatch, tmp_path):
    save_hf_checkpoint(tiny_hf_config(hidden_size=128, intermediate_size=256), tmp_path / "base")
    model = load_model(tmp_path / "base", quantize="nf4", dtype="float32", compute_dtype="float32")
    monkeypatch.setattr(save_module, "SHARD_BYTES", 60_000)
    save_checkpoint(model, tmp_path / "out", dtype=torch.float32)
    index = json.loads((tmp_path / "out/model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards == sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    for key, shard in index["weight_map"].items():               # statistics sit with their bytes
        base = key.split(".weight.", 1)[0] + ".weight" if ".weight." in key else key
        assert shard == index["weight_map"][base]
    again = load_model(tmp_path / "out", quantize="nf4", dtype="float32", compute_dtype="float32")
    ids = torch.randint(0, 320, (1, 9), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits(again, ids), logits(model, ids))


def test_saving_again_replaces_the_checkpoint_and_never_a_folder_of_other_files(tmp_path):
    save_hf_checkpoint(tiny_hf_config(), tmp_path / "base")
    model = load_model(tmp_path / "base")
    save_checkpoint(model, tmp_path / "out", dtype=torch.float32)
    (tmp_path / "out/stale.safetensors").write_bytes(b"left from an older save")
    save_checkpoint(model, tmp_path / "out", dtype=torch.bfloat16)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    assert load_file(tmp_path / "out/model.safetensors")["model.norm.weight"].dtype == torch.bfloat16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "out"]   # no temporary left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/todo.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.*no config.json"):
        save_checkpoint(model, tmp_path / "notes")
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]


def test_saving_a_model_with_lora_adapters_is_a_user_error(tmp_path):
    from lora import LoRAConfig, inject
    save_hf_checkpoint(tiny_hf_config(), tmp_path / "base")
    model = load_model(tmp_path / "base")
    inject(model, LoRAConfig(r=2))
    with pytest.raises(UserError, match="not those of a plain Llama.*merge LoRA adapters"):
        save_checkpoint(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- corrupt 4-bit folders
@pytest.fixture
def tiny_nf4_folder(tmp_path):
    save_hf_checkpoint(tiny_hf_config(hidden_size=128, intermediate_size=256), tmp_path / "base")
    model = load_model(tmp_path / "base", quantize="nf4", dtype="float32", compute_dtype="float32")
    return save_checkpoint(model, tmp_path / "nf4", dtype=torch.float32)


def rewrite(folder: Path, change):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_statistics_in_another_shard_than_their_packed_weight_still_load(tiny_nf4_folder):
    before = load_model(tiny_nf4_folder, quantize="nf4", dtype="float32", compute_dtype="float32")
    tensors = load_file(tiny_nf4_folder / "model.safetensors")
    stats = {k: t for k, t in tensors.items() if ".weight." in k}      # every 4-bit statistic
    rest = {k: t for k, t in tensors.items() if k not in stats}
    save_file(rest, tiny_nf4_folder / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file(stats, tiny_nf4_folder / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    (tiny_nf4_folder / "model.safetensors").unlink()
    weight_map = {k: "model-00001-of-00002.safetensors" for k in rest}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in stats})
    (tiny_nf4_folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    after = load_model(tiny_nf4_folder, quantize="nf4", dtype="float32", compute_dtype="float32")
    ids = torch.randint(0, 320, (1, 7), generator=torch.Generator().manual_seed(2))
    assert torch.equal(logits(after, ids), logits(before, ids))


def test_missing_quant_state_key_is_a_user_error_naming_key_and_file(tiny_nf4_folder):
    key = "model.layers.1.self_attn.k_proj.weight.quant_state.bitsandbytes__nf4"
    rewrite(tiny_nf4_folder, lambda t: t.pop(key))
    with pytest.raises(UserError, match=rf"model\.safetensors.*'{key.replace('.', '[.]')}' is missing"):
        load_model(tiny_nf4_folder, quantize="nf4")


def test_packed_size_that_disagrees_with_quant_state_shape_is_a_user_error(tiny_nf4_folder):
    key = "model.layers.0.mlp.up_proj.weight"                   # (256, 128): 16384 bytes packed

    def truncate(tensors):
        tensors[key] = tensors[key][:-8].clone()
    rewrite(tiny_nf4_folder, truncate)
    with pytest.raises(UserError, match=rf"model\.safetensors.*'{key}' holds 16376 values.*\[256, 128\]"):
        load_model(tiny_nf4_folder, quantize="nf4")


def test_nan_in_a_weight_to_quantize_is_a_user_error_naming_the_tensor(tmp_path):
    save_hf_checkpoint(tiny_hf_config(), tmp_path)
    key = "model.layers.1.mlp.gate_proj.weight"

    def poison(tensors):
        tensors[key][3, 5] = float("nan")
    rewrite(tmp_path, poison)
    with pytest.raises(UserError, match=rf"model\.safetensors.*'{key}' cannot be quantized.*NaN"):
        load_model(tmp_path, quantize="nf4")


# ----------------------------------------------------------------------------- speed and memory
def test_nearest_code_lookup_agrees_with_counting_midpoints_at_every_edge():
    from model.quant import nf4 as quant
    midpoints = quant._nf4_midpoints("cpu")
    up, down = torch.nextafter(midpoints, torch.tensor(2.0)), torch.nextafter(midpoints, torch.tensor(-2.0))
    edges = torch.arange(-4096, 4097) / 4096                    # every cell edge of the table
    values = torch.cat([midpoints, up, down, edges, torch.nextafter(edges, torch.tensor(2.0)),
                        torch.nextafter(edges, torch.tensor(-2.0)).clamp(-1, 1),
                        torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 2 - 1])
    assert torch.equal(quant._nearest_nf4(values).long(), torch.bucketize(values, midpoints))


def write_random_llama(folder: Path, n_layers: int, shard_bytes: int = 10**9) -> int:
    """A Llama-3.2-1B-shaped bf16 checkpoint with random weights, written shard by shard (the
    whole model is never in memory). Returns the largest tensor's size in bytes. To keep this
    cheap, every tensor is cut from one pool of 2^24 normal values at a random offset (the
    embedding, larger, repeats it): quantizing costs the same as for independent values."""
    hidden, inter, heads, kv_heads, vocab, head_dim = 2048, 8192, 32, 8, 128256, 64
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": n_layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "vocab_size": vocab, "tie_word_embeddings": True,
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16"}
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,),
                       p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                       p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
                       p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
                       p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter)})
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(0)
    pool = torch.empty(2**24, dtype=torch.bfloat16).normal_(0, 0.02, generator=g)
    weight_map, shard, size = {}, {}, 0

    def random_tensor(shape) -> torch.Tensor:
        n = math.prod(shape)
        if n > pool.numel():
            return pool.repeat(-(-n // pool.numel()))[:n].view(shape)
        start = int(torch.randint(0, pool.numel() - n + 1, (), generator=g))
        return pool[start:start + n].view(shape).clone()           # safetensors wants no shared memory

    def flush():
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
        shard.clear()

    for key, shape in shapes.items():
        tensor = random_tensor(shape)
        if shard and size + tensor.nbytes > shard_bytes:
            flush()
            size = 0
        shard[key] = tensor
        size += tensor.nbytes
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return max(math.prod(shape) for shape in shapes.values()) * 2


# Peak RSS is read from /proc/self/status (VmHWM): getrusage's ru_maxrss survives exec, so a
# child of a large pytest process would report the parent's peak.
MEASURE = """
import json, sys
from model import load_model
model = load_model(sys.argv[1], quantize="nf4", dtype="bfloat16", compute_dtype="bfloat16", quiet=True)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
peak = int(status["VmHWM"].split()[0]) * 1024                               # kB -> bytes
tensors = list(model.parameters()) + list(model.buffers())
print(json.dumps({"peak": peak, "model_bytes": sum(t.numel() * t.element_size() for t in tensors),
                  "params": sum(p.numel() for p in model.parameters())
                            + sum(m.in_features * m.out_features for m in model.modules()
                                  if type(m).__name__ == "Linear4bit")}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc for peak RSS")
@pytest.mark.slow
def test_loading_a_1b_checkpoint_in_nf4_peaks_below_4bit_size_plus_two_largest_tensors(tmp_path):
    folder = tmp_path / "llama-1b-random"
    try:
        largest = write_random_llama(folder, n_layers=16)
        run = subprocess.run([sys.executable, "-c", MEASURE, str(folder)], capture_output=True,
                             text=True, cwd=REPO, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})   # see one_thread
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    bound = result["model_bytes"] + 2 * largest + 600e6
    print(f"{result['params'] / 1e9:.2f}B params: peak RSS {result['peak'] / 1e6:.0f} MB, "
          f"bound {bound / 1e6:.0f} MB (4-bit model {result['model_bytes'] / 1e6:.0f} MB "
          f"+ 2 x {largest / 1e6:.0f} MB + 600 MB)")
    assert result["params"] > 1.2e9
    assert result["peak"] < bound, f"peak RSS {result['peak'] / 1e6:.0f} MB >= bound {bound / 1e6:.0f} MB"
