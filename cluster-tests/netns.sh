#!/usr/bin/env bash
# netns.sh — network-namespace harness for multi-process cluster fault tests.
#
# Topology for `create PREFIX N`:
#
#   ${PREFIX}hub   : bridge "br0" (IP .254, for the test's clients) + one veth end "p<i>" per node
#   ${PREFIX}<i>   : "lo" up, veth end "eth0" with ${VK_SUBNET}.<i>/24,
#                    nftables table `inet vkfault` (chains input/output,
#                    filter hooks, policy accept) for fault rules.
#
# Nothing is created in the root namespace: the veth pair is created
# inside the hub namespace and its node end is placed straight into the
# node namespace, so host interfaces, routes and rulesets are untouched.
# Because every cluster has its own hub, two clusters with different
# prefixes can use the same subnet at the same time.
#
# Subcommands (run as root):
#   create  PREFIX N        (re)create nodes 1..N and the hub (idempotent)
#   destroy PREFIX N        kill processes in, and delete, the nodes + hub
#   cut     PREFIX A B      drop all IP traffic between nodes A and B
#   isolate PREFIX N A      cut A from every other node 1..N
#   heal    PREFIX N        flush the vkfault chains of nodes 1..N
#   exec    PREFIX I CMD... exec CMD in node I (PID stays that of CMD)
#   ip      I               print the IP of node I
#   show    PREFIX N        print the vkfault ruleset of nodes 1..N
#
# Environment:
#   VK_SUBNET   first three octets of the /24 (default 10.99.0)
#   VK_CUT_OUTPUT=0  cut/isolate add only the input-chain drops, so loss
#               is silent for the sender. By default output drops are
#               added too, and a UDP send to a cut peer fails with EPERM
#               (quinn-udp logs that as a warning and treats it as loss).
#
# PREFIX must match [A-Za-z][A-Za-z0-9_-]* (at most 32 chars) and must
# NOT end in a digit: otherwise node 12 of prefix "vk" (vk12) would be
# node 2 of prefix "vk1".
set -euo pipefail

VK_SUBNET="${VK_SUBNET:-10.99.0}"
readonly TABLE="vkfault"
readonly CUT_TAG="vkfault-cut"

die() { echo "netns.sh: $*" >&2; exit 1; }

