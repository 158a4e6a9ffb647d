"""The terms of service, versioned: one plain-text file per version, named by the day it took
effect (`YYYY-MM-DD.txt`, which is its id); the newest is current. The versions Kyma ships
are in this package; an operator publishes new terms by pointing `KYMA_TERMS_DIR` at a
directory of such files (read once at start-up).

What an account accepted is recorded on the account (`accounts/terms.py`): at sign-up, when the
person accepts explicitly, and — since the terms say continued use means acceptance — the
first use under a newer version, once.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import resources


@dataclass(frozen=True)
class TermsVersion:
    version: str
    published_at: datetime
    text: str


class TermsCatalogue:
    def __init__(self, versions: list[TermsVersion]) -> None:
        if not versions:
            raise ValueError("no terms of service: at least one version is needed")
        self._versions = sorted(versions, key=lambda v: v.published_at)
        self._by_id = {v.version: v for v in self._versions}

    @classmethod
    def packaged(cls) -> TermsCatalogue:
        folder = resources.files(__package__)
        return cls(
            [
                _version(entry.name, entry.read_text(encoding="utf-8"))
                for entry in folder.iterdir()
                if entry.name.endswith(".txt")
            ]
        )

    @classmethod
    def from_directory(cls, path: pathlib.Path) -> TermsCatalogue:
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"{path}: no terms of service (YYYY-MM-DD.txt files) in it")
        return cls([_version(file.name, file.read_text(encoding="utf-8")) for file in files])

    @property
    def current(self) -> TermsVersion:
        return self._versions[-1]

    def get(self, version: str) -> TermsVersion | None:
        return self._by_id.get(version)


def _version(name: str, text: str) -> TermsVersion:
    stem = name.removesuffix(".txt")
    try:
        day = date.fromisoformat(stem)
    except ValueError:
        raise ValueError(
            f"terms file {name!r}: the name must be the day it takes effect, YYYY-MM-DD.txt"
        ) from None
    return TermsVersion(
        version=stem,
        published_at=datetime(day.year, day.month, day.day, tzinfo=UTC),
        text=text.strip() + "\n",
    )
