"""Real-time churn warnings from an app's live event stream."""

__version__ = "0.1.0"
