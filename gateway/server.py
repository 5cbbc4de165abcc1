"""Gateway process (`python -m gateway.server`): HTTP on SDSTACK_GATEWAY_PORT."""

from __future__ import annotations

import sys

import uvicorn

from gateway.app import create_app
from gateway.backends import Backends
from services.common.config import load_settings
from services.common.errors import ConfigError
from services.common.logs import configure_logging
from services.common.metrics import ensure_port_free

# An idle keep-alive connection is closed by the server after this many seconds. It must
# outlast the clients' own idle expiry (httpx 5 s, browsers and load balancers ~60 s):
# when both sides expire together, a client can send a request on a connection the server
# is closing and get no answer at all (uvicorn's default is 5 s, exactly httpx's).
KEEP_ALIVE_SECONDS = 75


def main() -> None:
    try:
        settings = load_settings()
        settings.api_key_users()  # a bad keys file stops start-up here, naming its setting
        ensure_port_free(settings.host, settings.gateway_port, "SDSTACK_GATEWAY_PORT")
    except ConfigError as error:
        sys.stderr.write(f"gateway: cannot start: {error}\n")
        raise SystemExit(2) from None
    configure_logging("gateway", settings.log_level, settings.log_format)
    clients = Backends.connect(settings)
    app = create_app(clients, settings)
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.gateway_port,
            log_config=None,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        )
    finally:
        clients.close()


if __name__ == "__main__":
    main()
