"""Moved to `models.errors` (the error hierarchy keyed to recovery is shared by every
layer, the store included). This name stays only so older imports keep working."""

from models.errors import *  # noqa: F401,F403
from models.errors import ConnectorError  # noqa: F401
