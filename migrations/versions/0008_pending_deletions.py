"""pending deletions (issue 23): the durable to-delete list drained after commit and by the reconciler.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 10:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pendingdeletion",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_pendingdeletion_path"), "pendingdeletion", ["path"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_pendingdeletion_path"), table_name="pendingdeletion")
    op.drop_table("pendingdeletion")
