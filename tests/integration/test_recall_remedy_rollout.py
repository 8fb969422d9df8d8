"""A recall's software remedy carried out by a staged rollout, end to end: the campaign
blocks the bad version and holds its devices out of unrelated rollouts; its own remedy
rollout moves them to the fixed release; the remedy job marks them remedied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import Bundle, Device
from fleet_server.db.rollout_models import Rollout, RolloutExclusion
from fleet_server.errors import ConflictError, FleetError
from fleet_server.migrations import upgrade_to_head
from fleet_server.services import deployments, recalls
from fleet_server.services import rollouts as service
from fleet_server.services.audit import Actor
from tests.support.sim_fleet import SimFleet, add_bundle, register_fleet

OPS = Actor("ops", "operator")
REVISIONS = {"rev-a": 0.7, "rev-b": 0.3}
FAST = {"bake_s": 300, "timeouts": {"accept_s": 600}}


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(f"sqlite:///{tmp_path}/fleet.db")
    upgrade_to_head(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _bundle(session: Session, name: str) -> Bundle:
    return session.execute(select(Bundle).where(Bundle.name == name)).scalar_one()


def test_recall_remedy_through_a_rollout_and_a_version_block(sessions) -> None:
    devices = register_fleet(sessions, 120, revisions=REVISIONS)
    fleet = SimFleet(sessions, devices)
    fleet.announce()
    recalled = {d for i, d in enumerate(sorted(devices)) if i % 3 == 0}  # batch lot-0 and lot-3
    with sessions() as session:
        for row in session.execute(select(Device)).scalars():
            if row.device_id in recalled:
                row.batch = "lot-bad"
        session.commit()
    fixed = add_bundle(sessions, "1.0.1", revisions=list(REVISIONS), release_counter=2)
    unrelated = add_bundle(sessions, "1.1.0", revisions=list(REVISIONS), release_counter=3)
    bad_again = add_bundle(sessions, "1.0.0", revisions=list(REVISIONS), release_counter=1)

    with sessions() as session:
        campaign = recalls.create_campaign(
            session,
            OPS,
            campaign_id="RC-7",
            title="lot-bad overheats on 1.0.0",
            scope={"batches": ["lot-bad"], "software_versions": ["1.0.0"]},
            now=fleet.now,
            remedy_version="1.0.1",
            blocked_versions=["1.0.0"],
        )
        assert recalls.open_campaign(session, OPS, campaign, now=fleet.now) == len(recalled)
        session.commit()

        # The blocked version can no longer be targeted, by a rollout or a single update.
        with pytest.raises(FleetError) as blocked:
            service.create_rollout(
                session,
                name="x",
                bundle=_bundle(session, bad_again),
                selector={},
                policy=FAST,
                actor=OPS,
                now=fleet.now,
            )
        assert blocked.value.code == "blocked_version"
        some = session.execute(select(Device)).scalars().first()
        with pytest.raises(ConflictError) as single:
            deployments.create_execution(
                session, some, _bundle(session, bad_again), actor=OPS, now=fleet.now
            )
        assert single.value.code == "blocked_version"

        # An unrelated rollout leaves the recalled devices alone.
        other = service.create_rollout(
            session,
            name="features",
            bundle=_bundle(session, unrelated),
            selector={"model": "edge-1"},
            policy=FAST,
            actor=OPS,
            now=fleet.now,
        )
        service.start_rollout(session, other, actor=OPS, now=fleet.now)
        held = set(
            session.execute(
                select(Device.device_id)
                .join(RolloutExclusion, RolloutExclusion.device_key == Device.id)
                .where(
                    RolloutExclusion.rollout_id == other.id,
                    RolloutExclusion.reason == "recall_hold",
                )
            ).scalars()
        )
        assert held == recalled
        service.operator_action(session, other, "cancel", actor=OPS, now=fleet.now)

        # The campaign's own remedy rollout may take them.
        remedy = service.create_rollout(
            session,
            name="RC-7 remedy",
            bundle=_bundle(session, fixed),
            selector={"batch": "lot-bad"},
            policy=FAST,
            actor=OPS,
            now=fleet.now,
        )
        recalls.set_remedy_rollout(session, OPS, campaign, remedy.id, now=fleet.now)
        service.start_rollout(session, remedy, actor=OPS, now=fleet.now)
        session.commit()
        remedy_id = remedy.id

    def done() -> bool:
        with sessions() as s:
            rollout = s.get(Rollout, remedy_id)
            return rollout is not None and rollout.state != "running"

    assert fleet.run(done, max_s=12 * 3600)
    with sessions() as session:
        assert session.get(Rollout, remedy_id).state == "completed"
        remedied = recalls.mark_remedied_by_version(session, fleet.now)
        session.commit()
        completion = recalls.completion(session, "RC-7")
    assert remedied >= 0.95 * len(recalled), "devices on the fixed release are remedied"
    assert completion.remedied == remedied
    assert all(fleet.devices[d].version == "1.0.1" for d in recalled if fleet.devices[d].installs)
