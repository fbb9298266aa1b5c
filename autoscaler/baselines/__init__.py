"""Other autoscalers' policies, re-implemented for comparison only."""
