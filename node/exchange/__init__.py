"""The exchange: serving and fetching chunks and claims over libp2p."""
