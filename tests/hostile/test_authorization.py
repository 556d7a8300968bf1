"""Authorization, as a matrix: what a signed-in user must not be able to do, how each
attempt is made, and which test proves it failed.

- Receive another user's or a foreign group's events: be connected while they are
  published. ``test_cannot_receive_another_users_or_a_foreign_groups_traffic``
- Join them by asking: ``subscribe``/``join`` frames, extra query parameters.
  ``test_cannot_subscribe_to_other_keys``
- Send into a foreign group: ``message.send`` to a group not in the token.
  ``test_cannot_send_into_a_foreign_group``
- Broadcast without the role: ``message.send`` to ``broadcast``, roles claimed in the
  frame and its data. ``test_cannot_broadcast_without_the_role``
- Spoof ``from``: ``from``/``sender`` in message frames (commands: the next row, and
  tests/integration/test_client_frames.py
  ``test_command_is_published_with_from_set_by_the_edge``). ``test_cannot_spoof_from``
- Stop another user's run, running or queued, even with a forged ``from``; read it with
  ``GET /api/runs[/<id>]``. ``test_cannot_stop_or_read_another_users_run``
- See or download another user's export: ``GET /api/exports[/<id>[/file]]``, the
  activity report. ``test_cannot_see_or_download_another_users_export``
- Make a signed-in user's browser act for a foreign page (CSRF): a cross-site
  ``POST /api/exports`` that carries only the ``warren_token`` cookie.
  ``test_the_token_cookie_does_not_authenticate_a_cross_site_post``
- Hold groups or roles the token lacks: change the token's payload.
  test_auth_attacks.py, ``tampered_payload``
- Ask the Cat as another user: ``POST /send`` with another ``user_id``.
  tests/integration/test_cat_relay.py ``test_send_refuses_bad_requests`` (``bob``: 403)

In every "nothing arrives" check, a marker event published after the attempt is the
next frame the user gets: the edge writes events in the order it consumes them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from shared.messaging import Address, Envelope
from shared.messaging.broker import Publisher
from services.excel_worker.server import ExcelWorkerServer
from services.runner.server import RunnerServer
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.excel import http
from tests.support.runner import collect, start_run

SERVICE = Address.service("test")


def event(to: Address, **data: object) -> Envelope:
    return Envelope(type="test.event", to=to, sender=SERVICE, data=dict(data))


async def next_is_marker(client: Client, publisher: Publisher, user: str) -> None:
    """Nothing reached ``client`` before a marker published now."""
    marker = event(Address.user(user), marker=True)
    await publisher.publish_event(marker)
    frame = await client.recv()
    assert frame.get("id") == marker.id, f"{user} got {frame}"


async def get(port: int, path: str, token: str) -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(
        HTTPRequest(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}),
        raise_error=False,
    )
    return response.code, orjson.loads(response.body)


async def test_cannot_receive_another_users_or_a_foreign_groups_traffic(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    alice = await Client.connect(edge.port, token_for("alice", ("team",)))
    eve = await Client.connect(edge.port, token_for("eve", ("elsewhere",)))
    for_alice, for_team = event(Address.user("alice")), event(Address.group("team"))
    await publisher.publish_event(for_alice)
    await publisher.publish_event(for_team)
    assert [(await alice.recv())["id"] for _ in range(2)] == [for_alice.id, for_team.id]
    await next_is_marker(eve, publisher, "eve")


async def test_cannot_subscribe_to_other_keys(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    token = token_for("eve")
    # Query parameters next to the token change nothing: the token alone says who this is.
    connection = await websocket_connect(
        f"ws://127.0.0.1:{edge.port}/ws?token={token}&user=alice&groups=team&sub=alice"
    )
    eve = Client(connection)
    welcome = (await eve.recv())["data"]
    assert {k: welcome[k] for k in ("user", "groups", "roles", "edge")} == {
        "user": "eve", "groups": [], "roles": [], "edge": edge.settings.common.instance_id
    }
    for kind in ("subscribe", "join", "bind", "welcome"):
        reply = await eve.request({"type": kind, "ref": kind, "to": "user:alice",
                                   "data": {"keys": ["user.alice", "group.team", "#"]}})
        assert reply["data"]["code"] == "unknown_type", reply
    await publisher.publish_event(event(Address.user("alice")))
    await publisher.publish_event(event(Address.group("team")))
    await next_is_marker(eve, publisher, "eve")


async def test_cannot_send_into_a_foreign_group(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    member = await Client.connect(edge.port, token_for("alice", ("team",)))
    eve = await Client.connect(edge.port, token_for("eve", ("elsewhere",)))
    for to in ("group:team", "group:TEAM", "group:team "):
        reply = await eve.request({"type": "message.send", "ref": to, "to": to, "data": {}})
        assert reply["data"]["code"] in {"forbidden", "invalid_address"}, reply
    await next_is_marker(member, publisher, "alice")


async def test_cannot_broadcast_without_the_role(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    bob = await Client.connect(edge.port, token_for("bob", (), ("user", "Admin")))
    alice = await Client.connect(edge.port, token_for("alice"))
    reply = await bob.request({
        "type": "message.send", "ref": 1, "to": "broadcast", "roles": ["admin"],
        "data": {"roles": ["admin"]},
    })
    assert reply["data"]["code"] == "forbidden"
    assert "admin" in reply["data"]["message"]
    await next_is_marker(alice, publisher, "alice")
    await next_is_marker(bob, publisher, "bob")

    root = await Client.connect(edge.port, token_for("root", (), ("admin",)))
    allowed = await root.request({"type": "message.send", "ref": 2, "to": "broadcast", "data": {}})
    assert allowed["type"] == "ack"
    assert (await alice.recv())["id"] == allowed["data"]["id"]


async def test_cannot_spoof_from(edge: EdgeServer, token_for: Callable[..., str]) -> None:
    alice = await Client.connect(edge.port, token_for("alice", ("team",)))
    eve = await Client.connect(edge.port, token_for("eve", ("team",)))
    for to in ("user:alice", "group:team"):
        reply = await eve.request({
            "type": "message.send", "ref": to, "to": to, "from": "user:alice",
            "sender": "service:runner", "data": {"from": "user:root"},
        })
        got = await alice.recv()
        assert got["id"] == reply["data"]["id"]
        assert got["from"] == "user:eve"  # the edge's, from the token
        assert got["data"] == {"from": "user:root"}  # data is the sender's, and only data
    # Commands: covered with the envelope read off the work queue in
    # tests/integration/test_client_frames.py (test_command_is_published_with_from_set_by_the_edge);
    # here a forged ``from`` on run.stop is shown not to help (next test).


async def test_cannot_stop_or_read_another_users_run(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    await make_runner(WARREN_RUNNER_MAX_CONCURRENT="1").start()
    alice = await Client.connect(edge.port, token_for("alice"))
    bob = await Client.connect(edge.port, token_for("bob"))
    running = await start_run(alice, "countdown", {"start": 100_000, "interval_s": 0.05}, ref="a")
    await collect(alice, running, until="run.output")
    queued = await start_run(alice, "countdown", {"start": 1, "interval_s": 0}, ref="b")
    await collect(alice, queued, until="run.queued")

    for run_id in (running, queued):
        # ``from`` in the frame is ignored: the command is bob's.
        reply = await bob.request({"type": "run.stop", "ref": run_id, "from": "user:alice",
                                   "data": {"run_id": run_id}})
        refused = await collect(bob, run_id, until="run.error", command_id=reply["data"]["id"])
        assert refused.errors[0]["code"] == "forbidden"
        code, body = await get(edge.port, f"/api/runs/{run_id}", token_for("bob"))
        assert (code, body["error"]) == (404, "not_found")
    code, body = await get(edge.port, "/api/runs", token_for("bob"))
    assert (code, body) == (200, {"runs": []})

    # Alice's runs were not touched: the first still runs, the second still waits.
    events = await collect(alice, running, until="run.output")
    assert events.finished is None
    code, body = await get(edge.port, f"/api/runs/{queued}", token_for("alice"))
    assert body["status"] == "queued"
    for run_id in (queued, running):
        await alice.request({"type": "run.stop", "ref": run_id, "data": {"run_id": run_id}})
        events = await collect(alice, run_id)
        assert events.finished is not None and events.finished["reason"] == "stopped by alice"


async def test_cannot_see_or_download_another_users_export(
    make_edge: Callable[..., EdgeServer], worker: ExcelWorkerServer, exports_dir: Path,
    token_for: Callable[..., str],
) -> None:
    edge = make_edge(WARREN_EXPORTS_DIR=str(exports_dir))
    await edge.start()
    alice, bob = token_for("alice"), token_for("bob")
    client = await Client.connect(edge.port, alice)
    _, _, body = await http(edge.port, "/api/exports", token=alice, method="POST",
                            body={"report": "sample", "params": {"rows": 5}})
    task_id = body["task_id"]
    while not ((frame := await client.recv()).get("type") == "excel.done"
               and frame["data"]["task_id"] == task_id):
        pass

    for path in (f"/api/exports/{task_id}", f"/api/exports/{task_id}/file"):
        status, response, error = await http(edge.port, path, token=bob)
        assert (status, error["error"]) == (404, "not_found"), path
        assert response is not None and not response.body.startswith(b"PK")
    status, _, listed = await http(edge.port, "/api/exports", token=bob)
    assert (status, listed) == (200, {"exports": []})
    # The activity report lists the requester's own work, and takes no user to list.
    status, _, error = await http(edge.port, "/api/exports", token=bob, method="POST",
                                  body={"report": "activity", "params": {"user": "alice"}})
    assert (status, error["error"]) == (400, "invalid_params")
    status, response, _ = await http(edge.port, f"/api/exports/{task_id}/file", token=alice)
    assert status == 200 and response is not None and response.body.startswith(b"PK")


async def test_the_token_cookie_does_not_authenticate_a_cross_site_post(
    make_edge: Callable[..., EdgeServer], worker: ExcelWorkerServer, exports_dir: Path,
    token_for: Callable[..., str],
) -> None:
    edge = make_edge(WARREN_EXPORTS_DIR=str(exports_dir))
    await edge.start()
    bob = token_for("bob")
    url = f"http://127.0.0.1:{edge.port}/api/exports"
    body = orjson.dumps({"report": "sample", "params": {"rows": 1}})
    # What a foreign page's form or no-preflight fetch makes bob's browser send; with
    # the Origin a browser adds, and without (older browsers, privacy settings).
    for origin in ({"Origin": "http://evil.example"}, {}):
        response = await AsyncHTTPClient().fetch(
            HTTPRequest(url, method="POST", body=body, headers={
                "Cookie": f"warren_token={bob}", "Content-Type": "text/plain", **origin,
            }),
            raise_error=False,
        )
        assert response.headers["Content-Type"] == "application/json"
        refused = orjson.loads(response.body)
        assert (response.code, refused["error"]) == (403, "cookie_not_accepted"), refused
        assert "Authorization: Bearer" in refused["message"]
    status, _, listed = await http(edge.port, "/api/exports", token=bob)
    assert (status, listed) == (200, {"exports": []})  # nothing was queued
    # The cookie still reads (GET changes nothing), and a header token still writes.
    response = await AsyncHTTPClient().fetch(
        HTTPRequest(url, headers={"Cookie": f"warren_token={bob}"}), raise_error=False
    )
    assert response.code == 200
    status, _, accepted = await http(edge.port, "/api/exports", token=bob, method="POST",
                                     body={"report": "sample", "params": {"rows": 1}})
    assert (status, accepted["status"]) == (202, "queued")
