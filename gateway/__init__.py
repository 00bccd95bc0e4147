"""HTTP gateway: the public REST paths, translated to gRPC calls from the protos' google.api.http rules."""
