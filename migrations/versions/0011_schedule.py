"""erasure scheduling (issue 16): a request's interim forget and exact deadline, a job's phase and compute.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("erasurerequest") as batch:
        batch.add_column(sa.Column("forgotten_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("exact_due_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    with op.batch_alter_table("unlearningjob") as batch:
        batch.add_column(sa.Column("phase", sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                   server_default="exact"))
        batch.add_column(sa.Column("compute_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("unlearningjob") as batch:
        batch.drop_column("compute_s")
        batch.drop_column("phase")
    with op.batch_alter_table("erasurerequest") as batch:
        batch.drop_column("exact_due_at")
        batch.drop_column("forgotten_at")
