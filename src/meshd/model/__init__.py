"""The model: ConfigStore (the only mutable state) and World (an immutable indexed snapshot)."""
