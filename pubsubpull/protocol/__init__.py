"""The wire protocol both sides share: how bodies, cursors and headers look."""
