"""The README's rollout policy example is a complete, valid policy file.

Users wrote policies wrong in three ways by copying fragments; the README now shows one
whole file, and this test extracts it and runs it through the server's own validator and
the OpenAPI ``Policy`` schema, so the example cannot rot.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fleet_server.api.schemas_rollouts import rollout_components
from fleet_server.rollouts.policy import Policy, parse_policy

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_policy() -> dict[str, object]:
    """The JSON block that follows the ``policy-example`` marker in the README."""
    match = re.search(r"<!-- policy-example -->\s*```json\n(.*?)```", README.read_text(), re.S)
    assert match, "README has no <!-- policy-example --> json block"
    data = json.loads(match.group(1))
    assert isinstance(data, dict)
    return data


def test_readme_policy_is_valid_and_complete() -> None:
    data = readme_policy()
    policy = parse_policy(data)  # raises PolicyError naming the field when invalid
    assert policy.on_halt.action == "rollback"
    # Complete: every top-level policy field is written out (except the alternative to
    # explicit waves, which the README explains cannot be combined with them).
    assert set(Policy.__struct_fields__) - set(data) == {"exponential"}


def test_openapi_policy_schema_names_the_readme_fields() -> None:
    components = rollout_components()
    assert set(readme_policy()) <= set(components["Policy"]["properties"])
    assert {"Selector", "Wave", "FailureCriterion", "HaltAction"} <= set(components)
