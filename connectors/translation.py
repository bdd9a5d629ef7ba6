"""What a connector returns for a provider record it cannot translate.

One malformed record (a wrong type, a shape the translation did not expect, data
the canonical model refuses) must not fail the page it came in: the good records
beside it still have to sync. It becomes a `SideRecord` without a contact whose
`problems` say what was wrong, so the planner quarantines it as malformed input.

The problems name fields and error kinds only. Exception messages are left out on
purpose: pydantic's carry the offending input (an email address, a name), and the
problems end up in quarantine lists, logs and Temporal failures.
"""

from __future__ import annotations

from pydantic import ValidationError

from models.record import Side, SideRecord


def untranslatable(side: Side, external_id: object, exc: Exception) -> SideRecord:
    """The record stands for its id only, with value-free `problems`."""
    return SideRecord(
        side=side,
        external_id=external_id if isinstance(external_id, str) else "",
        content=None,
        problems=describe(exc),
    )


def describe(exc: Exception) -> tuple[str, ...]:
    if isinstance(exc, ValidationError):
        return tuple(
            f"{'.'.join(map(str, err['loc'])) or 'record'} could not be read ({err['type']})"
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        )
    return (f"the record could not be translated ({type(exc).__name__})",)
