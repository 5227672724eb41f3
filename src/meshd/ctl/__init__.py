"""`meshd proxy-status` and the other commands that read a running meshd, as istioctl reads istiod."""
