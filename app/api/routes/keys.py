"""API keys (admin): create a key with scopes; the clear key is shown once."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from app.api.deps import SessionDep, require
from app.api.schemas import KeyCreate
from app.db.models import ApiKey
from app.services import keys

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201)
def create_key(body: KeyCreate, session: SessionDep, _: Annotated[ApiKey, Depends(require("admin"))]) -> dict[str, Any]:
    """Create an API key; store the returned key, it is not shown again."""
    row, clear = keys.create_key(session, name=body.name, scopes=body.scopes)
    session.commit()
    return {"id": row.id, "name": row.name, "scopes": row.scopes.split(), "key": clear}
