"""Domain errors. Services raise these; the server bootstrap maps them to gRPC status codes."""

from __future__ import annotations


class InvalidArgument(ValueError):
    """The request is malformed; the message names the offending part."""


class NotFound(LookupError):
    pass


class AlreadyExists(Exception):
    pass


class PartitionMismatch(RuntimeError):
    """The cluster was set up with another partition count; running on would misroute data."""


class Unavailable(Exception):
    """The cluster could not serve the request, or could not confirm it; the message says which."""
