"""Mailbox providers and platform adapters, behind small protocols (see `protocols`)."""
