"""A real Authlib OAuth 2.0 server for the test suite (issue 9); see ``app.py`` and ``launcher.py``.

Imported as ``authlib_server`` (pytest puts ``tests/`` on ``sys.path``, as for
``conftest``); gunicorn loads ``authlib_server.wsgi:app`` with ``--chdir tests``.
"""
