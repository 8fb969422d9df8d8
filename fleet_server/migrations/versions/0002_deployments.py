"""OTA deployments: bundle catalogue, executions and their events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bundles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("product", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("hardware_revisions", sa.JSON(), nullable=False),
        sa.Column("release_counter", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("min_agent_version", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("published_at", sa.Float(), nullable=False),
        sa.Column("published_by", sa.String(length=128), nullable=False),
        sa.Column("preprod_completed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bundles")),
        sa.UniqueConstraint("name", name=op.f("uq_bundles_name")),
    )
    with op.batch_alter_table("bundles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bundles_model"), ["model"], unique=False)
        batch_op.create_index(batch_op.f("ix_bundles_version"), ["version"], unique=False)
        batch_op.create_index(batch_op.f("ix_bundles_channel"), ["channel"], unique=False)

    op.create_table(
        "executions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("device_key", sa.Integer(), nullable=False),
        sa.Column("bundle_id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.String(length=64), nullable=True),
        sa.Column("wave", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("phase_at", sa.Float(), nullable=False),
        sa.Column("failure_class", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attack", sa.String(length=64), nullable=True),
        sa.Column("command_id", sa.String(length=64), nullable=True),
        sa.Column("from_version", sa.String(length=64), nullable=True),
        sa.Column("timeouts", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_key"],
            ["devices.id"],
            name=op.f("fk_executions_device_key_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["bundle_id"], ["bundles.id"], name=op.f("fk_executions_bundle_id_bundles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executions")),
    )
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_executions_bundle_id"), ["bundle_id"], unique=False)
        batch_op.create_index("ix_executions_device_status", ["device_key", "status"], unique=False)
        batch_op.create_index(
            "ix_executions_rollout_wave_status", ["rollout_id", "wave", "status"], unique=False
        )

    op.create_table(
        "execution_events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("execution_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("device_ts", sa.Float(), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("failure_class", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attack", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.id"],
            name=op.f("fk_execution_events_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_events")),
    )
    with op.batch_alter_table("execution_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_execution_events_execution_id"), ["execution_id"], unique=False
        )


def downgrade() -> None:
    op.drop_table("execution_events")
    op.drop_table("executions")
    op.drop_table("bundles")
