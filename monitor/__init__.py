"""The external monitor: task state changes → signed webhook events, and on-call alerts."""
