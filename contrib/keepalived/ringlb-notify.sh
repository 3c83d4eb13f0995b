#!/bin/sh
# keepalived notify hook for a ringlb pair (docs/ha.md):
#   notify "/etc/keepalived/ringlb-notify.sh"
# keepalived appends: TYPE NAME STATE PRIORITY.
#
# MASTER: arm stray-flow forwarding (ringlb-ha-setup.sh): packets for the
# VIP of connections this host never saw go to the peer, so the old
# master's established connections (a drain, a planned switch-over) finish
# there. Any other state: drop strays instead, so only one host ever
# forwards and a packet cannot bounce between the two.
set -u
state="${3:-}"
mark=0x52
if [ "$state" = MASTER ]; then
  rule="counter meta mark set $mark ct mark set $mark"
else
  rule="counter drop"
fi
# One transaction: the chain is never empty in between.
nft -f - <<NFT
flush chain inet ringlb_ha strays
add rule inet ringlb_ha strays $rule
NFT
logger -t ringlb-notify "VRRP ${2:-?} is $state: stray forwarding $([ "$state" = MASTER ] && echo on || echo off)" 2>/dev/null || true
exit 0
