"""Putting LoRA into a model: which linears get an adapter, freezing the rest, counting, merging."""

from dataclasses import dataclass, field

import torch.nn as nn

from lora.layer import LoRALinear

# The seed project's seven targets: every linear of attention and of the MLP.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHORT_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
               "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


@dataclass
class LoRAConfig:
    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    use_rslora: bool = False
    targets: tuple[str, ...] = field(default_factory=lambda: DEFAULT_TARGETS)

    def __post_init__(self):
        if isinstance(self.targets, str):
            self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        self.targets = tuple(SHORT_NAMES.get(t, t) for t in self.targets)


@dataclass
class ParamCount:
    trainable: int
    total: int

    def __str__(self):
        return (f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
                f"trainable: {100 * self.trainable / max(self.total, 1):.4f}%")


def inject(model: nn.Module, cfg: LoRAConfig) -> ParamCount:
    """Wraps every linear whose name ends in one of cfg.targets in a LoRALinear, freezes
    everything else, and returns the trainable / total parameter counts."""
    model.requires_grad_(False)
    targets = [(name, module) for name, module in model.named_modules()
               if name.rsplit(".", 1)[-1] in cfg.targets and not isinstance(module, LoRALinear)]
    if not targets:
        raise ValueError(f"no module matches LoRA targets {', '.join(cfg.targets)}")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(module, cfg.r, cfg.alpha, cfg.dropout, cfg.use_rslora))
    model.lora_config = cfg
    return count_parameters(model)


def count_parameters(model: nn.Module) -> ParamCount:
    """Counts stored numbers: a 4-bit weight counts as its full in x out size, as PEFT reports."""
    from model.quant.linear4bit import Linear4bit
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, Linear4bit))
    return ParamCount(trainable, total)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict:
    """Only the adapter tensors, keyed by module name: {"layers.0.self_attn.q_proj.lora_A": ...}."""
    out = {}
    for name, m in lora_modules(model).items():
        out[f"{name}.lora_A"] = m.lora_A.detach()
        out[f"{name}.lora_B"] = m.lora_B.detach()
    return out


def merge(model: nn.Module):
    for m in lora_modules(model).values():
        m.merge()


def unmerge(model: nn.Module):
    for m in lora_modules(model).values():
        m.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merges every adapter and puts the plain base linears back: a model with no LoRA left."""
    for name, m in lora_modules(model).items():
        m.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, m.base)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model
