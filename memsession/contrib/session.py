"""The session a request sees: a dict that tracks what the request changed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Session", "diff"]

_MISSING = object()


def diff(base: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(keys of data that differ from base, with their values, keys of base not in data)``.

    Values are compared whole, so a nested mutation (``s["cart"].append(x)``)
    counts as setting ``cart``.
    """
    changed = {}
    for key, value in data.items():
        old = base.get(key, _MISSING)
        # type() guards against 1 == True == 1.0 hiding a change of type.
        if old is _MISSING or type(old) is not type(value) or old != value:
            changed[key] = value
    removed = [key for key in base if key not in data]
    return changed, removed


class Session(dict):  # type: ignore[type-arg]
    """The session as the application sees it: a dict plus a few attributes.

    ``sid`` is None until the session is first stored. ``new`` says no cookie
    brought it. ``modified`` is set by every dict mutation and may be set by
    hand (as in Flask) to re-send the cookie; nested mutations are found at
    save time anyway. ``regenerate()`` gives the session a new id at the end
    of the request (do it at login), ``destroy()`` ends it.
    """

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        sid: str | None = None,
        version: int = 0,
        base: Mapping[str, Any] | None = None,
        had_cookie: bool = False,
        refresh: bool = False,
    ) -> None:
        super().__init__(data or ())
        self.sid = sid
        #: The stamp ``(version, origin)`` of the user's last change (what the cookie names).
        self.version = version
        self.origin = 0
        self.new = sid is None
        self.modified = False
        self.accessed = had_cookie
        self.had_cookie = had_cookie
        # The data this request started from; compared at save to find its own changes.
        self._base: Mapping[str, Any] = base if base is not None else {}
        self._refresh = refresh
        self._regenerate = False
        self._destroy = False
        self._cleared = False

    # Every mutator marks the session modified, as Flask's and Django's sessions do.
    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.modified = True

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.modified = True

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self.modified = True
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        item = super().popitem()
        self.modified = True
        return item

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self.modified = True
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self.modified = True

    def clear(self) -> None:
        """Empty the session; saved as a replacement of the whole session, not a merge."""
        super().clear()
        self.modified = True
        self._cleared = True

    def __ior__(self, other: Any) -> Session:  # type: ignore[override,misc]
        self.update(other)
        return self

    def regenerate(self) -> None:
        """Move the data to a new id when saved; the old id is destroyed everywhere.

        Do this at login (Flask with Flask-Login does it by itself), so a
        cookie planted before the login is never the one logged in.
        """
        self._regenerate = True
        self.modified = True

    def destroy(self) -> None:
        """End the session: data gone here now, and everywhere once saved."""
        super().clear()
        self._destroy = True
        self.modified = True

    def changes(self) -> tuple[dict[str, Any], list[str]]:
        """``(keys set with their values, keys deleted)`` since the request began."""
        return diff(self._base, self)

    def needs_write(self) -> bool:
        """Whether saving will write to the cache (as opposed to only re-sending the cookie)."""
        if self._destroy or self._regenerate or self._cleared:
            return True
        changed, removed = self.changes()
        return bool(changed or removed)
