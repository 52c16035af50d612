"""Exceptions that carry a message a person can act on; process edges turn them into one line."""


class XdmError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(XdmError):
    """A configuration key or value is wrong; the message names the key."""


class ServiceError(XdmError):
    """An external service (broker, vector store, child process) could not be reached or started."""
