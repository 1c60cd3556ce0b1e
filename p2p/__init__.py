"""libp2p host setup, wire codecs and the exchange protocols."""
