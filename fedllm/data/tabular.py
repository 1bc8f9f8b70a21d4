"""Loaders for tabular sources: scikit-learn's breast cancer, UCI heart disease, any CSV.

Loaders return raw feature matrices; anything fitted to data (standardization, imputation)
happens per site in :class:`Standardizer`, so no site's values ever shape another's inputs.
"""

from __future__ import annotations

import csv
import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedllm.errors import DataError

HEART_CENTERS = ("cleveland", "hungarian", "switzerland", "va")
# UCI processed.*.data columns; slope, ca, thal are dropped as in FLamby Fed-Heart-Disease.
HEART_COLUMNS = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg",
    "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num",
)  # fmt: skip
HEART_DROPPED = ("slope", "ca", "thal")
MISSING = {"", "?", "na", "nan", "null", "none"}


@dataclass(frozen=True)
class Table:
    """Features (N, F) float32 (NaN = missing), binary labels (N,), optional group per row."""

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] = ()


def load_breast_cancer_table() -> Table:
    """The Wisconsin diagnostic breast cancer data shipped with scikit-learn (569 x 30)."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return Table(
        x=np.asarray(bunch.data, dtype=np.float32),
        y=np.asarray(bunch.target, dtype=np.int64),
        feature_names=tuple(str(n) for n in bunch.feature_names),
    )


def read_heart_center(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One UCI ``processed.<center>.data`` file: drop slope/ca/thal, drop rows with ``?``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"heart-disease file not found: {path}")
    keep = [i for i, c in enumerate(HEART_COLUMNS) if c not in HEART_DROPPED and c != "num"]
    rows_x, rows_y = [], []
    with path.open(newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(HEART_COLUMNS):
                raise DataError(
                    f"{path}:{line_no}: expected {len(HEART_COLUMNS)} comma-separated values "
                    f"(UCI processed format), got {len(row)}"
                )
            cells = [row[i].strip() for i in [*keep, len(HEART_COLUMNS) - 1]]
            if any(cell == "?" for cell in cells):
                continue
            try:
                values = [float(cell) for cell in cells]
            except ValueError as err:
                raise DataError(f"{path}:{line_no}: non-numeric value ({err})") from err
            rows_x.append(values[:-1])
            rows_y.append(1 if values[-1] > 0 else 0)
    if not rows_x:
        raise DataError(f"{path}: no complete rows")
    return np.asarray(rows_x, dtype=np.float32), np.asarray(rows_y, dtype=np.int64)


def load_heart_disease_table(path: str | Path) -> Table:
    """A directory with the four center files (one group each), or one center file."""
    path = Path(path)
    if path.is_file():
        x, y = read_heart_center(path)
        name = path.name.removeprefix("processed.").removesuffix(".data")
        return Table(x, y, _heart_features(), np.zeros(len(y), dtype=np.int64), (name,))
    if not path.is_dir():
        raise DataError(f"`data-path` for heart-disease does not exist: {path!s}")
    files = [(c, path / f"processed.{c}.data") for c in HEART_CENTERS]
    present = [(c, f) for c, f in files if f.is_file()]
    if not present:
        raise DataError(f"{path}: no processed.<center>.data files ({', '.join(HEART_CENTERS)})")
    xs, ys, groups = [], [], []
    for index, (_, file) in enumerate(present):
        x, y = read_heart_center(file)
        xs.append(x)
        ys.append(y)
        groups.append(np.full(len(y), index, dtype=np.int64))
    return Table(
        np.concatenate(xs),
        np.concatenate(ys),
        _heart_features(),
        np.concatenate(groups),
        tuple(c for c, _ in present),
    )


def _heart_features() -> tuple[str, ...]:
    return tuple(c for c in HEART_COLUMNS if c not in HEART_DROPPED and c != "num")


def load_csv_table(
    path: str | Path,
    label_column: str,
    *,
    site_column: str = "",
    categorical_buckets: int = 8,
) -> Table:
    """Any CSV with a header and a binary label column.

    Numeric columns stay numeric (missing -> NaN, imputed per site later). Other columns are
    one-hot encoded into ``categorical_buckets`` hashed buckets: every site gets the same
    columns without sharing its category values with anyone (collisions are the price).
    A directory of CSVs gives one group per file (the natural split).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise DataError(f"{path}: no *.csv files")
        header, rows, groups = None, [], []
        for index, file in enumerate(files):
            file_header, file_rows = _read_csv(file)
            if header is not None and file_header != header:
                raise DataError(f"{file}: header differs from {files[0]}")
            header = file_header
            rows.extend(file_rows)
            groups.extend([index] * len(file_rows))
        assert header is not None
        group_names = tuple(f.stem for f in files)
        group_array: np.ndarray | None = np.asarray(groups, dtype=np.int64)
        source = str(path)
    else:
        header, rows = _read_csv(path)
        group_array, group_names, source = None, (), str(path)
    if not label_column:
        raise DataError("task `csv` needs `label-column` (the name of the binary label column)")
    if label_column not in header:
        raise DataError(f"{source}: `label-column` {label_column!r} is not in the header {header}")
    label_index = header.index(label_column)
    y = _binary_labels([r[label_index] for r in rows], source, label_column)
    if site_column:
        if site_column not in header:
            raise DataError(f"{source}: `site-column` {site_column!r} is not in the header")
        site_index = header.index(site_column)
        values = [r[site_index].strip() for r in rows]
        group_names = tuple(sorted(set(values)))
        group_array = np.asarray([group_names.index(v) for v in values], dtype=np.int64)
    skip = {label_index} | ({header.index(site_column)} if site_column else set())
    columns, names = [], []
    for j, name in enumerate(header):
        if j in skip:
            continue
        cells = [r[j].strip() for r in rows]
        numeric = _as_numeric(cells)
        if numeric is not None:
            columns.append(numeric[:, None])
            names.append(name)
        else:
            columns.append(_hashed_one_hot(cells, categorical_buckets))
            names.extend(f"{name}#{b}" for b in range(categorical_buckets))
    if not columns:
        raise DataError(f"{source}: no feature columns besides the label")
    x = np.concatenate(columns, axis=1).astype(np.float32)
    return Table(x, y, tuple(names), group_array, group_names)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            rows = [row for row in reader if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from err
    if not header:
        raise DataError(f"{path}: empty file (a header row is required)")
    for line_no, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{line_no}: {len(row)} values, header has {len(header)}")
    if not rows:
        raise DataError(f"{path}: no data rows")
    return header, rows


def _as_numeric(cells: list[str]) -> np.ndarray | None:
    out = np.empty(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):
        if cell.lower() in MISSING:
            out[i] = math.nan
            continue
        try:
            out[i] = float(cell)
        except ValueError:
            return None
    return out


def _hashed_one_hot(cells: list[str], buckets: int) -> np.ndarray:
    out = np.zeros((len(cells), buckets), dtype=np.float32)
    for i, cell in enumerate(cells):
        digest = hashlib.sha256(cell.lower().encode()).digest()
        out[i, int.from_bytes(digest[:4], "big") % buckets] = 1.0
    return out


_TRUE = {"1", "1.0", "true", "yes", "y", "positive", "pos"}
_FALSE = {"0", "0.0", "false", "no", "n", "negative", "neg"}


def _binary_labels(cells: list[str], source: str, column: str) -> np.ndarray:
    values = sorted({c.strip().lower() for c in cells})
    if any(v in MISSING for v in values):
        raise DataError(f"{source}: `label-column` {column!r} has missing values")
    if set(values) <= _TRUE | _FALSE and not (set(values) & _TRUE & _FALSE):
        return np.asarray([1 if c.strip().lower() in _TRUE else 0 for c in cells], np.int64)
    shown = ", ".join(repr(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
    raise DataError(
        f"{source}: `label-column` {column!r} is not binary: values {shown} "
        "(expected 0/1, true/false or yes/no)"
    )


class Standardizer:
    """Feature scaling: ``(x - mean) / std``, missing values imputed with the mean (0 after
    scaling), constant columns kept at scale 1.

    Fitted either on one site's own training rows (``feature-scaling = "site"``: nothing
    leaves the site) or from federation-wide moments (``"federated"``: see
    :class:`FeatureMoments`).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.nan_to_num(np.asarray(mean, dtype=np.float64), nan=0.0).astype(np.float32)
        std = np.nan_to_num(np.asarray(std, dtype=np.float64), nan=1.0)
        self.std = np.where(std > 1e-8, std, 1.0).astype(np.float32)

    @classmethod
    def fit(cls, x_train: np.ndarray) -> Standardizer:
        """Plain standardization: the rows' mean and standard deviation."""
        return FeatureMoments.of(x_train).standardizer()

    @classmethod
    def fit_balanced(cls, x_train: np.ndarray, y_train: np.ndarray) -> Standardizer:
        """Class-balanced standardization: centre on the mean of the per-class means, scale by
        the root-mean-square deviation from that centre with every class weighted equally.

        Under label skew (sites differ in class mix, not in what each class looks like) these
        statistics are about the same at every site, so the same raw value maps to about the
        same input everywhere, as with pooled statistics, while nothing leaves the site. Plain
        per-site means shift with the site's class mix (breast cancer, 4 Dirichlet sites,
        epsilon 1: 0.874 plain vs 0.956 balanced, benchmarks/explore.py, 3 seeds).
        """
        classes = [c for c in np.unique(y_train) if np.any(y_train == c)]
        if len(classes) < 2:
            return cls.fit(x_train)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled below
            centre = np.nanmean(
                [np.nanmean(x_train[y_train == c], axis=0) for c in classes], axis=0
            )
            spread = np.nanmean(
                [np.nanmean((x_train[y_train == c] - centre) ** 2, axis=0) for c in classes], axis=0
            )
        return cls(centre, np.sqrt(spread))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z: np.ndarray = np.nan_to_num((x - self.mean) / self.std, nan=0.0)
        return z.astype(np.float32)


@dataclass(frozen=True)
class FeatureMoments:
    """Per-feature count, sum and sum of squares of non-missing values: what a site releases
    for federated scaling. Sums add across sites; only the pooled totals are used."""

    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> FeatureMoments:
        present = ~np.isnan(x)
        values = np.where(present, x, 0.0).astype(np.float64)
        return cls(
            present.sum(axis=0).astype(np.float64), values.sum(axis=0), (values**2).sum(axis=0)
        )

    def __add__(self, other: FeatureMoments) -> FeatureMoments:
        if self.count.shape != other.count.shape:
            raise DataError(
                f"feature moments cover {self.count.shape[0]} and {other.count.shape[0]} "
                "features: the sites' data do not share one schema"
            )
        return FeatureMoments(
            self.count + other.count, self.total + other.total, self.total_sq + other.total_sq
        )

    def standardizer(self) -> Standardizer:
        with np.errstate(all="ignore"):
            mean = self.total / self.count
            var = np.maximum(self.total_sq / self.count - mean**2, 0.0)
        return Standardizer(mean, np.sqrt(var))
