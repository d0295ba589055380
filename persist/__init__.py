"""Persistence for memsession: one store protocol, three adapters, the sidecar."""
