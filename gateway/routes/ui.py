"""The web UI: one page at `/`, its ES modules and CSS under `/ui/` (no build step).

Both are public (see `gateway.auth`): the page holds no data; every API call it makes
carries the API key the user typed, kept in the browser's localStorage.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
UI_PREFIX = "/ui"

router = APIRouter(include_in_schema=False)


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def install_ui(app: FastAPI) -> None:
    """Serve the page at `/` and its files under `/ui/`."""
    app.include_router(router)
    app.mount(UI_PREFIX, StaticFiles(directory=STATIC_DIR), name="ui")
