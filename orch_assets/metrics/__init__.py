"""Business metrics for analysts and the UI: views in the metrics schema, numbers as metadata."""
