"""The billing service keeps its own copy of some customer attributes (see issue 6)."""
