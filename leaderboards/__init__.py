"""Published challenge and paper results (``published/*.csv``), shipped as package data."""
