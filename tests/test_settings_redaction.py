"""Settings never show header values: ``extra_headers`` can carry a key (Azure's ``api-key``)."""

from __future__ import annotations

from cotmod import Settings


def test_repr_str_and_redacted_mask_header_values() -> None:
    s = Settings(base_url="https://x.openai.azure.com/openai/v1", model="m", extra_headers={"api-key": "SECRET-123", "x-route": "r1"}, api_key="KEY-456")
    for shown in (repr(s), str(s), repr(s.redacted()), f"{s!r}"):
        assert "SECRET-123" not in shown and "r1" not in shown and "KEY-456" not in shown, shown
        assert "api-key" in shown and "x-route" in shown  # the names are kept
    assert s.redacted()["extra_headers"] == {"api-key": "***", "x-route": "***"}
    assert s.extra_headers == {"api-key": "SECRET-123", "x-route": "r1"}  # the values themselves are intact
    assert Settings.model_validate(s.model_dump()).extra_headers["api-key"] == "SECRET-123"
