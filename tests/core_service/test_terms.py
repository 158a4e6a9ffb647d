"""The versioned terms of service (`core_service/terms`)."""

from __future__ import annotations

import pytest

from core_service.terms import TermsCatalogue


def test_the_packaged_terms_are_the_seed_with_its_date() -> None:
    terms = TermsCatalogue.packaged()
    assert terms.current.version == "2026-04-07"
    assert terms.current.text.startswith("Terms of Service\n\nLast updated: April 7, 2026")
    assert terms.get("2026-04-07") is terms.current and terms.get("1999-01-01") is None


def test_the_newest_file_of_a_directory_is_current(tmp_path) -> None:
    with pytest.raises(ValueError, match="no terms"):
        TermsCatalogue.from_directory(tmp_path)
    (tmp_path / "2026-12-01.txt").write_text("new")
    (tmp_path / "2026-04-07.txt").write_text("old")
    assert TermsCatalogue.from_directory(tmp_path).current.text == "new\n"
    (tmp_path / "latest.txt").write_text("x")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        TermsCatalogue.from_directory(tmp_path)
