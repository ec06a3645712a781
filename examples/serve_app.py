"""An app for ``hamanet serve``: an echo server that greets each connection with the pid
of the process serving it, so a client can see the connections spread over processes.

    .venv/bin/python -m hamanet serve serve_app:Echo --app-dir examples --processes 4

Then ``nc 127.0.0.1 8080`` a few times: each says ``hamanet serve pid N`` and echoes what
you type. ``kill -HUP`` the supervisor to reload this file (new pids, no connection
refused), ``kill -9`` one of the pids to see it restarted, Ctrl-C to stop them all.

``serve_app:Echo`` names the Handler subclass (each process makes one instance);
``serve_app:create`` names a function that returns the handler, for set-up that needs
code (reading a configuration, opening a database).
"""

import os

import hamanet


class Echo(hamanet.Handler):
    def on_connect(self, session):
        session.write(f"hamanet serve pid {os.getpid()}\n".encode())

    def on_recv(self, session, data):
        session.write(data)


def create():
    return Echo()
