"""crossview: build cross-view geolocalization training data (photos paired with overhead chips)."""

__version__ = "0.1.0"
