"""strangler: the reverse proxy and control plane that move a monolith's endpoints one at a time.

Rules: `proxy` knows nothing of the monolith's or the services' code, only their URLs and
commands; the data plane never imports the admin app.
"""

__version__ = "0.1.0"
