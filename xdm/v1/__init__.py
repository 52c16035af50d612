"""GENERATED protobuf and gRPC modules: do not edit. Regenerate with `python -m xdm.codegen`."""
