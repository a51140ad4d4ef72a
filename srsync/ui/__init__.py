"""The only package that imports rich: progress, tables, dashboards."""
