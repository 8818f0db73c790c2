"""docs/chat-formats.md lists every chat format nomoat knows, and names no format that is gone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nomoat.formats import formats

pytestmark = pytest.mark.fast

DOC = Path(__file__).resolve().parent.parent / "docs" / "chat-formats.md"


def test_the_family_table_lists_every_format() -> None:
    listed = re.findall(r"^\| `([^`]+)` \|", DOC.read_text(), re.M)
    assert sorted(listed) == sorted(f.name for f in formats())
