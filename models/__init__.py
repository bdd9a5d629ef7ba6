"""The shared language of Concord: plain pydantic models, no I/O."""
