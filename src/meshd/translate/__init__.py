"""Pure translation: World (+ proxy) -> Envoy xDS protos. No I/O, no asyncio; returns
(resources, errors) and never mutates its inputs."""
