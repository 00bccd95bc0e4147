"""The `profilemesh` command: status, the gRPC API by hand, and a live view of the metrics."""
