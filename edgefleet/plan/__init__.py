"""Planning: (recipe, profile) -> a DAG of build steps. Pure: no I/O, no imports of converters."""
