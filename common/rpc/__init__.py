"""gRPC plumbing: servers, errors as statuses, TLS and allow-lists, interceptors, stream limits, input checks."""
