"""What every response schema shares.

Routes keep returning the dicts their services build; the route declares one of these models as
``response_model`` and FastAPI validates and serialises through it. So a schema must say exactly
what the service returns: ``extra="forbid"`` turns a key a service adds without its schema into a
response-validation error (a 500 in every test of that route) instead of a key dropped silently
from the wire, and it is ``additionalProperties: false`` in OpenAPI, which the schemathesis fuzz
checks. Free-form JSON (metrics, verification reports, spec configs) is typed ``dict[str, Any]``
where it sits, so no model needs ``extra="allow"``. Fields are declared in the order the services
write their keys, so the JSON keeps its key order.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def absent(description: str) -> Any:
    """A field the route leaves out, rather than sending null, when it does not apply. Routes whose
    schema has one set ``response_model_exclude_unset=True``: a key the service did not write stays
    absent (the response carries exactly the service's keys). Not required, no default in OpenAPI."""
    return Field(default=None, description=description, json_schema_extra=_no_default)


# A time already formatted by the service (``callbacks.rfc3339``, ``audit.ts_str``: UTC, ``Z``) and
# passed through as the string it is; signed documents must not be re-parsed and re-formatted.
Rfc3339 = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]

NEXT_CURSOR = "Pass as ``cursor`` to get the next page; null on the last one."
