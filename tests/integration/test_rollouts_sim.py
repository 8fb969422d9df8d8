"""Staged rollouts, tick-driven, over 1,000 simulated devices built from the real agent
core, through the server's real ingest path (see ``tests/support/sim_fleet.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import Bundle, Device, Execution
from fleet_server.db.rollout_models import Rollout
from fleet_server.errors import FleetError
from fleet_server.migrations import upgrade_to_head
from fleet_server.rollouts.lifecycle import IllegalTransitionError, transition
from fleet_server.services import rollouts as service
from fleet_server.services.audit import Actor
from fleet_server.services.rollouts_explain import explain_device
from tests.support.sim_fleet import SimFleet, add_bundle, register_fleet

OPS = Actor("ops", "operator")
ADMIN = Actor("root", "admin")
REVISIONS = {"rev-a": 0.5, "rev-b": 0.3, "rev-c": 0.2}
FAST = {
    "bake_s": 600,
    "timeouts": {
        "accept_s": 300,
        "download_s": 600,
        "install_s": 600,
        "reboot_s": 600,
        "commit_s": 600,
    },
}


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(f"sqlite:///{tmp_path}/fleet.db")
    upgrade_to_head(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _fleet(sessions: sessionmaker[Session], count: int = 1000) -> SimFleet:
    fleet = SimFleet(sessions, register_fleet(sessions, count, revisions=REVISIONS))
    fleet.announce()
    return fleet


def _start(
    fleet: SimFleet, bundle: str, policy: dict | None = None, selector: dict | None = None
) -> str:
    with fleet.sessions() as session:
        row = session.execute(select(Bundle).where(Bundle.name == bundle)).scalar_one()
        rollout = service.create_rollout(
            session,
            name="test",
            bundle=row,
            selector=selector or {"model": "edge-1"},
            policy={**FAST, **(policy or {})},
            actor=OPS,
            now=fleet.now,
        )
        service.start_rollout(session, rollout, actor=OPS, now=fleet.now)
        session.commit()
        return rollout.id


def _rollout(fleet: SimFleet, rollout_id: str) -> Rollout:
    with fleet.sessions() as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        session.expunge(rollout)
        return rollout


def _state(fleet: SimFleet, rollout_id: str) -> str:
    return _rollout(fleet, rollout_id).state


def _executions(fleet: SimFleet, rollout_id: str) -> list[Execution]:
    with fleet.sessions() as session:
        rows = (
            session.execute(select(Execution).where(Execution.rollout_id == rollout_id))
            .unique()
            .scalars()
            .all()
        )
        for row in rows:
            session.expunge(row)
        return list(rows)


def test_bundle_broken_on_one_revision_halts_in_the_canary_naming_it(sessions) -> None:
    fleet = _fleet(sessions)
    bad = add_bundle(
        sessions,
        "1.1.0",
        revisions=list(REVISIONS),
        simulation={"fail_on_hardware": ["rev-c"]},
    )
    rollout_id = _start(fleet, bad)
    assert fleet.run(lambda: _state(fleet, rollout_id) != "running", max_s=6 * 3600)

    rollout = _rollout(fleet, rollout_id)
    assert rollout.state == "halted"
    assert rollout.current_wave == 0, "halted in the canary wave"
    assert rollout.halt_stratum == "hardware_revision=rev-c"
    assert "rev-c" in (rollout.halt_reason or "")
    exposed = [d for d in fleet.devices.values() if d.installs]
    assert len(exposed) <= 0.02 * len(fleet.devices), f"{len(exposed)} devices got the bundle"
    failed = [d for d in exposed if d.record.state.value == "rolled_back"]
    assert failed, "the canary saw the failures"
    assert all(d.running_version == "1.0.0" for d in failed), "failed devices run the old version"
    assert all(d.hw_revision == "rev-c" for d in failed)
    # Nothing new starts while halted.
    sent = len(fleet.publisher.sent)
    fleet.run(lambda: False, max_s=1800)
    assert len(fleet.publisher.sent) == sent


def test_good_bundle_completes_every_wave_despite_background_failures(sessions) -> None:
    fleet = _fleet(sessions, 500)
    good = add_bundle(sessions, "1.2.0", revisions=list(REVISIONS))
    rollout_id = _start(fleet, good, {"waves": [{"percent": 5}, {"percent": 25}]})
    # devices added mid-rollout go through the waves
    assert fleet.run(lambda: _rollout(fleet, rollout_id).current_wave >= 1, max_s=6 * 3600)
    newcomers = register_fleet(sessions, 30, revisions=REVISIONS, first=len(fleet.devices))
    doomed = list(newcomers)[:2]
    for device_id in doomed:  # certain background failures, whatever the draws before
        newcomers[device_id].background_failure = 1.0
    fleet.devices.update(newcomers)
    fleet.writer.write([d.presence(fleet.now) for d in newcomers.values()])

    assert fleet.run(lambda: _state(fleet, rollout_id) != "running", max_s=48 * 3600)
    rollout = _rollout(fleet, rollout_id)
    assert rollout.state == "completed", rollout.halt_reason
    executions = _executions(fleet, rollout_id)
    committed = [e for e in executions if e.status == "committed"]
    assert len(committed) >= 0.98 * len(fleet.devices)
    failed = {e.device.device_id for e in executions if e.status == "failed"}
    assert set(doomed) <= failed, "the rollout completed past background failures"
    late_waves = {e.wave for e in executions if e.device.device_id in newcomers}
    assert late_waves
    assert min(late_waves) >= 1, "late joiners did not bypass the canary"
    assert all(
        newcomers[e.device.device_id].version == "1.2.0"
        for e in committed
        if e.device.device_id in newcomers
    )


def test_offline_devices_do_not_dilute_and_silent_ones_time_out(sessions) -> None:
    fleet = _fleet(sessions)
    devices = list(fleet.devices.values())
    for device in devices[::2]:  # half the fleet is offline: never sent, never counted
        device.online = False
    with sessions() as session:
        for device in devices[::2]:
            row = session.execute(
                select(Device).where(Device.device_id == device.device_id)
            ).scalar_one()
            row.presence = "offline"
        session.commit()
    for device in devices[1::10]:  # some online devices never answer
        device.silent = True
    bad = add_bundle(
        sessions, "1.3.0", revisions=list(REVISIONS), simulation={"fail_on_hardware": ["rev-b"]}
    )
    rollout_id = _start(fleet, bad)
    assert fleet.run(lambda: _state(fleet, rollout_id) != "running", max_s=12 * 3600)
    rollout = _rollout(fleet, rollout_id)
    assert rollout.state == "halted"
    executions = _executions(fleet, rollout_id)
    offline_ids = {d.device_id for d in devices[::2]}
    assert not any(e.status != "pending" for e in executions if e.device.device_id in offline_ids)
    timed_out = [e for e in executions if e.failure_class == "timeout"]
    silent_sent = [
        e for e in executions if fleet.devices[e.device.device_id].silent and e.status != "pending"
    ]
    assert all(e.failure_class == "timeout" for e in silent_sent if e.status == "failed")
    assert timed_out or not silent_sent


def test_health_gate_stops_a_bundle_that_raises_the_fault_rate(sessions) -> None:
    fleet = _fleet(sessions)
    for device in fleet.devices.values():
        device.fault_rate_per_h = 0.2
    noisy = add_bundle(
        sessions, "1.4.0", revisions=list(REVISIONS), simulation={"fault_rate_multiplier": 8.0}
    )
    rollout_id = _start(
        fleet, noisy, {"bake_s": 4 * 3600, "waves": [{"percent": 10}, {"percent": 40}]}
    )
    assert fleet.run(lambda: _state(fleet, rollout_id) != "running", max_s=24 * 3600)
    rollout = _rollout(fleet, rollout_id)
    assert rollout.state == "halted"
    assert "health gate" in (rollout.halt_reason or "")
    assert rollout.halt_class == "health"
    assert rollout.current_wave == 0


def test_rollback_halt_action_sends_updated_devices_back(sessions) -> None:
    fleet = _fleet(sessions, count=300)
    # A background health failure while going back to 1.0.0 would quarantine 1.0.0 on that
    # device (as the real agent does), which rightly keeps it off 1.0.0: this test is about
    # the rollback action, background failures are the good-bundle test's subject.
    for device in fleet.devices.values():
        device.background_failure = 0.0
    add_bundle(sessions, "1.0.0", revisions=list(REVISIONS), release_counter=2)
    noisy = add_bundle(
        sessions,
        "1.5.0",
        revisions=list(REVISIONS),
        simulation={"fail_on_hardware": ["rev-c"]},
        release_counter=1,
    )
    rollout_id = _start(fleet, noisy, {"on_halt": {"action": "rollback", "rollback_to": "1.0.0"}})
    assert fleet.run(lambda: _state(fleet, rollout_id) != "running", max_s=12 * 3600)
    assert _state(fleet, rollout_id) == "rolled_back"
    fleet.run(
        lambda: all(d.version == "1.0.0" for d in fleet.devices.values() if d.installs),
        max_s=6 * 3600,
    )
    stuck = [
        (d.device_id, d.hw_revision, d.running_version, d.record.state.value, d.installs)
        for d in fleet.devices.values()
        if d.running_version != "1.0.0"
    ]
    assert not stuck, (stuck, fleet.decisions[-6:])


def test_conflicts_illegal_transitions_and_bad_policies_are_refused(sessions) -> None:
    fleet = _fleet(sessions, count=100)
    good = add_bundle(sessions, "1.6.0", revisions=list(REVISIONS))
    first = _start(fleet, good)
    with pytest.raises(FleetError) as conflict:
        _start(fleet, good)
    assert conflict.value.code == "conflict"
    assert first in conflict.value.message

    with pytest.raises(IllegalTransitionError, match="cannot resume"):
        transition("running", "resume")
    with sessions() as session:
        rollout = session.get(Rollout, first)
        assert rollout is not None
        with pytest.raises(FleetError) as illegal:
            service.operator_action(session, rollout, "resume", actor=OPS, now=fleet.now)
        assert illegal.value.code == "illegal_transition"
        bundle = session.execute(select(Bundle).where(Bundle.name == good)).scalar_one()
        for policy, field in (
            ({"waves": [{"percent": 80}, {"percent": 40}]}, "waves"),
            ({"min_sample": 0}, "min_sample"),
            ({"on_halt": {"action": "rollback"}}, "on_halt.rollback_to"),
            ({"on_halt": {"action": "rollback", "rollback_to": "9.9.9"}}, "on_halt.rollback_to"),
        ):
            with pytest.raises(FleetError) as bad:
                service.create_rollout(
                    session,
                    name="x",
                    bundle=bundle,
                    selector={},
                    policy=policy,
                    actor=OPS,
                    now=fleet.now,
                )
            assert bad.value.code == "invalid_policy"
            assert field in bad.value.message
        with pytest.raises(FleetError) as selector:
            service.create_rollout(
                session,
                name="x",
                bundle=bundle,
                selector={"colour": "red"},
                policy={},
                actor=OPS,
                now=fleet.now,
            )
        assert selector.value.code == "invalid_selector"


def test_production_needs_preproduction_first_unless_an_admin_forces_it(sessions) -> None:
    fleet = _fleet(sessions, count=60)
    fresh = add_bundle(sessions, "2.0.0", revisions=list(REVISIONS), preprod_done=False)
    with sessions() as session:
        bundle = session.execute(select(Bundle).where(Bundle.name == fresh)).scalar_one()
        rollout = service.create_rollout(
            session,
            name="prod",
            bundle=bundle,
            selector={"channel": "production"},
            policy=FAST,
            actor=OPS,
            now=fleet.now,
        )
        with pytest.raises(FleetError) as refused:
            service.start_rollout(session, rollout, actor=OPS, now=fleet.now)
        assert refused.value.code == "preprod_required"
        with pytest.raises(FleetError) as not_admin:
            service.start_rollout(session, rollout, actor=OPS, now=fleet.now, force_reason="hotfix")
        assert not_admin.value.code == "forbidden"
        service.start_rollout(session, rollout, actor=ADMIN, now=fleet.now, force_reason="hotfix")
        session.commit()
        assert rollout.forced
        assert rollout.state == "running"


def test_dry_run_and_explain(sessions) -> None:
    fleet = _fleet(sessions, count=200)
    good = add_bundle(sessions, "1.7.0", revisions=["rev-a", "rev-b"])
    with sessions() as session:
        bundle = session.execute(select(Bundle).where(Bundle.name == good)).scalar_one()
        from fleet_server.rollouts.policy import parse_policy

        plan = service.make_plan(
            session, bundle, service.parse_selector({"model": "edge-1"}), parse_policy(FAST), "s"
        ).summary()
        assert plan["excluded_by_reason"] == {
            "incompatible": plan["targeted"] and len(plan["excluded"])
        }
        assert all(e["reason"] == "incompatible" for e in plan["excluded"])
        assert set(plan["waves"][0]["hardware_revisions"]) == {"rev-a", "rev-b"}
    rollout_id = _start(fleet, good)
    with sessions() as session:
        rev_c = (
            session.execute(select(Device).where(Device.hw_revision == "rev-c")).scalars().first()
        )
        report = explain_device(session, rev_c, now=fleet.now, rollout_id=rollout_id)
        assert "incompatible" in report["rollouts"][0]["verdict"]
        later = (
            session.execute(
                select(Execution).where(Execution.rollout_id == rollout_id, Execution.wave == 1)
            )
            .unique()
            .scalars()
            .first()
        )
        report = explain_device(session, later.device, now=fleet.now, rollout_id=rollout_id)
        assert "waiting for wave 1" in report["rollouts"][0]["verdict"]


def test_small_fleet_completes_only_on_good_observed_rates(sessions) -> None:
    """Below min_sample the bound cannot be met: a small fleet completes when every device
    executed within the limits, and does not when a revision breaks."""
    fleet = _fleet(sessions, count=20)
    good = add_bundle(sessions, "4.0.0", revisions=list(REVISIONS))
    rollout_id = _start(fleet, good)
    assert fleet.run(lambda: _state(fleet, rollout_id) != "running", max_s=6 * 3600)
    assert _state(fleet, rollout_id) == "completed"
    bad = add_bundle(
        sessions,
        "4.1.0",
        revisions=list(REVISIONS),
        simulation={"fail_on_hardware": ["rev-a"]},
        release_counter=2,
    )
    rollout_id = _start(fleet, bad)
    assert fleet.run(lambda: _state(fleet, rollout_id) != "running", max_s=6 * 3600)
    assert _state(fleet, rollout_id) == "halted"


def test_offline_fleet_does_not_complete(sessions) -> None:
    fleet = _fleet(sessions, count=40)
    with sessions() as session:
        for row in session.execute(select(Device)).scalars():
            row.presence = "offline"
        session.commit()
    for device in fleet.devices.values():
        device.online = False
    good = add_bundle(sessions, "5.0.0", revisions=list(REVISIONS))
    rollout_id = _start(fleet, good)
    fleet.run(lambda: False, max_s=3 * 3600)
    assert _state(fleet, rollout_id) == "running", "nothing was tried: nothing is decided"
    assert not fleet.publisher.sent


def test_a_cancelled_canary_device_does_not_stall_the_rollout(sessions) -> None:
    fleet = _fleet(sessions, count=200)
    good = add_bundle(sessions, "6.0.0", revisions=list(REVISIONS))
    rollout_id = _start(fleet, good)
    with sessions() as session:
        first = (
            session.execute(
                select(Execution).where(Execution.rollout_id == rollout_id, Execution.wave == 0)
            )
            .unique()
            .scalars()
            .first()
        )
        from fleet_server.services import deployments

        deployments.cancel(session, first, actor=OPS, now=fleet.now, reason="operator")
        session.commit()
    assert fleet.run(lambda: _state(fleet, rollout_id) != "running", max_s=12 * 3600)
    assert _state(fleet, rollout_id) == "completed"


def test_resuming_a_halted_rollout_acknowledges_the_failures_so_far(sessions) -> None:
    fleet = _fleet(sessions, count=300)
    bad = add_bundle(
        sessions, "7.0.0", revisions=list(REVISIONS), simulation={"fail_on_hardware": ["rev-c"]}
    )
    rollout_id = _start(fleet, bad)
    assert fleet.run(lambda: _state(fleet, rollout_id) != "running", max_s=6 * 3600)
    assert _state(fleet, rollout_id) == "halted"
    with sessions() as session:
        rollout = session.get(Rollout, rollout_id)
        service.operator_action(
            session, rollout, "resume", actor=OPS, now=fleet.now, reason="known issue"
        )
        session.commit()
    fleet.run(lambda: False, max_s=180)
    assert _state(fleet, rollout_id) == "running", "the same old failures do not halt it again"


def test_rollback_to_a_lower_release_counter_is_refused_clearly(sessions) -> None:
    fleet = _fleet(sessions, count=50)
    add_bundle(sessions, "0.9.0", revisions=list(REVISIONS), release_counter=1)
    newer = add_bundle(sessions, "8.0.0", revisions=list(REVISIONS), release_counter=5)
    with sessions() as session:
        bundle = session.execute(select(Bundle).where(Bundle.name == newer)).scalar_one()
        with pytest.raises(FleetError) as refused:
            service.create_rollout(
                session,
                name="x",
                bundle=bundle,
                selector={},
                policy={"on_halt": {"action": "rollback", "rollback_to": "0.9.0"}},
                actor=OPS,
                now=fleet.now,
            )
    assert refused.value.code == "invalid_policy"
    assert "release counter" in refused.value.message
