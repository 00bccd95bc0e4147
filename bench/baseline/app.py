"""The seed's profile and reporting endpoints: Flask over a synchronous redis-py RedisCluster.

Faithful to the seed (separate EXISTS, HSET/HGETALL/UNLINK and XADD commands, keys
``profile:<user>``, one stream ``profile:events``, a sorted set for reads), but with the same
REST paths, bodies and status codes as profilemesh's gateway, so one load script drives both.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request
from redis.cluster import RedisCluster

STREAM = "profile:events"
READS = "profile:reads"  # the seed's sorted set of reads per user (its aggregator fills it)

app = Flask(__name__)
# One client per worker process: gunicorn forks workers after importing the app lazily (no --preload).
r = RedisCluster.from_url(os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:7000"), decode_responses=True)


def _fields() -> dict[str, str] | None:
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not data or not all(isinstance(v, str) for v in data.values()):
        return None
    return data


def _reply(body: dict[str, Any], status: int):
    return jsonify(body), status


def stream_data(user: str, operation: str) -> None:
    r.xadd(STREAM, {"user": user, "type": operation})


@app.post("/profile/<user>")
def post_profile(user: str):
    data = _fields()
    if data is None:
        return _reply({"message": "request body must be a JSON object of strings"}, 400)
    key = "profile:" + user
    if r.exists(key):
        return _reply({"message": "Profile exists"}, 409)
    r.hset(key, mapping=data)
    stream_data(user, "create")
    return _reply({"message": "Profile created for: " + user}, 201)


@app.get("/profile/<user>")
def get_profile(user: str):
    key = "profile:" + user
    if r.exists(key) > 0:
        data = r.hgetall(key)
        stream_data(user, "read")
        return _reply(data, 200)
    return _reply({"message": "Profile not found for " + user}, 404)


@app.patch("/profile/<user>")
def patch_profile(user: str):
    data = _fields()
    if data is None:
        return _reply({"message": "request body must be a JSON object of strings"}, 400)
    key = "profile:" + user
    if r.exists(key) > 0:
        r.hset(key, mapping=data)
        stream_data(user, "update")
        return _reply({"message": "Profile updated for " + user}, 200)
    return _reply({"message": "Profile not found for " + user}, 404)


@app.delete("/profile/<user>")
def delete_profile(user: str):
    key = "profile:" + user
    if r.exists(key) > 0:
        r.unlink(key)
        stream_data(user, "delete")
        return _reply({"message": "Profile deleted for " + user}, 200)
    return _reply({"message": "Profile not found for " + user}, 404)


@app.get("/reporting/profileStats/<n>")
def get_profile_stats(n: str):
    if not n.isdigit() or not 1 <= int(n) <= 1000:
        return _reply({"message": "n must be an integer from 1 to 1000"}, 400)
    scores = r.zrevrangebyscore(READS, "+inf", "-inf", withscores=True, start=0, num=int(n))
    return _reply({"results": [{"user": user, "score": int(score)} for user, score in scores]}, 200)


@app.get("/healthz")
def healthz():
    return _reply({"status": "ok"}, 200)
