"""Interop check with the Python `websockets` library (used by tests/interop.rs).

Usage: client.py ws://127.0.0.1:PORT (or wss://localhost:PORT, trusting the
certificate in the file named by INTEROP_CA)
Exits 0 when every check passed; prints what failed otherwise.
"""
import asyncio
import json
import os
import ssl
import sys

import websockets


def connect(url, **kw):
    if url.startswith("wss://"):
        kw["ssl"] = ssl.create_default_context(cafile=os.environ["INTEROP_CA"])
    return websockets.connect(url, **kw)


async def recv_json(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def main(base):
    async with connect(f"{base}/ws/lobby?user=py-ann") as ann:
        welcome = await recv_json(ann)
        assert welcome["type"] == "welcome" and welcome["user"] == "py-ann", welcome
        joined = await recv_json(ann)
        assert joined["type"] == "joined" and joined["room"] == "lobby", joined
        async with connect(f"{base}/ws/lobby?user=py-bob") as bob:
            await recv_json(bob)
            await recv_json(bob)
            event = await recv_json(ann)
            assert event == {"type": "user_joined", "room": "lobby", "user": "py-bob", "members": 2}, event
            await bob.send(json.dumps({"type": "message", "room": "lobby", "data": {"text": "héllo"}}))
            msg = await recv_json(ann)
            assert msg == {"type": "message", "room": "lobby", "from": "py-bob", "data": {"text": "héllo"}}, msg
            await ann.send(json.dumps({"type": "private", "to": "py-bob", "data": 42, "ref": "p1"}))
            private = await recv_json(bob)
            assert private == {"type": "private", "from": "py-ann", "data": 42}, private
            await bob.send(b"\x00\x01binary")
            assert await asyncio.wait_for(ann.recv(), 10) == b"\x00\x01binary"
        left = await recv_json(ann)
        assert left["type"] == "user_left" and left["user"] == "py-bob", left
        await ann.send("{broken")
        err = await recv_json(ann)
        assert err["type"] == "error" and err["code"] == "bad_json", err
    async with connect(f"{base}/echo", max_size=None) as echo:
        for payload in ["text ✓", b"\xff" * 60000]:
            await echo.send(payload)
            assert await asyncio.wait_for(echo.recv(), 10) == payload
    print("python websockets interop: ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
