"""claimcheck: a security test harness for OAuth 2.0 authorization-code persistence.

The public face::

    import harness
    with harness.connect() as db:                 # embedded PostgreSQL unless a URL is given
        target = harness.load_target("faithful", db, pepper="...")
"""

import logging

from harness.database import Database, connect
from harness.targets import known_targets, load_target

__all__ = ["Database", "connect", "known_targets", "load_target"]
__version__ = "0.1.0"

# A library stays quiet unless the application configures logging.
logging.getLogger("harness").addHandler(logging.NullHandler())
