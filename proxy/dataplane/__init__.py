"""The data plane: the hot path every proxied request takes. Never imports the admin app."""
