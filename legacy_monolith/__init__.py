"""The legacy mobile-commerce backend: the system the strangler toolkit migrates away from.

Rules: this package imports nothing of the toolkit (`proxy`, `services`), and once it exists no
migration step edits it. Every migration tool reaches it through HTTP or its database only.
"""

__version__ = "4.7.2"
