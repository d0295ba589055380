"""memsession: web sessions in every worker's memory, kept identical, never lost."""

from .bus import BusConfig, MemoryBus, MemoryHub, ZmqBus
from .cache import Eviction, ExpiringLRUCache
from .clock import Clock, HybridClock, SystemClock
from .config import Config
from .errors import (
    BusError,
    CacheClosed,
    ConfigError,
    InvalidSessionId,
    MemsessionError,
    RecordRefused,
    SessionDataError,
    SessionDestroyed,
    SessionError,
    SessionTooLarge,
    SessionUnavailable,
    SignatureError,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreRejected,
    StoreUnavailable,
    WireError,
)
from .hub import Hub, HubConfig
from .segmented import SegmentedLRUCache
from .session import Record, is_valid_sid, new_id, session_key
from .session_cache import SessionCache

__version__ = "0.1.0"

__all__ = [
    "BusConfig",
    "BusError",
    "CacheClosed",
    "Clock",
    "Config",
    "ConfigError",
    "Eviction",
    "ExpiringLRUCache",
    "Hub",
    "HubConfig",
    "HybridClock",
    "InvalidSessionId",
    "MemoryBus",
    "MemoryHub",
    "MemsessionError",
    "Record",
    "RecordRefused",
    "SegmentedLRUCache",
    "SessionCache",
    "SessionDataError",
    "SessionDestroyed",
    "SessionError",
    "SessionTooLarge",
    "SessionUnavailable",
    "SignatureError",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "SystemClock",
    "WireError",
    "ZmqBus",
    "is_valid_sid",
    "new_id",
    "session_key",
]
