"""Bad input stops before any training with one message naming the key/file and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedllm.cli import main


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "earlier"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"kept": true}')
    return run


def _fails(args: list[str], capsys: pytest.CaptureFixture[str], earlier: Path) -> str:
    out_dir = earlier.parent
    code = main(["simulate", "-c", f'out-dir="{out_dir}"', *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("fedllm: error: ")
    assert sorted(p.name for p in out_dir.iterdir()) == ["earlier"]  # nothing new, nothing lost
    assert (earlier / "metrics.json").read_text() == '{"kept": true}'
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", 'task="resnet"'], "unknown `task` 'resnet'"),
        (["-c", "target-epsilon=-1"], "`target-epsilon` must be > 0, got -1"),
        (["-c", "max-grad-norm=-0.5"], "`max-grad-norm` must be > 0, got -0.5 (0 = the task's"),
        (["-c", "num-sites=200"], "`num-sites` 200 is too many for 569 examples"),
        (
            ["-c", 'task="heart-disease"', "-c", 'data-path="/no/such/folder"'],
            "does not exist: /no/such/folder",
        ),
        (["-c", 'task="mnist"', "-c", 'data-path="/no/such/folder"'], "/no/such/folder"),
    ],
)
def test_bad_input_is_one_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], earlier_run: Path
) -> None:
    assert message in _fails(args, capsys, earlier_run)


def test_non_binary_label_names_file_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], earlier_run: Path
) -> None:
    data = tmp_path / "loans.csv"
    data.write_text("income,grade\n" + "".join(f"{i},{i % 3}\n" for i in range(50)))
    err = _fails(
        ["-c", 'task="csv"', "-c", f'data-path="{data}"', "-c", 'label-column="grade"'],
        capsys,
        earlier_run,
    )
    assert "loans.csv" in err and "`label-column` 'grade' is not binary" in err


def test_an_existing_run_name_is_never_overwritten(
    capsys: pytest.CaptureFixture[str], earlier_run: Path
) -> None:
    err = _fails(["-c", 'run-name="earlier"'], capsys, earlier_run)
    assert "already exists" in err


def test_federated_scaling_is_refused_for_a_task_with_fixed_scaling(
    mnist_dir: Path, capsys: pytest.CaptureFixture[str], earlier_run: Path
) -> None:
    err = _fails(
        [
            "-c",
            'task="mnist"',
            "-c",
            f'data-path="{mnist_dir}"',
            "-c",
            'feature-scaling="federated"',
        ],
        capsys,
        earlier_run,
    )
    assert "`feature-scaling` 'federated' is for tabular tasks" in err
