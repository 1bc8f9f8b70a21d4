"""`-c KEY=VALUE` overrides: read as `flwr run --run-config` reads them, and every malformed
one ends in one line naming the key and the value (exit 2), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedllm.cli import main
from fedllm.cli.overrides import parse_overrides
from fedllm.errors import ConfigError


@pytest.mark.parametrize(
    ("arg", "named"),
    [
        ("num-sites=abc", "-c num-sites=abc: abc is not a number"),
        ("task=mnist", "-c task=mnist: mnist is not a number, true/false or a quoted string"),
        ("num-sites=[1,2]", "-c num-sites=[1,2]: `num-sites` takes one number"),
        ("seed=1979-05-27", "-c seed=1979-05-27: `seed` takes one number"),
        ("num-sites", "-c 'num-sites' is not KEY=VALUE"),
        ("=3", "-c '=3' is not KEY=VALUE"),
        ("seed=1 rounds", "-c 'seed=1 rounds': 'rounds' is not KEY=VALUE"),
        ("a/b=1", "-c a/b=1: 'a/b' is not a run-config key"),
        ("/no/such/overrides.toml", "-c /no/such/overrides.toml: cannot read it"),
    ],
)
def test_a_malformed_override_is_one_line_naming_it(
    arg: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "-c", f'out-dir="{tmp_path}"', "-c", arg]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fedllm: error: ") and captured.err.count("\n") == 1
    assert named in captured.err
    assert "Traceback" not in captured.out + captured.err
    assert list(tmp_path.iterdir()) == []  # nothing ran


def test_pretrain_reads_its_overrides_the_same_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "public.txt"
    text.write_text("x" * 500)
    argv = ["pretrain", "--text", str(text), "--out", str(tmp_path / "b.pt"), "-c", "lm-width=w"]
    assert main(argv) == 2
    assert "-c lm-width=w: w is not a number" in capsys.readouterr().err
    assert not (tmp_path / "b.pt").exists()


def test_values_are_toml_and_a_later_key_wins() -> None:
    overrides = parse_overrides(
        ["num-sites=3", 'task="heart-disease" dp=false', "run-name='a b'", "num-sites=5"]
    )
    assert overrides == {"num-sites": 5, "task": "heart-disease", "dp": False, "run-name": "a b"}
    assert type(parse_overrides(["target-epsilon=2.5"])["target-epsilon"]) is float


def test_a_toml_file_of_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('num-sites = 6\ntask = "mnist"\n')
    assert parse_overrides([str(path), "num-sites=2"]) == {"num-sites": 2, "task": "mnist"}
    path.write_text("num-sites = \n")
    with pytest.raises(ConfigError, match=f"-c {path}: not valid TOML"):
        parse_overrides([str(path)])


def test_an_unknown_key_is_named_by_the_run_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "-c", f'out-dir="{tmp_path}"', "-c", "num-site=4"]) == 2
    assert "unknown run-config key(s): num-site" in capsys.readouterr().err
