"""Helpers of app.py: input checks, event handlers, blind-vote storage and the results tab."""
