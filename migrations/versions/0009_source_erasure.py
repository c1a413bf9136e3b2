"""source erasures (issue 18): the durable list of subjects owed a DELETE and a physical purge in
an organisation's Delta table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    s = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "sourceerasure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_name", s(), nullable=False),
        sa.Column("uri", s(), nullable=False),
        sa.Column("subject_column", s(), nullable=False),
        sa.Column("subject_key", s(), nullable=False),
        sa.Column("request_id", s(), nullable=True),
        sa.Column("reason", s(), nullable=False),
        sa.Column("status", s(), nullable=False),
        sa.Column("delete_version", sa.Integer(), nullable=True),
        sa.Column("rows_deleted", sa.Integer(), nullable=True),
        sa.Column("files_removed", sa.Integer(), nullable=True),
        sa.Column("purge_not_before", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("not_before", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", s(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("deleted_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("purged_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sourceerasure_subject_key", "sourceerasure", ["subject_key"], unique=False)
    op.create_index("ix_sourceerasure_status_uri", "sourceerasure", ["status", "uri"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_sourceerasure_status_uri", table_name="sourceerasure")
    op.drop_index("ix_sourceerasure_subject_key", table_name="sourceerasure")
    op.drop_table("sourceerasure")
