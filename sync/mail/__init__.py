"""The mail kind's pure rules: which messages are logged, how copies in several
mailboxes become one thread, what a log may show, who becomes a lead, and which
records a message is attached to. Nothing here does I/O; activities feed it what
the mailbox and the platform answered and act on what it decides.
"""
