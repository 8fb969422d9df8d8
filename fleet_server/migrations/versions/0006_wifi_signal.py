"""telemetry: Wi-Fi signal level (``Sample.wifi_signal_dbm``)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable and without a default: older agents do not send it, and adding the column
    # rewrites nothing on PostgreSQL or SQLite.
    with op.batch_alter_table("telemetry", table_kwargs={"sqlite_with_rowid": False}) as batch:
        batch.add_column(sa.Column("wifi_signal_dbm", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("telemetry", table_kwargs={"sqlite_with_rowid": False}) as batch:
        batch.drop_column("wifi_signal_dbm")
