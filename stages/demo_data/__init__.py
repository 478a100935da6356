"""demo_data: the built-in digits dataset (`digits`, `cli`)."""
