"""Health signals are declared once, on ``protocol.Sample``; everything else follows.

These tests fail when a derived place (README table, telemetry columns, API schema,
ingest, doctor) and the declaration disagree, so adding a signal cannot half-happen.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.doctor import SIGNALS_BY_NAME, render
from fleet_server.api.schemas import TelemetryOut
from fleet_server.db.models import SIGNAL_COLUMN_TYPES, TelemetrySample
from fleet_server.services.telemetry_rows import VITALS, sample_columns, sample_row
from protocol import SIGNALS, Sample
from protocol.signals import BITS, format_value, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"
NAMES = [s.name for s in SIGNALS]


def test_every_sample_field_but_ts_and_custom_is_a_declared_signal() -> None:
    assert [f for f in Sample.__struct_fields__ if f not in ("ts", "custom")] == NAMES
    for s in SIGNALS:
        assert s.label
        assert s.source
        assert s.description
        assert s.kind in (float, int, bool)


def test_readme_signals_table_is_the_declaration() -> None:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- signals:begin[^\n]*-->\n(.*?)<!-- signals:end -->", text, re.S)
    assert found, "README.md lost its <!-- signals:begin --> ... <!-- signals:end --> markers"
    expected = markdown_table(SIGNALS)
    assert found.group(1) == expected, (
        "README.md's signals table differs from protocol.Sample; replace it with:\n" + expected
    )


def test_telemetry_columns_are_generated_from_the_declaration() -> None:
    columns = TelemetrySample.__table__.columns
    assert [c.name for c in columns] == ["device_key", "ts", *NAMES, "custom"]
    for s in SIGNALS:
        assert isinstance(columns[s.name].type, SIGNAL_COLUMN_TYPES[s.kind])
        assert columns[s.name].nullable


def test_ingest_stores_every_signal_in_its_column() -> None:
    assert list(VITALS) == NAMES
    sample = Sample(ts=5.0, cpu_pct=12.5, undervoltage=True, custom={"fan": 0.5})
    row = sample_row(7, sample)
    assert row == {
        "device_key": 7,
        "ts": 5.0,
        **dict.fromkeys(NAMES),
        "cpu_pct": 12.5,
        "undervoltage": True,
        "custom": {"fan": 0.5},
    }
    assert set(row) == {c.name for c in TelemetrySample.__table__.columns}


def test_api_telemetry_schema_describes_every_signal() -> None:
    fields = TelemetryOut.model_fields
    assert list(fields) == ["ts", *NAMES, "custom"]
    for s in SIGNALS:
        assert fields[s.name].title == s.label
        assert fields[s.name].default is None
    out = TelemetryOut.model_validate({"ts": 0, "temp_c": 51.5, "throttled": 5})
    assert (out.temp_c, out.throttled, out.cpu_pct) == (51.5, 5, None)  # type: ignore[attr-defined]


def test_doctor_shows_each_signal_with_its_declared_label_and_unit() -> None:
    assert list(SIGNALS_BY_NAME) == NAMES
    temp, throttled = SIGNALS_BY_NAME["temp_c"], SIGNALS_BY_NAME["throttled"]
    assert format_value(temp, 67.123) == "67.12 °C"
    assert format_value(SIGNALS_BY_NAME["mem_pct"], 41.0) == "41%"
    assert throttled.unit == BITS
    assert format_value(throttled, 0x50005) == "0x50005"
    report = {
        "signals": {"temp_c": {"value": 67.0, "verdict": "ok", "note": ""}},
        "unavailable": {"fan_rpm": "no hwmon fan sensor"},
        "problems": [],
        "warnings": [],
        "summary": "ok",
    }
    text = render(report)
    assert "SoC temperature" in text
    assert "67 °C" in text
    assert "fan speed" in text


def test_a_new_signal_keeps_the_wire_compatible_both_ways() -> None:
    """Signals are optional: an older agent's batch (schema 1.0, no Wi-Fi field) is
    accepted, and a sample without a reading sends no key at all, so an older server
    never sees the new field from a device that lacks the source."""
    from protocol import Telemetry, decode, encode, topic

    old = (
        b'{"v":"1.0","device_id":"pi-1","boot_id":"b","seq":1,"ts":5.0,'
        b'"samples":[{"ts":5.0,"cpu_pct":3.0}]}'
    )
    (sample,) = decode(topic("pi-1", "telemetry"), old).samples
    assert sample.wifi_signal_dbm is None
    assert b"wifi_signal_dbm" not in encode(
        Telemetry(device_id="pi-1", boot_id="b", seq=2, ts=6.0, samples=[Sample(ts=6.0)])
    )
    new = Sample(ts=6.0, wifi_signal_dbm=-58.0)
    wire = encode(Telemetry(device_id="pi-1", boot_id="b", seq=3, ts=6.0, samples=[new]))
    assert decode(topic("pi-1", "telemetry"), wire).samples == [new]


def test_sample_columns_are_the_rows_of_sample_row_column_by_column() -> None:
    samples = [
        Sample(ts=5.0, cpu_pct=12.5, undervoltage=True, custom={"fan": 0.5}),
        Sample(ts=6.0, cpu_pct=13.0, mem_pct=40.0),
    ]
    columns = sample_columns([7, 8], [s.ts for s in samples], samples)
    rows = [sample_row(k, s) for k, s in zip([7, 8], samples, strict=True)]
    # A column no sample has a value for is left out: it is NULL in every row.
    assert set(columns) == {"device_key", "ts", "cpu_pct", "mem_pct", "undervoltage", "custom"}
    for name in {c.name for c in TelemetrySample.__table__.columns}:
        assert columns.get(name, [None, None]) == [row[name] for row in rows], name
