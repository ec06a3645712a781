"""The defaults every endpoint shares, in one place."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_BACKLOG = 1024
DEFAULT_STOP_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 10.0
