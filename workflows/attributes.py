"""Search attributes the Temporal UI filters on, shared by workflows and clients.

They live beside the workflows (not in `workers`) so a workflow module imports
nothing but models and the SDK: the sandbox re-imports it, and a worker process
should not pull the client, OpenTelemetry or connectors into it. Values are ids and
enum words only: search attributes are stored unencrypted, so never an email
address or a name.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

ORG_ID = SearchAttributeKey.for_keyword("ConcordOrgId")
PROVIDER = SearchAttributeKey.for_keyword("ConcordProvider")
STATUS = SearchAttributeKey.for_keyword("ConcordStatus")
SEARCH_ATTRIBUTE_KEYS: tuple[SearchAttributeKey, ...] = (ORG_ID, PROVIDER, STATUS)
