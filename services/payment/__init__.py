"""The payment service: the first endpoint group extracted from the monolith."""
