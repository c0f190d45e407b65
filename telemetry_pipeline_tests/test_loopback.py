"""The loopback server under the simulator and the doubles: routing, replies, errors, stopping."""

from __future__ import annotations

import httpx
import pytest

from telemetry_pipeline.simulate.loopback import (
    HTTPError,
    LoopbackServer,
    Reply,
    Request,
    Router,
    empty_reply,
    json_reply,
    text_reply,
)

pytestmark = pytest.mark.fast  # `make test-fast`


def app() -> Router:
    router = Router(not_found="nothing here")

    @router.route("GET", "/items/{item}/parts/{part}")
    def part(request: Request) -> Reply:
        return json_reply({"params": dict(request.params), "query": request.query}, headers={"X-Seen": "1"})

    @router.route("POST", "/echo")
    def echo(request: Request) -> Reply:
        return text_reply(f"{request.header('x-who')}: {request.json()['say']}", status=201)

    @router.route("DELETE", "/items/{item}")
    def delete(request: Request) -> Reply:
        if request.params["item"] == "locked":
            raise HTTPError(409, "locked", headers={"Retry-After": "3"})
        return empty_reply()

    @router.route("GET", "/boom")
    def boom(request: Request) -> Reply:
        raise RuntimeError("handler bug")

    return router


def test_routes_replies_and_errors() -> None:
    with LoopbackServer(app()) as server, httpx.Client(base_url=server.url) as http:
        assert server.url.startswith("http://127.0.0.1:") and not server.url.endswith(":0")
        # an encoded "/" stays inside its segment; a trailing slash does not matter; the last repeat wins
        answer = http.get("/items/a%2Fb/parts/wheel/?n=1&n=2")
        assert answer.status_code == 200 and answer.headers["x-seen"] == "1"
        assert answer.json() == {"params": {"item": "a/b", "part": "wheel"}, "query": {"n": "2"}}

        echoed = http.post("/echo", json={"say": "hi"}, headers={"X-Who": "me"})
        assert (echoed.status_code, echoed.text) == (201, "me: hi")
        assert echoed.headers["content-type"].startswith("text/plain")

        deleted = http.delete("/items/x")
        assert (deleted.status_code, deleted.content) == (204, b"")
        locked = http.delete("/items/locked")
        assert (locked.status_code, locked.json(), locked.headers["retry-after"]) == (409, {"detail": "locked"}, "3")

        assert http.get("/echo").status_code == 404, "a route answers its own method only"
        assert http.get("/nowhere").json() == {"detail": "nothing here"}
        failed = http.get("/boom")
        assert (failed.status_code, failed.json()) == (500, {"detail": "internal error"})


def test_stop_hangs_up_on_kept_alive_clients() -> None:
    server = LoopbackServer(app()).start()
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/nowhere").status_code == 404  # the connection is now kept alive
        server.stop()
        server.stop()  # idempotent
        with pytest.raises(httpx.TransportError):
            http.get("/nowhere")
