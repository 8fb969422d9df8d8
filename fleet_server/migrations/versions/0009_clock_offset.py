"""devices: measured clock offset, announced publish interval, quarantine cleared at

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("clock_offset_s", sa.Float(), nullable=True))
    op.add_column("devices", sa.Column("interval_s", sa.Float(), nullable=True))
    op.add_column("devices", sa.Column("quarantine_cleared_at", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("devices", "quarantine_cleared_at")
    op.drop_column("devices", "interval_s")
    op.drop_column("devices", "clock_offset_s")
