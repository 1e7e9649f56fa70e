"""Production serving: ``gunicorn -c gunicorn.conf.py`` (workers run with ``klarna-om worker``).

The settings live in ``plugin/gunicorn_conf.py`` so that they ship with the package: from an
installed copy, ``gunicorn -c python:plugin.gunicorn_conf`` is the same configuration.
"""

from plugin.gunicorn_conf import *  # noqa: F403 - gunicorn reads the settings from this module's globals