usage() {
    sed -n '/^# Subcommands/,/^# node 2 of prefix/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

check_prefix() {
    local p="$1"
    [[ "$p" =~ ^[A-Za-z][A-Za-z0-9_-]{0,31}$ ]] \
        || die "bad PREFIX '$p' (want [A-Za-z][A-Za-z0-9_-]*, max 32 chars)"
    [[ "$p" =~ [0-9]$ ]] && die "PREFIX '$p' must not end in a digit"
    return 0
}

check_subnet() {
    local o re='^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$'
    local IFS=.
    # shellcheck disable=SC2206
    local parts=($VK_SUBNET)
    [[ ${#parts[@]} -eq 3 && "$VK_SUBNET" != *. ]] \
        || die "VK_SUBNET '$VK_SUBNET' must be three octets, e.g. 10.99.0"
    for o in "${parts[@]}"; do
        [[ "$o" =~ $re ]] || die "VK_SUBNET '$VK_SUBNET' has a bad octet '$o'"
    done
}

# check_index NAME VALUE MAX
check_index() {
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"
    (( $2 <= $3 )) || die "$1 must be <= $3, got '$2'"
}

node_ip() { echo "${VK_SUBNET}.$1"; }

ns_exists() { [[ -e "/run/netns/$1" ]]; }

# Run nft inside a node namespace.
nsnft() { local ns="$1"; shift; ip netns exec "$ns" nft "$@"; }

require_node() {
    ns_exists "$1" || die "namespace '$1' does not exist (did you run create?)"
}

# Every namespace belonging to PREFIX that exists now: PREFIX<digits> and
# PREFIXhub. This catches leftovers of a crashed run with a larger N too.
existing_namespaces() {
    local prefix="$1" name
    [[ -d /run/netns ]] || return 0
    for name in /run/netns/*; do
        name="${name##*/}"
        if [[ "$name" == "${prefix}hub" ]] \
           || { [[ "$name" == "${prefix}"* ]] && [[ "${name#"$prefix"}" =~ ^[0-9]+$ ]]; }; then
            echo "$name"
        fi
    done
}

delete_ns() {
    local ns="$1" pids i
    ns_exists "$ns" || return 0
    # A process left in a namespace keeps it alive (and its sockets, data
    # files, ...) after `ip netns delete` — kill what a crashed run left.
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        for (( i = 0; i < 50; i++ )); do
            [[ -z "$(ip netns pids "$ns" 2>/dev/null || true)" ]] && break
            sleep 0.1
        done
    fi
    ip netns delete "$ns" 2>/dev/null || { ns_exists "$ns" && die "cannot delete namespace '$ns'"; }
    return 0
}

cmd_destroy() {
    local prefix="$1" n="$2" i ns
    check_prefix "$prefix"
    check_index N "$n" 254
    for (( i = 1; i <= n; i++ )); do
        delete_ns "${prefix}${i}"
    done
    # Leftovers with an index > N, and the hub (deleting the hub removes
    # the bridge and, with it, the hub ends of all veth pairs).
    while read -r ns; do
        [[ -n "$ns" ]] && delete_ns "$ns"
    done < <(existing_namespaces "$prefix")
    return 0
}

cmd_create() {
    local prefix="$1" n="$2" hub i ns
    check_prefix "$prefix"
    check_subnet
    check_index N "$n" 254
    hub="${prefix}hub"

    # Idempotent: remove whatever is left from a previous (crashed) run.
    cmd_destroy "$prefix" "$n"

    ip netns add "$hub"
    ip -n "$hub" link set lo up
    ip -n "$hub" link add br0 type bridge stp_state 0 forward_delay 0
    # Built-in br_netfilter would pass bridged frames through the hub's
    # netfilter hooks; the hub has no rules, but keep it a plain switch.
    ip netns exec "$hub" sh -c \
        'for f in /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables /proc/sys/net/bridge/bridge-nf-call-arptables; do [ -w "$f" ] && echo 0 > "$f"; done; exit 0'
    ip -n "$hub" link set br0 up
    # The test's clients live in the hub: it gets the .254 address, so a
    # socket bound there reaches every node (cuts only affect node pairs).
    ip -n "$hub" addr add "${VK_SUBNET:-10.99.0}.254/24" dev br0

    for (( i = 1; i <= n; i++ )); do
        ns="${prefix}${i}"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # Create the pair inside the hub and put the node end directly into
        # the node namespace: names "p<i>" (hub) and "eth0" (node) are <= 15
        # chars and cannot clash with anything on the host.
        ip -n "$hub" link add "p${i}" type veth peer name eth0 netns "$ns"
        ip -n "$hub" link set "p${i}" master br0
        ip -n "$hub" link set "p${i}" up
        # No IPv6 on the cluster link (the faults only match IPv4
        # addresses); ::1 on lo stays.
        ip netns exec "$ns" sh -c 'echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6' 2>/dev/null || true
        ip -n "$ns" addr add "$(node_ip "$i")/24" dev eth0
        ip -n "$ns" link set eth0 up
        nsnft "$ns" -f - <<EOF
table inet ${TABLE} {
    chain input {
        type filter hook input priority filter; policy accept;
    }
    chain output {
        type filter hook output priority filter; policy accept;
    }
}
EOF
    done

    # Wait (bounded) until every node's link is up.
    for (( i = 1; i <= n; i++ )); do
        local t=0
        until ip -n "${prefix}${i}" -o link show eth0 | grep -q 'state UP'; do
            (( ++t > 50 )) && die "eth0 in ${prefix}${i} did not come up"
            sleep 0.1
        done
    done
}

# add_drop NS OTHER_IP TAG: drop everything to/from OTHER_IP in NS.
add_drop() {
    local ns="$1" other="$2" tag="$3"
    if nsnft "$ns" -a list chain inet "$TABLE" input | grep -qF "comment \"$tag\""; then
        return 0 # already cut
    fi
    local rules="add rule inet ${TABLE} input ip saddr ${other} counter drop comment \"${tag}\""
    if [[ "${VK_CUT_OUTPUT:-1}" != 0 ]]; then
        rules+=$'\n'"add rule inet ${TABLE} output ip daddr ${other} counter drop comment \"${tag}\""
    fi
    nsnft "$ns" -f - <<<"$rules"
}

do_cut() {
    local prefix="$1" a="$2" b="$3" lo hi tag
    [[ "$a" != "$b" ]] || die "cannot cut node $a from itself"
    require_node "${prefix}${a}"
    require_node "${prefix}${b}"
    if (( a < b )); then lo=$a hi=$b; else lo=$b hi=$a; fi
    tag="${CUT_TAG} ${lo}-${hi}"
    add_drop "${prefix}${a}" "$(node_ip "$b")" "$tag"
    add_drop "${prefix}${b}" "$(node_ip "$a")" "$tag"
}

cmd_cut() {
    local prefix="$1" a="$2" b="$3"
    check_prefix "$prefix"; check_subnet
    check_index A "$a" 254; check_index B "$b" 254
    do_cut "$prefix" "$a" "$b"
}

cmd_isolate() {
    local prefix="$1" n="$2" a="$3" j
    check_prefix "$prefix"; check_subnet
    check_index N "$n" 254; check_index A "$a" "$n"
    for (( j = 1; j <= n; j++ )); do
        (( j == a )) || do_cut "$prefix" "$a" "$j"
    done
}

cmd_heal() {
    local prefix="$1" n="$2" i
    check_prefix "$prefix"
    check_index N "$n" 254
    for (( i = 1; i <= n; i++ )); do
        require_node "${prefix}${i}"
        nsnft "${prefix}${i}" -f - <<EOF
flush chain inet ${TABLE} input
flush chain inet ${TABLE} output
EOF
    done
}

cmd_show() {
    local prefix="$1" n="$2" i
    check_prefix "$prefix"
    check_index N "$n" 254
    for (( i = 1; i <= n; i++ )); do
        echo "### ${prefix}${i}"
        nsnft "${prefix}${i}" list table inet "$TABLE"
    done
}

main() {
    [[ $# -ge 1 ]] || usage
    local sub="$1"; shift
    case "$sub" in
        create)  [[ $# -eq 2 ]] || usage; cmd_create "$@" ;;
        destroy) [[ $# -eq 2 ]] || usage; cmd_destroy "$@" ;;
        cut)     [[ $# -eq 3 ]] || usage; cmd_cut "$@" ;;
        isolate) [[ $# -eq 3 ]] || usage; cmd_isolate "$@" ;;
        heal)    [[ $# -eq 2 ]] || usage; cmd_heal "$@" ;;
        show)    [[ $# -eq 2 ]] || usage; cmd_show "$@" ;;
        ip)      [[ $# -eq 1 ]] || usage; check_subnet; check_index I "$1" 254; node_ip "$1" ;;
        exec)
            [[ $# -ge 3 ]] || usage
            check_prefix "$1"; check_index I "$2" 254
            require_node "$1$2"
            local ns="$1$2"; shift 2
            # iproute2's `ip netns exec` (without -b/-all) does setns() +
            # unshare(CLONE_NEWNS) and then execvp()s CMD in the same
            # process, so with bash's exec the PID the caller sees is CMD's.
            exec ip netns exec "$ns" "$@"
            ;;
        -h|--help|help) usage ;;
        *) usage ;;
    esac
}

main "$@"
