"""Fails at import time, before opening Pipes."""

import proto_module_that_does_not_exist  # noqa: F401
