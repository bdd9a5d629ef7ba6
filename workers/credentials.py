"""Moved to `connectors.credentials` (activities build credentials, so they sit below
the workers). This name stays only so older imports keep working."""

from connectors.credentials import *  # noqa: F401,F403
from connectors.credentials import CredentialFactory, ProviderConfig, VaultGoogleCredentials, VaultTokenSource  # noqa: F401
