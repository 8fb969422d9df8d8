"""received_messages, telemetry: no foreign key to devices

The ingest writes a row into each of these two tables for every message, and a foreign
key made PostgreSQL check every one of those rows against ``devices`` (a lookup and a
``FOR KEY SHARE`` lock of the device row per inserted row, about a third of PostgreSQL's
CPU per message on the cluster bench). The ingest itself guarantees the reference: it
reads (or creates) every device of a batch in the same transaction and locks the rows
it writes; devices are never deleted (decommissioning keeps the row). The constraints
are dropped on both back-ends so that the schema is the same; the data is kept. On SQLite
the two tables are rebuilt, which takes time and disk space about their size, once.

Revision ID: 0014_ingest_tables_no_fk
Revises: 0013_telemetry_partitions
"""

from __future__ import annotations

from alembic import op

revision = "0014_ingest_tables_no_fk"
down_revision = "0013_telemetry_partitions"
branch_labels = None
depends_on = None

_TABLES = ("received_messages", "telemetry")


def _fk(table: str) -> str:
    return f"fk_{table}_device_key_devices"


def upgrade() -> None:
    conn = op.get_bind()
    for table in _TABLES:
        if conn.dialect.name == "postgresql":
            # On the partitioned telemetry this drops the partitions' copies too.
            op.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT IF EXISTS "{_fk(table)}"')
        else:
            # SQLite rebuilds the table (rows, primary key, indexes and WITHOUT ROWID kept).
            with op.batch_alter_table(
                table, recreate="always", table_kwargs={"sqlite_with_rowid": False}
            ) as batch:
                batch.drop_constraint(_fk(table), type_="foreignkey")


def downgrade() -> None:
    conn = op.get_bind()
    for table in _TABLES:
        # Rows whose device is gone (possible without the key: a device row deleted by
        # hand) are what ON DELETE CASCADE would have removed; the constraint refuses them.
        op.execute(
            f'DELETE FROM "{table}" WHERE NOT EXISTS '
            f'(SELECT 1 FROM devices WHERE devices.id = "{table}".device_key)'
        )
        if conn.dialect.name == "postgresql":
            op.execute(
                f'ALTER TABLE "{table}" ADD CONSTRAINT "{_fk(table)}" FOREIGN KEY (device_key) '
                "REFERENCES devices (id) ON DELETE CASCADE"
            )
        else:
            with op.batch_alter_table(
                table, recreate="always", table_kwargs={"sqlite_with_rowid": False}
            ) as batch:
                batch.create_foreign_key(
                    _fk(table), "devices", ["device_key"], ["id"], ondelete="CASCADE"
                )
