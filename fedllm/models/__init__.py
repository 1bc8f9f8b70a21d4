"""Models and their building blocks: the small byte-level GPT of the text task
(:mod:`~fedllm.models.gpt`), its base checkpoint file (:mod:`~fedllm.models.base_checkpoint`)
and LoRA adapters (:mod:`~fedllm.models.lora`)."""

from fedllm.models.base_checkpoint import (
    BASE_FORMAT,
    file_sha256,
    load_base,
    load_base_model,
    save_base,
)
from fedllm.models.gpt import LORA_TARGETS, VOCAB, GPTArgs, TinyGPT, sequence_loss
from fedllm.models.lora import LoRALinear, LoRASpec, adapter_parameters, add_lora, merge_lora

__all__ = [
    "BASE_FORMAT",
    "LORA_TARGETS",
    "VOCAB",
    "GPTArgs",
    "LoRALinear",
    "LoRASpec",
    "TinyGPT",
    "adapter_parameters",
    "add_lora",
    "file_sha256",
    "load_base",
    "load_base_model",
    "merge_lora",
    "save_base",
    "sequence_loss",
]
