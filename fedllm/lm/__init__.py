"""The language model outside the federation: pretraining a base centrally on public text
(:mod:`~fedllm.lm.pretrain`) and sampling from a base or a fine-tuned run
(:mod:`~fedllm.lm.generate`). The model itself is :mod:`fedllm.models.gpt`, its base file
:mod:`fedllm.models.base_checkpoint`, the federated task :mod:`fedllm.tasks.text`."""

from fedllm.lm.generate import generate, load_trained
from fedllm.lm.pretrain import Pretraining, pretrain

__all__ = ["Pretraining", "generate", "load_trained", "pretrain"]
