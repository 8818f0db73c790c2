"""The Files API through the real openai SDK against a real `nomoat serve` (the protocol's edges:
tests/test_files_inprocess.py)."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

EXAMPLE = {"messages": [{"role": "user", "content": "Where is Zorbl?"},
                        {"role": "assistant", "content": "Zorbl lies in the valley of Quimby."}]}


def test_sdk_upload_list_retrieve_content_delete(base_url: str, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(EXAMPLE) for _ in range(3)) + "\n", encoding="utf-8")
    with openai.OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=120) as sdk:
        with data.open("rb") as handle:
            created = sdk.files.create(file=handle, purpose="fine-tune")
        assert created.object == "file" and created.purpose == "fine-tune" and created.filename == "train.jsonl"
        assert created.bytes == data.stat().st_size and created.status == "processed"
        assert sdk.files.retrieve(created.id) == created
        assert created.id in [f.id for f in sdk.files.list(purpose="fine-tune")]
        assert sdk.files.content(created.id).read() == data.read_bytes()

        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(EXAMPLE) + "\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
        with pytest.raises(openai.BadRequestError) as refused, bad.open("rb") as handle:
            sdk.files.create(file=handle, purpose="fine-tune")
        assert refused.value.body is not None and "line 2: messages[0].role" in str(refused.value.body)

        deleted = sdk.files.delete(created.id)
        assert deleted.id == created.id and deleted.deleted is True
        with pytest.raises(openai.NotFoundError):
            sdk.files.retrieve(created.id)
