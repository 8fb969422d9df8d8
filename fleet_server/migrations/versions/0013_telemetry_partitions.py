"""telemetry: partitioned by day on PostgreSQL (SQLite keeps the single table)

Every row is kept: the plain table is renamed, the partitioned one created with a
partition per day that has data (and the week ahead), the rows copied, the old table
dropped. See fleet_server/db/partitions.py.

Revision ID: 0013_telemetry_partitions
Revises: 0012_sbom
"""

from __future__ import annotations

import time

from alembic import op

from fleet_server.db.partitions import convert_to_partitioned, convert_to_plain, is_partitioned

revision = "0013_telemetry_partitions"
down_revision = "0012_sbom"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql" or is_partitioned(conn):
        return
    convert_to_partitioned(conn, time.time())


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql" and is_partitioned(conn):
        convert_to_plain(conn)
