"""staged rollouts: rollouts, exclusions, events; device time zone

Revision ID: 0005
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("timezone", sa.String(length=64), nullable=True))
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("bundle_id", sa.Integer(), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("seed", sa.String(length=40), nullable=False),
        sa.Column("waves_total", sa.Integer(), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("wave_started_at", sa.Float(), nullable=True),
        sa.Column("bake_started_at", sa.Float(), nullable=True),
        sa.Column("halt_reason", sa.Text(), nullable=True),
        sa.Column("halt_stratum", sa.String(length=160), nullable=True),
        sa.Column("halt_class", sa.String(length=32), nullable=True),
        sa.Column("rollback_version", sa.String(length=64), nullable=True),
        sa.Column("resumed_at", sa.Float(), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("force_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bundle_id"], ["bundles.id"], name=op.f("fk_rollouts_bundle_id_bundles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index(op.f("ix_rollouts_bundle_id"), "rollouts", ["bundle_id"])
    op.create_index(op.f("ix_rollouts_state"), "rollouts", ["state"])
    op.create_table(
        "rollout_exclusions",
        sa.Column("id", BigId, nullable=False),
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("device_key", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_key"],
            ["devices.id"],
            name=op.f("fk_rollout_exclusions_device_key_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_exclusions_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_exclusions")),
    )
    op.create_index(op.f("ix_rollout_exclusions_rollout_id"), "rollout_exclusions", ["rollout_id"])
    op.create_index(
        "uq_rollout_exclusions_rollout_device",
        "rollout_exclusions",
        ["rollout_id", "device_key"],
        unique=True,
    )
    op.create_table(
        "rollout_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("wave", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_events_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_events")),
    )
    op.create_index(op.f("ix_rollout_events_rollout_id"), "rollout_events", ["rollout_id"])


def downgrade() -> None:
    op.drop_table("rollout_events")
    op.drop_table("rollout_exclusions")
    op.drop_table("rollouts")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("timezone")
