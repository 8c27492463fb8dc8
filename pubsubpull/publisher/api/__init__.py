"""The HTTP API (plain Django JSON views): ``include("pubsubpull.urls")``.

``auth`` decides who may read what; ``responses`` holds the JSON error and
method-guard helpers every pubsubpull endpoint shares.
"""
