"""The xDS control plane: catalog → Envoy resources → ADS."""
