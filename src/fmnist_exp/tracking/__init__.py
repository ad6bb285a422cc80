"""MLflow behind one boundary: the only code that touches an MLflow client or run object."""
