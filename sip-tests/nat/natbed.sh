#!/usr/bin/env bash
# NAT test bed: network namespaces for a main site, a stand-by site and two homes, each home
# a phone behind a router that masquerades (nftables, conntrack), joined by a core router.
# Only documentation address ranges, only inside the namespaces this script creates.
#
#   sip-tests/nat/natbed.sh up   PREFIX   # create (PREFIX: a short name, e.g. nat1)
#   sip-tests/nat/natbed.sh down PREFIX   # delete everything PREFIX created
#   ip netns exec PREFIX-p1 <command>     # run something as phone 1 (behind home 1)
#
#   namespace     address            role
#   PREFIX-core   192.0.2.1 198.51.100.1 203.0.113.1 203.0.113.5   the Internet
#   PREFIX-main   192.0.2.2          main node site
#   PREFIX-sb     198.51.100.2       stand-by node site
#   PREFIX-h1     203.0.113.2        home router 1 (public), LAN 192.0.2.129
#   PREFIX-p1     192.0.2.130        phone 1 (behind home 1)
#   PREFIX-h2     203.0.113.6        home router 2 (public), LAN 192.0.2.133
#   PREFIX-p2     192.0.2.134        phone 2 (behind home 2)
#
# The home routers behave like common home routers: outbound flows are masqueraded with a
# random public port per flow (so the flow a phone opened to the main and the one it opened
# to the stand-by have different public ports), and inbound packets are admitted only as
# replies to a flow the phone opened (conntrack). NAT_UDP_TIMEOUT (seconds, default 30) is the
# conntrack timeout of a UDP flow (NAT_UDP_STREAM_TIMEOUT, default 2 x that, once it saw
# replies): a flow idle longer is forgotten and the phone unreachable through it.
# NAT_PORTS=keep makes the routers keep a flow's source port when they can (endpoint-
# independent mapping, as many home routers do): then two phones behind two routers can send
# each other RTP directly once both have sent (bypass media).
set -euo pipefail
cmd="${1:?usage: natbed.sh up|down PREFIX}"
p="${2:?usage: natbed.sh up|down PREFIX}"
udp_timeout="${NAT_UDP_TIMEOUT:-30}"
udp_stream_timeout="${NAT_UDP_STREAM_TIMEOUT:-$((udp_timeout * 2))}"
case "${NAT_PORTS:-random}" in
  random) masquerade="masquerade random" ;;
  keep) masquerade="masquerade" ;;
  *) echo "natbed.sh: NAT_PORTS is random or keep" >&2; exit 2 ;;
esac

namespaces=(core main sb h1 p1 h2 p2)

down() {
  for n in "${namespaces[@]}"; do
    ip netns del "$p-$n" 2>/dev/null || true
  done
}

if [ "$cmd" = down ]; then
  down
  exit 0
fi
[ "$cmd" = up ] || { echo "natbed.sh: unknown command $cmd" >&2; exit 2; }
down
for n in "${namespaces[@]}"; do
  ip netns add "$p-$n"
  ip -n "$p-$n" link set lo up
done

# link NS_A IF_A ADDR_A NS_B IF_B ADDR_B (addresses with prefix length)
link() {
  ip link add "$p-tmp-a" netns "$p-$1" type veth peer name "$p-tmp-b" netns "$p-$4"
  ip -n "$p-$1" link set "$p-tmp-a" name "$2"
  ip -n "$p-$4" link set "$p-tmp-b" name "$5"
  ip -n "$p-$1" addr add "$3" dev "$2"
  ip -n "$p-$4" addr add "$6" dev "$5"
  ip -n "$p-$1" link set "$2" up
  ip -n "$p-$4" link set "$5" up
}

link core main0 192.0.2.1/28 main eth0 192.0.2.2/28
link core sb0 198.51.100.1/28 sb eth0 198.51.100.2/28
link core home1 203.0.113.1/30 h1 wan 203.0.113.2/30
link core home2 203.0.113.5/30 h2 wan 203.0.113.6/30
link h1 lan 192.0.2.129/30 p1 eth0 192.0.2.130/30
link h2 lan 192.0.2.133/30 p2 eth0 192.0.2.134/30

ip -n "$p-main" route add default via 192.0.2.1
ip -n "$p-sb" route add default via 198.51.100.1
ip -n "$p-h1" route add default via 203.0.113.1
ip -n "$p-h2" route add default via 203.0.113.5
ip -n "$p-p1" route add default via 192.0.2.129
ip -n "$p-p2" route add default via 192.0.2.133
# The core has no route to the homes' LANs: private networks are not reachable from outside.

for n in core h1 h2; do
  ip netns exec "$p-$n" sysctl -qw net.ipv4.ip_forward=1
done
for n in h1 h2; do
  ip netns exec "$p-$n" sysctl -qw net.netfilter.nf_conntrack_udp_timeout="$udp_timeout" \
    net.netfilter.nf_conntrack_udp_timeout_stream="$udp_stream_timeout" 2>/dev/null || true
  ip netns exec "$p-$n" nft -f - <<NFT
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" $masquerade
  }
}
table inet filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
    counter comment "inbound, not a reply: dropped"
  }
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname "lo" accept
    iifname "lan" accept
  }
}
NFT
  # Conntrack must see the flows from the start (the timeouts above are per namespace).
  ip netns exec "$p-$n" sysctl -qw net.netfilter.nf_conntrack_udp_timeout="$udp_timeout" \
    net.netfilter.nf_conntrack_udp_timeout_stream="$udp_stream_timeout"
done
echo "natbed: $p up"
