#!/bin/sh
# One-time set-up of a ringlb host in a keepalived (VRRP) pair, run at boot
# before keepalived (docs/ha.md, "Active/passive with keepalived"):
#
#   ringlb-ha-setup.sh VIP PORTS PEER
#     VIP    the floating IPv4 address (e.g. 192.0.2.10)
#     PORTS  the service ports, comma-separated (e.g. 80,443)
#     PEER   the other ringlb host's address on the clients' network
#
# 1. The VIP on lo, permanently, with arp_ignore=1 / arp_announce=2: this
#    host accepts packets for the VIP even while it is the backup, but only
#    the master (keepalived adds the VIP to the clients' interface) answers
#    ARP for it.
# 2. Stray-flow forwarding, armed by ringlb-notify.sh on the master only:
#    a packet for the VIP that belongs to no connection this host has seen
#    (conntrack: new or invalid, i.e. a FIN or reset it cannot place, and
#    not a SYN) is routed to the peer, where it may
#    belong to a connection the peer accepted before the VIP moved (a
#    drained host finishing its transfers). Elsewhere strays are dropped. Routing by firewall mark needs
#    the `local` rule after the mark's rule, hence the move from priority
#    0 to 200 (every unmarked packet still meets it first).
set -eu
vip="$1" ports="$2" peer="$3"
mark=0x52 table=152

ip addr replace "$vip/32" dev lo
sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
sysctl -qw net.ipv4.ip_forward=1
# Only packets that fit no connection at all count as invalid (not a
# segment outside conntrack's idea of the window).
sysctl -qw net.netfilter.nf_conntrack_tcp_be_liberal=1 2>/dev/null || true
# Forwarding strays back out of the interface they came in on must not
# send the clients ICMP redirects.
sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0
for f in /proc/sys/net/ipv4/conf/*/send_redirects; do echo 0 >"$f"; done
# A stray's reply leaves the peer, not us: loose reverse-path checks.
sysctl -qw net.ipv4.conf.all.rp_filter=2

if ! ip rule show | grep -q "^200:.*lookup local"; then
  ip rule add pref 200 lookup local
  ip rule del pref 0 lookup local 2>/dev/null || true
fi
ip rule show | grep -q "^100:.*fwmark $mark" || ip rule add pref 100 fwmark "$mark" lookup "$table"
ip route replace "$vip/32" via "$peer" table "$table"

nft -f - <<NFT
table inet ringlb_ha
delete table inet ringlb_ha
table inet ringlb_ha {
  chain strays {
    # ringlb-notify.sh: "ct mark set $mark" (forward) on the master, "drop"
    # elsewhere. Dropped, not answered with a reset: the sender retransmits,
    # and by then the host that became master has armed its forwarding (a
    # stray met before that must not leave an unmarked conntrack entry).
    counter drop
  }
  chain pre {
    type filter hook prerouting priority mangle; policy accept;
    ip daddr $vip tcp dport { $ports } ct state { new, invalid } tcp flags & (syn | ack) != syn counter jump strays
    ct mark $mark counter meta mark set $mark
  }
}
NFT
