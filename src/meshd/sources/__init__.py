"""Config sources feeding the ConfigStore: a directory of YAML (standalone) and, later, Kubernetes."""
