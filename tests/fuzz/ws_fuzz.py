#!/usr/bin/env python3
"""A small, bounded websocket fuzzer for the API's /graphql socket (scripts/fuzz runs it).

For SECONDS, it opens sockets with either protocol (graphql-transport-ws, graphql-ws) and
sends what a hostile or broken client might: valid messages mutated at random, messages
out of order (subscribe before connection_init, a second init), wrong types and shapes,
junk and binary frames, oversized payloads, floods of operations. It never fails on a
refusal (a close code, an error message): what counts is that the API stays up and logs no
panic or internal error, which scripts/fuzz checks after the run.

Usage: ws_fuzz.py HOST:PORT TOKEN SECONDS [SEED]
"""
import asyncio
import json
import random
import sys
import time

import websockets

PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]
QUERIES = [
    "{ products(first: 3) { edges { node { id name rating { count average histogram } } } } }",
    "subscription { reviewAdded(productId: \"00000000-0000-4000-8000-000000000001\") { id rating } }",
    "subscription { ratingChanged(productId: \"00000000-0000-4000-8000-000000000001\") { count } }",
    "mutation { createProduct(input: {name: \"fuzz\"}) { id } }",
    "mutation { addReview(input: {productId: \"00000000-0000-4000-8000-000000000001\", rating: 3, title: \"t\", body: \"b\"}) { id } }",
    "{ __schema { types { name } } }",
]
JUNK = [None, True, 0, -1, 2**63, 1.5e308, "", "x" * 5000, [], {}, [1, [2, [3]]], {"a": {"b": {}}}]


def mutate(value, rng):
    """A random change to a JSON value."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        choice = rng.random()
        if choice < 0.3:
            value.pop(key)
        elif choice < 0.6:
            value[key] = rng.choice(JUNK)
        else:
            value[key] = mutate(value[key], rng)
        return value
    if isinstance(value, str) and rng.random() < 0.7:
        i = rng.randrange(len(value) + 1)
        return value[:i] + rng.choice(["{", "}", "\"", "\\", "\u0000", "💥", "$", "...", "@", "#"]) + value[i:]
    return rng.choice(JUNK)


def message(rng, token, n):
    kind = rng.random()
    if kind < 0.15:
        return {"type": "connection_init", "payload": rng.choice([{"Authorization": f"Bearer {token}"}, {"token": "forged.jwt.x"}, None, "x"])}
    if kind < 0.6:
        msg = {"id": str(n), "type": rng.choice(["subscribe", "start"]),
               "payload": {"query": rng.choice(QUERIES), "variables": rng.choice([{}, None, {"p": 1}])}}
        return mutate(msg, rng) if rng.random() < 0.5 else msg
    if kind < 0.75:
        return {"id": rng.choice([str(n), str(n - 1), "", None]), "type": rng.choice(["complete", "stop", "ping", "pong", "connection_terminate", "nope"])}
    return mutate({"type": "subscribe", "id": str(n), "payload": {"query": rng.choice(QUERIES)}}, rng)


async def one_socket(url, token, rng, until):
    try:
        async with websockets.connect(url, subprotocols=[rng.choice(PROTOCOLS)], max_size=2**22,
                                      open_timeout=5, close_timeout=1) as ws:
            if rng.random() < 0.8:
                await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}))
            for n in range(rng.randrange(1, 40)):
                if time.monotonic() > until:
                    return
                choice = rng.random()
                if choice < 0.05:
                    await ws.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
                elif choice < 0.08:
                    await ws.send("x" * rng.choice([1, 1000, 300 * 1024]))
                else:
                    await ws.send(json.dumps(message(rng, token, n)))
                try:
                    await asyncio.wait_for(ws.recv(), timeout=0.05)
                except asyncio.TimeoutError:
                    pass
    except (websockets.WebSocketException, OSError, asyncio.TimeoutError):
        pass  # a refusal or a close: allowed


async def main():
    address, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    url = f"ws://{address}/graphql"
    until = time.monotonic() + seconds
    sockets = 0
    while time.monotonic() < until:
        batch = [one_socket(url, token, random.Random(rng.random()), until) for _ in range(4)]
        await asyncio.gather(*batch)
        sockets += len(batch)
    print(f"ws-fuzz: {sockets} sockets in {seconds:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
