"""Loading YAML with source positions and turning validation errors into file:line:col messages."""
