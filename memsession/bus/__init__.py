"""Replication transports: the ``Bus`` contract, an in-memory twin and ZeroMQ.

Importing this package never touches ZeroMQ; ``ZmqBus`` imports pyzmq when a
bus is attached to a cache.
"""

from __future__ import annotations

from .base import Bus, BusConfig, Clear, Replicator
from .memory import MemoryBus, MemoryHub
from .sequence import SequenceTracker
from .zmq import ZmqBus

__all__ = ["Bus", "BusConfig", "Clear", "MemoryBus", "MemoryHub", "Replicator", "SequenceTracker", "ZmqBus"]
