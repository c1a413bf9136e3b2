"""The web console's static files (``app/console/``), served under a strict Content-Security-Policy.

The policy is the "no CDN" rule enforced by the browser: scripts, styles and API calls may come
from Lethe only, nothing inline, and the page cannot be framed (clickjacking an operator's key).
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidate: an upgraded Lethe serves its own console at once
}


class ConsoleFiles(StaticFiles):
    def __init__(self) -> None:
        super().__init__(directory=CONSOLE_DIR, html=True)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response
