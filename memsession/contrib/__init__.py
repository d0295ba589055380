"""Web integrations: plain WSGI, Flask, Django, ASGI/Starlette.

Each lives in its own module and imports its framework only there; import
the one you use (``memsession.contrib.flask``, ``memsession.contrib.django``,
``memsession.contrib.asgi``, ``memsession.contrib.wsgi``).
"""
