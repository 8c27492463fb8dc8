"""Signed change notifications PUT to subscribers' callbacks, in order, with retries."""
