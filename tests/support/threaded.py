"""An ASGI app served by uvicorn on a free port from a thread of this process: for clients that need a real socket
(a browser, the command line's urllib) in front of the app in process."""

from __future__ import annotations

import threading

import uvicorn
from starlette.types import ASGIApp

from .process import free_port


class ServedInThread:
    """The app on http://127.0.0.1:PORT (`url`) until stop()."""

    def __init__(self, app: ASGIApp) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="served-in-thread", daemon=True)
        self.thread.start()
        ready = threading.Event()
        while not self.server.started and self.thread.is_alive():
            ready.wait(0.02)
        assert self.server.started, "the server did not start"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
