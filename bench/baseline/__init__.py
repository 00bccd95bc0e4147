"""The seed's design, re-implemented faithfully for side-by-side benchmarks (never used in production).

A Flask app on gunicorn sync workers calling the cluster with synchronous redis-py, one command
at a time (EXISTS, then HSET/HGETALL/UNLINK, then XADD), exactly as the seed blog post does.
"""
