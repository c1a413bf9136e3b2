"""identity verification pauses the GDPR clock (Art. 12(6)): erasurerequest.identity_status,
clock_paused_at, clock_paused_s.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 00:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("erasurerequest") as batch:
        batch.add_column(sa.Column("identity_status", sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                   server_default="verified"))
        batch.add_column(sa.Column("clock_paused_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("clock_paused_s", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("erasurerequest") as batch:
        batch.drop_column("clock_paused_s")
        batch.drop_column("clock_paused_at")
        batch.drop_column("identity_status")
