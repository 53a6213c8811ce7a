"""Shadow traffic, answer comparison, recorded corpora and contract replays."""
