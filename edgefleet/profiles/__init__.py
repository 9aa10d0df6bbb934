"""Target profiles: one YAML per device target, validated once at load."""
