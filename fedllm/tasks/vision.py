"""MNIST-format image classification with a small DP-friendly CNN (tanh, no BatchNorm).

Any data set in MNIST's IDX layout (Fashion-MNIST, KMNIST) works through `data-path`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedllm.config import RunConfig, TrainingDefaults
from fedllm.data.idx import load_idx_pair
from fedllm.errors import DataError
from fedllm.tasks.base import Source, Task

# Fixed scaling (MNIST's training-set mean and std): nothing is fitted to any site's data.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class SmallCNN(nn.Module):
    """The CNN of Papernot et al. 2021 / Opacus's MNIST example (26k parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 8, stride=2, padding=3),  # (B, 16, 14, 14)
            nn.Tanh(),
            nn.MaxPool2d(2, 1),  # (B, 16, 13, 13)
            nn.Conv2d(16, 32, 4, stride=2),  # (B, 32, 5, 5)
            nn.Tanh(),
            nn.MaxPool2d(2, 1),  # (B, 32, 4, 4)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, C)
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


class MnistMLP(nn.Module):
    """A one-hidden-layer tanh MLP on the flattened image (``hidden-units`` > 0): 795 h + 10
    parameters, e.g. 1,000,120 at h = 1258."""

    def __init__(self, hidden_units: int, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden_units),
            nn.Tanh(),
            nn.Linear(hidden_units, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, C)
        return self.layers(x)  # type: ignore[no-any-return]


class Mnist(Task):
    name = "mnist"
    num_classes = 10
    # benchmarks/explore.py, 4 Dirichlet sites at epsilon 2 (seed 0): 8 rounds 0.963; 5 rounds
    # 0.959 and 0.955; 3 rounds 0.947 (2 local epochs: 0.958); batch 1024 at rate 6: 0.942.
    defaults = TrainingDefaults(
        num_server_rounds=8, local_epochs=1, batch_size=512, learning_rate=4.0, max_grad_norm=1.0
    )

    def build_model(self, cfg: RunConfig, input_shape: tuple[int, ...]) -> nn.Module:
        if tuple(input_shape) != (1, 28, 28):
            raise DataError(f"task `mnist` expects 28x28 images, got shape {input_shape}")
        torch.manual_seed(cfg.seed)
        if cfg.hidden_units:  # an MLP instead of the CNN
            return MnistMLP(cfg.hidden_units, self.num_classes)
        return SmallCNN(self.num_classes)

    def load_source(self, cfg: RunConfig, path: str) -> Source:
        if not path:
            raise DataError(
                "task `mnist` needs `data-path`: a folder with "
                "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"
            )
        train_x, train_y = load_idx_pair(path, "train")
        test_x, test_y = load_idx_pair(path, "t10k")
        for name, labels in (("train", train_y), ("t10k", test_y)):
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise DataError(f"{path}: {name} labels outside 0..{self.num_classes - 1}")
        return Source(_images(train_x), train_y, test=(_images(test_x), test_y))


def _images(raw: np.ndarray) -> np.ndarray:  # (N, 28, 28) uint8 -> (N, 1, 28, 28) float32
    return ((raw.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None]
