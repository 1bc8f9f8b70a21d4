"""Model building blocks shared by tasks."""

from fedllm.models.lora import LoRALinear, LoRASpec, adapter_parameters, add_lora, merge_lora

__all__ = ["LoRALinear", "LoRASpec", "adapter_parameters", "add_lora", "merge_lora"]
