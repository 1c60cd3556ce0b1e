# NixOS module for a ferry node (example). In configuration.nix:
#
#   imports = [ ./ferry.nix ];
#   services.ferry = {
#     enable = true;
#     package = pkgs.callPackage ./ferry-package.nix { };   # ferry, packaged from this repository
#     settings = {
#       bootstrap = [ "/ip4/192.0.2.7/tcp/4737/p2p/12D3KooW..." ];
#       policy = "/etc/ferry/policy.toml";
#     };
#     cachePublicKey = "ferry-thishost-1:...";   # the line in /var/lib/ferry/cache.pub after the first start
#   };
#
# Every setting in docs/configuration.md can go in `settings`.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ferry;
  toml = pkgs.formats.toml { };
  gateway = cfg.settings.gateway or "127.0.0.1:4738";
in
{
  options.services.ferry = {
    enable = lib.mkEnableOption "the ferry peer-to-peer substitution node";
    package = lib.mkOption {
      type = lib.types.package;
      description = "The ferry package (provides bin/ferry).";
    };
    dataDir = lib.mkOption {
      type = lib.types.str;
      default = "/var/lib/ferry";
      description = "The node's data directory: store, identity, keys.";
    };
    settings = lib.mkOption {
      type = toml.type;
      default = { };
      description = "node.toml settings; see docs/configuration.md.";
    };
    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Open TCP 4737 for peers.";
    };
    cachePublicKey = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "The node's Nix key (cache.pub); when set, Nix substitutes from the node's gateway.";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.ferry = {
      description = "ferry peer-to-peer Nix substitution node";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # Lazily realised store paths are valid to Nix: mounted again before it runs.
      before = [ "nix-daemon.service" "nix-daemon.socket" ];
      # `ferry realise` registers paths with nix-store.
      path = [ config.nix.package ];
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/ferry node run --data-dir ${cfg.dataDir} --config ${toml.generate "node.toml" cfg.settings}";
        Restart = "on-failure";
        RestartSec = "2s";
        # Keep the fanotify holder (lazy mounts) alive across restarts; see contrib/systemd/ferry.service.
        KillMode = "process";
        StateDirectory = "ferry";
        StateDirectoryMode = "0700";
        UMask = "0077";
        # No mount namespace (ProtectSystem, PrivateTmp, ...): lazy mounts must be visible
        # outside the service. See contrib/systemd/ferry.service.
        NoNewPrivileges = true;
        ProtectHostname = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RestrictNamespaces = true;
        LockPersonality = true;
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
        SystemCallArchitectures = "native";
        CapabilityBoundingSet = [ "CAP_SYS_ADMIN" "CAP_DAC_OVERRIDE" "CAP_DAC_READ_SEARCH" "CAP_CHOWN" "CAP_FOWNER" ];
        LimitNOFILE = 65536;
      };
    };
    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ 4737 ];
    nix.settings = lib.mkIf (cfg.cachePublicKey != null) {
      extra-substituters = [ "http://${gateway}" ];
      extra-trusted-public-keys = [ cfg.cachePublicKey ];
    };
  };
}
