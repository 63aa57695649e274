"""rankloop: rank model outputs in the browser, train reward models and policies on the rankings."""

__version__ = "0.1.0"
