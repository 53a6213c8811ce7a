"""The payment service: the first endpoint group extracted from the monolith.

Rules: this package never imports `legacy_monolith` (it reaches the monolith over HTTP,
`legacy.py`, as a separate team would) nor the proxy. It serves the monolith's payment contract
(`/api/v1/payments...`) from a database of its own and publishes every change as an event.
"""

__version__ = "0.1.0"
