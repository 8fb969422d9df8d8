"""Factory CSV validation: every error found at once, with line and column."""

from __future__ import annotations

from datetime import date

from fleet_server.domain.device_rows import parse_device_csv


def test_valid_rows_are_normalised() -> None:
    parsed = parse_device_csv(
        "device_id,serial,production_date,channel,tags\n"
        "pi-1, SN1 ,2026-01-02,pre-production,b;a;a\n"
        "pi-2,,,,\n"
    )
    assert parsed.errors == []
    first, second = parsed.rows
    assert first["serial"] == "SN1"
    assert first["production_date"] == date(2026, 1, 2)
    assert first["tags"] == ["a", "b"]
    assert second["serial"] is None


def test_every_error_is_reported_with_line_and_column() -> None:
    parsed = parse_device_csv(
        "device_id,serial,production_date,activation_date,channel\n"
        "pi-1,SN1,2026-02-30,,production\n"
        "pi-1,SN2,,,production\n"
        "pi-3,SN1,2026-03-01,2026-01-01,lab\n"
        "pi-4,SN4,,,production,extra\n"
    )
    found = {(e.line, e.column) for e in parsed.errors}
    assert (2, "production_date") in found
    assert (3, "device_id") in found  # repeats line 2
    assert (4, "channel") in found
    assert (4, "activation_date") in found
    assert (5, None) in found  # too many values


def test_header_problems() -> None:
    assert "empty" in parse_device_csv("").errors[0].message
    assert "unknown column" in parse_device_csv("device_id,colour\n").errors[0].message
    assert parse_device_csv("serial\nx\n").errors[0].column == "device_id"
