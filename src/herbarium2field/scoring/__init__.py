"""Numbers from scores: metrics, prototypes, confidence thresholds, combining photos (numpy only)."""
