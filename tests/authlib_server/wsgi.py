"""gunicorn entry: ``gunicorn --chdir tests authlib_server.wsgi:app`` (settings from the environment)."""

from authlib_server.app import create_app

app = create_app()
