"""Data: loaders for real formats and partitioners that split rows among sites."""

from fedllm.data.idx import load_idx_pair, read_idx
from fedllm.data.partition import PARTITIONERS, PartitionRequest, label_skew, partition
from fedllm.data.tabular import (
    Standardizer,
    Table,
    load_breast_cancer_table,
    load_csv_table,
    load_heart_disease_table,
)

__all__ = [
    "PARTITIONERS",
    "PartitionRequest",
    "Standardizer",
    "Table",
    "label_skew",
    "load_breast_cancer_table",
    "load_csv_table",
    "load_heart_disease_table",
    "load_idx_pair",
    "partition",
    "read_idx",
]
