"""Fixtures for the `ml` tests."""

from pathlib import Path

import pytest

# Published reference data (pROC's aSAH, MRMCaov's VanDyke) lives beside the repository, in the
# shared folder, not in it: it is GPL-3 data we test against but do not ship.
REFERENCE_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "reference").resolve()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(
            f"reference data not found at {REFERENCE_DIR} (the shared folder beside the repo)"
        )
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def asah_csv(reference_dir: Path) -> Path:
    path = reference_dir / "asah.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def vandyke_csv(reference_dir: Path) -> Path:
    path = reference_dir / "vandyke.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path
