"""The apparatus configuration: presets, the locked `autoresearch.json`, where data lives. No torch here."""
