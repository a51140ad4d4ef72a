"""Pure sync core: values in, values out; no filesystem, network, clock or logging."""
