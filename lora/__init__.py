"""LoRA: LoRALinear, inject / merge / unmerge, PEFT-format adapters, merged export."""

from lora.export import save_merged
from lora.inject import (DEFAULT_TARGETS, LoRAConfig, ParamCount, count_parameters, inject,
                         lora_modules, lora_state_dict, merge, merge_and_unload, unmerge)
from lora.layer import LoRALinear
from lora.peft_format import load_adapter, read_adapter_config, save_adapter

__all__ = ["LoRAConfig", "LoRALinear", "ParamCount", "DEFAULT_TARGETS", "inject", "count_parameters",
           "lora_modules", "lora_state_dict", "merge", "unmerge", "merge_and_unload",
           "save_adapter", "load_adapter", "read_adapter_config", "save_merged"]
