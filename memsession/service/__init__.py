"""The composition layer: where the core (``memsession``) and persistence (``persist``) meet.

Only the modules here import both: the sidecar (a hub that owns a store),
acknowledged writes, its HTTP status server, the gunicorn wiring and the
``memsession`` command. Nothing in the core or in ``persist`` imports this
package, so the layers point one way: core <- persist <- service.
"""
