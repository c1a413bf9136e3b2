"""Fides resume state (issue 21): the integration's state per halted privacy request, the token's
expiry, Fides' answer; the token becomes nullable (deleted once used or expired); an index on
ErasureRequest.external_id for the list filter.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 10:45:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TTL = timedelta(seconds=216000)  # Fides' default privacy_request_delay_timeout


def upgrade() -> None:
    with op.batch_alter_table("erasurerequest") as batch:  # the list filter external_id (a Fides id)
        batch.create_index("ix_erasurerequest_external_id", ["external_id"])
    with op.batch_alter_table("fidesresume") as batch:
        batch.alter_column("token", existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        batch.add_column(sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                   server_default="halted"))
        batch.add_column(sa.Column("token_expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("fides_status", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.create_index("ix_fidesresume_state", ["state"])
    # Rows from before: a queued resume is 'resuming'; every token expires at created_at + the default.
    when = sqlmodel.sql.sqltypes.UTCDateTime
    table = sa.table("fidesresume", sa.column("privacy_request_id"), sa.column("created_at", when()),
                     sa.column("resumed_at", when()), sa.column("state"), sa.column("token_expires_at", when()))
    conn = op.get_bind()
    for pid, created, resumed in conn.execute(sa.select(table.c.privacy_request_id, table.c.created_at,
                                                        table.c.resumed_at)).all():
        conn.execute(table.update().where(table.c.privacy_request_id == pid).values(
            state="resuming" if resumed is not None else "halted", token_expires_at=created + DEFAULT_TTL))
    with op.batch_alter_table("fidesresume") as batch:
        batch.alter_column("state", server_default=None)
    # Tokens already used: a queued resume carries its own copy; an ended delivery needs none.
    op.execute("UPDATE fidesresume SET token = NULL WHERE resumed_at IS NOT NULL")
    op.execute("UPDATE callbackdelivery SET auth_token = NULL WHERE status <> 'pending'")


def downgrade() -> None:
    with op.batch_alter_table("erasurerequest") as batch:
        batch.drop_index("ix_erasurerequest_external_id")
    with op.batch_alter_table("fidesresume") as batch:
        batch.drop_index("ix_fidesresume_state")
        batch.drop_column("detail")
        batch.drop_column("fides_status")
        batch.drop_column("token_expires_at")
        batch.drop_column("state")
        # A deleted token cannot come back: such rows keep an empty one.
    op.execute("UPDATE fidesresume SET token = '' WHERE token IS NULL")
    with op.batch_alter_table("fidesresume") as batch:
        batch.alter_column("token", existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=False)
