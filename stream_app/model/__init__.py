"""Churn scoring: the rule-based prior, the online model, delayed labels and live quality."""
