"""Plain-text helpers: speech blocks, the by-speaker split, sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedllm.data.text import PROLOGUE, read_text, sequences, speeches, split_by_speaker
from fedllm.errors import ConfigError, DataError
from tests.text_data import play


def test_each_speaker_lands_at_exactly_one_site_and_all_text_is_kept() -> None:
    text = play(200).encode()
    sites = split_by_speaker(text, 3)
    assert len(sites) == 3
    speakers_at = [{s.speaker for s in speeches(t)} for _, t in sites]
    assert sum(len(s) for s in speakers_at) == 4  # disjoint
    assert set().union(*speakers_at) == {"ALICE", "BOB", "CAROL", "DAVE"}
    assert sum(len(t) for _, t in sites) == sum(len(s.text) for s in speeches(text))


def test_more_sites_than_speakers_is_refused() -> None:
    with pytest.raises(ConfigError, match="exceeds the 4 speakers"):
        split_by_speaker(play(50).encode(), 5)


def test_text_without_speaker_lines_is_refused_for_the_natural_split() -> None:
    with pytest.raises(DataError, match="NAME:"):
        speeches(b"just some prose\nwithout any speakers\n\nand another paragraph\n")


def test_sequences_do_not_overlap_and_drop_the_tail() -> None:
    seqs = sequences(bytes(range(23)), 4)  # windows of 5
    assert seqs.shape == (4, 5) and seqs.dtype == np.int64
    assert seqs.flatten().tolist() == list(range(20))


def test_missing_or_empty_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_text(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        read_text(tmp_path / "empty.txt")


def test_text_before_the_first_speaker_is_kept_as_its_own_speech() -> None:
    parts = speeches(b"ted the ship\n\nALICE:\nhello\n\nBOB:\nhi\n")
    assert [s.speaker for s in parts] == [PROLOGUE, "ALICE", "BOB"]
    assert parts[0].text.startswith(b"ted the ship")
