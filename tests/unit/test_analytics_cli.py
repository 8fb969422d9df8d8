"""``fleetctl analytics``: CSV in, tables or JSON out, clear errors for bad files."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fleet_server.analytics import AnalyticsInputError, csvio
from fleet_server.analytics.weibull import weibull_mle
from fleet_server.fleetctl.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["analytics", *args])
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


LIFE = "hours,status\n150,F\n340,F\n560,F\n800,S\n1130,F\n1720,S\n2470,F\n4210,F\n"


def test_weibull_json_is_the_library_fit(tmp_path: Path) -> None:
    csv = write(tmp_path, "life.csv", LIFE)
    code, out, err = run("weibull", "--csv", str(csv), "--json")
    assert code == 0, err
    data = json.loads(out)
    lib = weibull_mle(
        [150, 340, 560, 800, 1130, 1720, 2470, 4210],
        [True, True, True, False, True, False, True, True],
    )
    assert data["beta"] == pytest.approx(lib.beta)
    assert data["eta"] == pytest.approx(lib.eta)
    assert data["n_censored"] == 2
    assert data["b_life_ci"][0] < data["b_life"] < data["b_life_ci"][1]


def test_weibull_table_for_people(tmp_path: Path) -> None:
    csv = write(tmp_path, "life.csv", LIFE)
    code, out, _ = run("weibull", "--csv", str(csv), "--b", "1")
    assert code == 0
    assert "beta (shape)" in out
    assert "B1 life" in out
    assert "LR interval" in out


def test_weibull_censored_column_with_ones_means_censored(tmp_path: Path) -> None:
    csv = write(tmp_path, "c.csv", "time,censored,qty\n100,0,2\n200,0,1\n300,1,10\n400,0,1\n")
    code, out, err = run("weibull", "--csv", str(csv), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["n_failures"] == 4
    assert data["n_censored"] == 10


def test_rank_regression_from_the_command_line(tmp_path: Path) -> None:
    csv = write(tmp_path, "six.csv", "time\n16\n34\n53\n75\n93\n120\n")
    code, out, _ = run(
        "weibull", "--csv", str(csv), "--method", "rr", "--regression", "y_on_x", "--json"
    )
    assert code == 0
    assert json.loads(out)["beta"] == pytest.approx(1.42696711, abs=1e-6)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("hours,status\n150,F\n340,maybe\n", "line 3, column 'status': 'maybe'"),
        ("hours,status\n150,F\nabc,F\n", "line 3, column 'hours': 'abc' is not a number"),
        ("hours,status\n150,F\n-4,F\n", "line 3, column 'hours'"),
        ("widget,status\n150,F\n", "no column for the time"),
        ("hours,status\n150,F\n200\n", "line 3: 1 fields, the header has 2"),
        ("", "empty file"),
        ("hours,status\n150,F\n", "at least 2 failures"),
    ],
)
def test_bad_csv_gives_one_clear_error_line(tmp_path: Path, content: str, expected: str) -> None:
    csv = write(tmp_path, "bad.csv", content)
    code, out, err = run("weibull", "--csv", str(csv))
    assert code == 2
    assert expected in err
    assert "Traceback" not in err + out


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = run("weibull", "--csv", str(tmp_path / "nope.csv"))
    assert code == 2
    assert "no such file" in err


def test_time_column_override(tmp_path: Path) -> None:
    csv = write(tmp_path, "x.csv", "km_driven,event\n1000,1\n2500,1\n4000,0\n6000,1\n")
    code, _, err = run("weibull", "--csv", str(csv))
    assert code == 2
    assert "--time-col" in err
    code, out, err = run("weibull", "--csv", str(csv), "--time-col", "km_driven", "--json")
    assert code == 0, err
    assert json.loads(out)["n_failures"] == 3


def claims_csv(tmp_path: Path) -> Path:
    lines = ["batch,months_in_service,month,units,claims"]
    # Eight batches, 6 months each; batch B5 claims about 4x the others.
    normal = [3, 2, 4, 3, 2, 3]
    for b in range(8):
        for age in range(6):
            claims = normal[(age + b) % 6] * (4 if b == 5 else 1)
            lines.append(f"B{b},{age},{b + age},1000,{claims}")
    return write(tmp_path, "claims.csv", "\n".join(lines) + "\n")


def test_claims_flags_and_ranks_the_bad_batch(tmp_path: Path) -> None:
    code, out, err = run("claims", "--csv", str(claims_csv(tmp_path)), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["flagged"] == ["B5"]
    assert data["groups"][0]["group"] == "B5"
    assert data["groups"][0]["cusum"]["alarm_period"] is not None
    code, out, _ = run("claims", "--csv", str(claims_csv(tmp_path)))
    assert code == 0
    assert "B5" in out
    assert "1 of 8 groups flagged" in out


def test_claims_without_a_failures_column_names_the_option(tmp_path: Path) -> None:
    csv = write(tmp_path, "c.csv", "batch,units\nB1,10\nB2,20\n")
    code, _, err = run("claims", "--csv", str(csv))
    assert code == 2
    assert "--failures-col" in err


def test_rates_by_two_columns(tmp_path: Path) -> None:
    csv = write(
        tmp_path,
        "r.csv",
        "model,hw_rev,device_days,faults\nA,1,1000,5\nA,2,1000,1\nB,1,2000,4\nA,1,1000,5\n",
    )
    code, out, err = run("rates", "--csv", str(csv), "--by", "model", "--by", "hw_rev", "--json")
    assert code == 0, err
    data = json.loads(out)
    rates = {g["group"]: g["rate"] for g in data["groups"]}
    assert rates == pytest.approx({"A/1": 0.005, "A/2": 0.001, "B/1": 0.002})


def test_growth_by_release_and_by_failure_times(tmp_path: Path) -> None:
    rel = write(
        tmp_path, "rel.csv", "version,device_days,failures\n1.0,1000,40\n1.1,1200,30\n1.2,1500,20\n"
    )
    code, out, err = run("growth", "--csv", str(rel), "--json")
    assert code == 0, err
    assert json.loads(out)["verdict"] == "growth"
    times = write(tmp_path, "t.csv", "time\n2.7\n10.3\n12.5\n30.6\n57\n61.3\n80\n109.5\n")
    code, out, err = run("growth", "--csv", str(times), "--end-time", "150", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["model"] == "crow_amsaa"
    assert data["termination"] == "time"
    code, out, _ = run("growth", "--csv", str(times))
    assert code == 0
    assert "Crow-AMSAA" in out


def test_every_analytics_command_has_help() -> None:
    for cmd in ("weibull", "claims", "rates", "growth"):
        code, out, _ = run(cmd, "--help")
        assert code == 0
        assert "--csv" in out
        assert "--json" in out


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(alphabet=st.sampled_from(list('0123456789.,;-"\n tFSabcinfNaE')), max_size=120),
    header=st.sampled_from(["time,status\n", "hours;failed\n", "t\tcensored\n", ""]),
)
def test_arbitrary_csv_text_never_crashes_the_readers(
    tmp_path: Path, text: str, header: str
) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_text(header + text)
    # Anything else than a clear AnalyticsInputError (a traceback) fails the test.
    for reader in (csvio.read_life_data, csvio.read_counts, csvio.read_failure_times):
        with contextlib.suppress(AnalyticsInputError):
            reader(path)
    with contextlib.suppress(AnalyticsInputError):
        data = csvio.read_life_data(path)
        weibull_mle(data.times, data.failed, data.counts)
