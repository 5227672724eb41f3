"""The push loop: debounced store changes -> a new World and generation (meshd.generate) -> the hub
that wakes the ADS streams (meshd.xds). The async edge of generation."""
