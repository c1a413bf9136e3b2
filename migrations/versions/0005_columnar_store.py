"""data at scale (issue 9): subjectrows (columnar store index), modelversion.manifest.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("modelversion") as batch:
        batch.add_column(sa.Column("manifest", sa.JSON(), nullable=False, server_default="{}"))
    op.create_table(
        "subjectrows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("subject_key", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("offset", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["model_name"], ["model.name"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_subjectrows_subject_model", "subjectrows", ["subject_key", "model_name"], unique=False)
    op.create_index("ix_subjectrows_model_part", "subjectrows", ["model_name", "part"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_subjectrows_model_part", table_name="subjectrows")
    op.drop_index("ix_subjectrows_subject_model", table_name="subjectrows")
    op.drop_table("subjectrows")
    with op.batch_alter_table("modelversion") as batch:
        batch.drop_column("manifest")
