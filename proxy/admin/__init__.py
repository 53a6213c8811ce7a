"""The control plane's HTTP API (FastAPI), served on the admin listener only, never on a
data-plane listener. The data plane never imports this package."""
