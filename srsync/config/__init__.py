"""The only package that imports pydantic: config models, loading, validation."""
