"""The README's ``[support]`` example is a valid configuration: it loads into the server
settings and parses into calendars, policies and vendors (so the example cannot rot)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from fleet_server.config import Settings
from fleet_server.domain.sla_clock import Target
from fleet_server.services.sla import support_config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_support_config_is_valid() -> None:
    match = re.search(r"<!-- support-config -->\s*```toml\n(.*?)```", README.read_text(), re.S)
    assert match, "README has no <!-- support-config --> toml block"
    settings = Settings.model_validate(tomllib.loads(match.group(1)))
    cfg = support_config(settings.support)
    assert [p.name for p in cfg.policies] == ["p1-24x7", "business"]
    business = cfg.policies[1]
    assert business.targets[Target.RESOLUTION] == 40 * 3600
    assert not business.reset_on_reopen
    office = cfg.calendar("berlin-office")
    assert office.tz == "Europe/Berlin"
    assert len(office.hours[4]) == 2  # Friday has a lunch break
    assert cfg.vendors["maps-provider"].target_s == 8 * 3600
