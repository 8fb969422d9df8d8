"""software composition: bundle components, licence policies, waivers and reviews,
OSV advisories and their matches, VEX statements, exposure events

Revision ID: 0012_sbom
Revises: 0011_tickets
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_sbom"
down_revision = "0011_tickets"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_index(
        "ix_devices_model_software_version",
        "devices",
        ["model", "software_version", "status"],
        unique=False,
    )
    op.create_table(
        "advisories",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("aliases", sa.JSON(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("vector", sa.String(length=256), nullable=True),
        sa.Column("modified", sa.String(length=64), nullable=False),
        sa.Column("withdrawn", sa.Boolean(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("imported_at", sa.Float(), nullable=False),
        sa.Column("matched_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_advisories")),
    )
    op.create_index(op.f("ix_advisories_matched_at"), "advisories", ["matched_at"], unique=False)
    op.create_index(op.f("ix_advisories_severity"), "advisories", ["severity"], unique=False)
    op.create_table(
        "licence_policies",
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("model", name=op.f("pk_licence_policies")),
    )
    op.create_table(
        "licence_waivers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("component", sa.String(length=1000), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_licence_waivers")),
    )
    op.create_index(op.f("ix_licence_waivers_model"), "licence_waivers", ["model"], unique=False)
    op.create_table(
        "advisory_packages",
        sa.Column("advisory_id", sa.String(length=128), nullable=False),
        sa.Column("purl_type", sa.String(length=32), nullable=False),
        sa.Column("package", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(
            ["advisory_id"],
            ["advisories.id"],
            name=op.f("fk_advisory_packages_advisory_id_advisories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "advisory_id", "purl_type", "package", name=op.f("pk_advisory_packages")
        ),
    )
    op.create_index(
        "ix_advisory_packages_package", "advisory_packages", ["purl_type", "package"], unique=False
    )
    op.create_table(
        "bundle_components",
        sa.Column("id", BigId, nullable=False),
        sa.Column("bundle_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("purl", sa.String(length=1000), nullable=True),
        sa.Column("purl_type", sa.String(length=32), nullable=True),
        sa.Column("package", sa.String(length=500), nullable=True),
        sa.Column("licence", sa.String(length=1000), nullable=True),
        sa.Column("supplier", sa.String(length=500), nullable=True),
        sa.Column("hashes", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bundle_id"],
            ["bundles.id"],
            name=op.f("fk_bundle_components_bundle_id_bundles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bundle_components")),
    )
    op.create_index("ix_bundle_components_bundle", "bundle_components", ["bundle_id"], unique=False)
    op.create_index(op.f("ix_bundle_components_name"), "bundle_components", ["name"], unique=False)
    op.create_index(
        "ix_bundle_components_package", "bundle_components", ["purl_type", "package"], unique=False
    )
    op.create_table(
        "bundle_match_state",
        sa.Column("bundle_id", sa.Integer(), nullable=False),
        sa.Column("matched_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bundle_id"],
            ["bundles.id"],
            name=op.f("fk_bundle_match_state_bundle_id_bundles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("bundle_id", name=op.f("pk_bundle_match_state")),
    )
    op.create_table(
        "exposure_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("advisory_id", sa.String(length=128), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("exposed_devices", sa.Integer(), nullable=False),
        sa.Column("bundles", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("raised_at", sa.Float(), nullable=False),
        sa.Column("acked_at", sa.Float(), nullable=True),
        sa.Column("acked_by", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["advisory_id"],
            ["advisories.id"],
            name=op.f("fk_exposure_events_advisory_id_advisories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exposure_events")),
    )
    op.create_index(
        op.f("ix_exposure_events_advisory_id"), "exposure_events", ["advisory_id"], unique=False
    )
    op.create_index(op.f("ix_exposure_events_state"), "exposure_events", ["state"], unique=False)
    op.create_table(
        "licence_reviews",
        sa.Column("bundle_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("evaluation", sa.JSON(), nullable=False),
        sa.Column("decided_at", sa.Float(), nullable=True),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bundle_id"],
            ["bundles.id"],
            name=op.f("fk_licence_reviews_bundle_id_bundles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("bundle_id", name=op.f("pk_licence_reviews")),
    )
    op.create_index(op.f("ix_licence_reviews_state"), "licence_reviews", ["state"], unique=False)
    op.create_table(
        "vex_statements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bundle_id", sa.Integer(), nullable=False),
        sa.Column("vulnerability", sa.String(length=128), nullable=False),
        sa.Column("purl", sa.String(length=1000), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("justification", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["bundle_id"],
            ["bundles.id"],
            name=op.f("fk_vex_statements_bundle_id_bundles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vex_statements")),
    )
    op.create_index(
        op.f("ix_vex_statements_bundle_id"), "vex_statements", ["bundle_id"], unique=False
    )
    op.create_table(
        "advisory_matches",
        sa.Column("id", BigId, nullable=False),
        sa.Column("advisory_id", sa.String(length=128), nullable=False),
        sa.Column("bundle_id", sa.Integer(), nullable=False),
        sa.Column("component_id", BigId, nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("justification", sa.Text(), nullable=True),
        sa.Column("fixed_in", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["advisory_id"],
            ["advisories.id"],
            name=op.f("fk_advisory_matches_advisory_id_advisories"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["bundle_id"],
            ["bundles.id"],
            name=op.f("fk_advisory_matches_bundle_id_bundles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["component_id"],
            ["bundle_components.id"],
            name=op.f("fk_advisory_matches_component_id_bundle_components"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_advisory_matches")),
    )
    op.create_index(
        "ix_advisory_matches_advisory",
        "advisory_matches",
        ["advisory_id", "bundle_id"],
        unique=False,
    )
    op.create_index("ix_advisory_matches_bundle", "advisory_matches", ["bundle_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_devices_model_software_version", table_name="devices")
    op.drop_index("ix_advisory_matches_bundle", table_name="advisory_matches")
    op.drop_index("ix_advisory_matches_advisory", table_name="advisory_matches")
    op.drop_table("advisory_matches")
    op.drop_index(op.f("ix_vex_statements_bundle_id"), table_name="vex_statements")
    op.drop_table("vex_statements")
    op.drop_index(op.f("ix_licence_reviews_state"), table_name="licence_reviews")
    op.drop_table("licence_reviews")
    op.drop_index(op.f("ix_exposure_events_state"), table_name="exposure_events")
    op.drop_index(op.f("ix_exposure_events_advisory_id"), table_name="exposure_events")
    op.drop_table("exposure_events")
    op.drop_table("bundle_match_state")
    op.drop_index("ix_bundle_components_package", table_name="bundle_components")
    op.drop_index(op.f("ix_bundle_components_name"), table_name="bundle_components")
    op.drop_index("ix_bundle_components_bundle", table_name="bundle_components")
    op.drop_table("bundle_components")
    op.drop_index("ix_advisory_packages_package", table_name="advisory_packages")
    op.drop_table("advisory_packages")
    op.drop_index(op.f("ix_licence_waivers_model"), table_name="licence_waivers")
    op.drop_table("licence_waivers")
    op.drop_table("licence_policies")
    op.drop_index(op.f("ix_advisories_severity"), table_name="advisories")
    op.drop_index(op.f("ix_advisories_matched_at"), table_name="advisories")
    op.drop_table("advisories")
