"""EnvoyFilter patches applied to the Envoy config meshd generates for a proxy (pure): which filters select a
proxy (selection.py), what a patch's match selects (match.py), Istio's merge semantics (merge.py), the
operations (apply.py)."""
