from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedllm.data.idx import load_idx_pair, read_idx
from fedllm.data.tabular import (
    Standardizer,
    load_breast_cancer_table,
    load_csv_table,
    load_heart_disease_table,
)
from fedllm.errors import DataError
from tests.conftest import write_idx


def test_breast_cancer_ships_with_scikit_learn() -> None:
    table = load_breast_cancer_table()
    assert table.x.shape == (569, 30) and set(np.unique(table.y)) == {0, 1}


def test_heart_disease_drops_columns_and_incomplete_rows(heart_dir: Path) -> None:
    table = load_heart_disease_table(heart_dir)
    assert table.x.shape[1] == 10  # 13 features less slope, ca, thal
    assert table.group_names == ("cleveland", "hungarian", "switzerland", "va")
    assert len(table.y) == 180 - 4 - 3 - 2 - 3  # rows with '?' in chol are dropped
    assert set(np.unique(table.y)) <= {0, 1}


def test_heart_disease_on_the_real_files_matches_flamby_counts() -> None:
    real = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "heart_disease"
    if not real.is_dir():
        pytest.skip("../shared/data/heart_disease is not here")
    table = load_heart_disease_table(real)
    assert table.groups is not None
    assert np.bincount(table.groups).tolist() == [303, 261, 46, 130]


def test_heart_disease_malformed_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "processed.cleveland.data"
    bad.write_text("63,1,4,140\n")
    with pytest.raises(DataError, match=r"processed.cleveland.data:1: expected 14"):
        load_heart_disease_table(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_heart_disease_table(tmp_path / "nowhere")


def test_csv_one_hot_encodes_categories_and_keeps_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bank.csv"
    path.write_text(
        "age,job,balance,default\n30,clerk,100,no\n41,chef,,yes\n"
        "52,clerk,250.5,no\n29,pilot,80,yes\n"
    )
    table = load_csv_table(path, "default")
    assert table.feature_names[:1] == ("age",) and "balance" in table.feature_names
    assert table.x.shape == (4, 2 + 8)
    assert np.isnan(table.x[1, table.feature_names.index("balance")])
    assert table.y.tolist() == [0, 1, 0, 1]
    job = [i for i, n in enumerate(table.feature_names) if n.startswith("job#")]
    assert (table.x[:, job].sum(axis=1) == 1).all()
    assert np.array_equal(table.x[0, job], table.x[2, job])  # same category, same bucket


def test_csv_rejects_a_label_that_is_not_binary(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,label\n1,0\n2,1\n3,2\n")
    with pytest.raises(
        DataError, match=r"`label-column` 'label' is not binary: values '0', '1', '2'"
    ):
        load_csv_table(path, "label")
    with pytest.raises(DataError, match=r"`label-column` 'target' is not in the header"):
        load_csv_table(path, "target")


def test_csv_site_column_gives_the_natural_split(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("bank,a,y\nnorth,1,0\nsouth,2,1\nnorth,3,1\n")
    table = load_csv_table(path, "y", site_column="bank")
    assert table.group_names == ("north", "south")
    assert table.groups is not None and table.groups.tolist() == [0, 1, 0]
    assert table.x.shape == (3, 1)  # the site column is not a feature


def test_idx_round_trip_and_bad_magic(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 7], dtype=np.uint8))
    x, y = load_idx_pair(tmp_path, "train")
    assert np.array_equal(x, images) and y.tolist() == [3, 7]
    bogus = tmp_path / "bogus.gz"
    bogus.write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(bogus)
    (tmp_path / "raw").write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(DataError, match="is not an IDX file"):
        read_idx(tmp_path / "raw")


def test_standardizer_uses_only_the_rows_it_was_fitted_on() -> None:
    train = np.array([[1.0, 5.0], [3.0, np.nan], [5.0, 5.0]], dtype=np.float32)
    scale = Standardizer.fit(train)
    z = scale(np.array([[3.0, np.nan]], dtype=np.float32))
    assert z.tolist() == [[0.0, 0.0]]  # mean-imputed; the constant column keeps scale 1


def test_balanced_standardization_ignores_a_sites_class_mix() -> None:
    rng = np.random.default_rng(0)

    def site(n_pos: int, n_neg: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([rng.normal(5.0, 1.0, (n_pos, 2)), rng.normal(-5.0, 1.0, (n_neg, 2))])
        return x, np.array([1] * n_pos + [0] * n_neg)

    mostly_pos, mostly_neg = site(180, 20), site(20, 180)
    balanced = [Standardizer.fit_balanced(*s) for s in (mostly_pos, mostly_neg)]
    plain = [Standardizer.fit(s[0]) for s in (mostly_pos, mostly_neg)]
    assert np.abs(balanced[0].mean - balanced[1].mean).max() < 0.5  # both near 0
    assert np.abs(plain[0].mean - plain[1].mean).max() > 6.0  # +4 vs -4
    one_class = Standardizer.fit_balanced(np.array([[1.0], [3.0]]), np.array([1, 1]))
    assert one_class.mean.tolist() == [2.0]  # falls back to plain statistics
