#!/usr/bin/env bash
# Set up two GB10 boxes (DGX Spark / ThinkStation PGX) cabled back to back over ConnectX-7 for `+topo=dual_pgx`.
# Run it on box A (the one you launch from); it configures A here and B over ssh, and is safe to rerun.
#
#   bash scripts/setup_dual_pgx.sh --peer spark-b.local            # B's current (management) address or name
#   bash scripts/setup_dual_pgx.sh --peer spark-b.local --dry-run  # print what it would do; change and contact nothing
#
# The link as NVIDIA's "Connect two Sparks" playbook sets it up (github.com/NVIDIA/dgx-spark-playbooks,
# nvidia/connect-two-sparks/README.md, revision a6da172c of 2026-07-21): the same QSFP port cabled on both boxes; that
# port's two halves (two PCIe x4 interfaces, enp1s0f1np1 and enP2p1s0f1np1) each on a subnet of its own,
# 192.168.100.10/.11 and 192.168.101.10/.11 /24, written to /etc/netplan/40-cx7.yaml (mode 600, `netplan apply`).
# Added here: MTU 9000 on both halves (RoCE's path MTU follows it), /etc/hosts names, NFS, and a final check.
#
# Steps (--steps, comma list; default all): ssh (passwordless ssh A->B over B's current address; asks B's password
# once), cable (the same port Up on both boxes), link (addresses + MTU), names (/etc/hosts), keys (ssh over the link),
# share (--share DIR over NFS), check (both links: up, MTU, address, jumbo ping, RoCE v2 IPv4 GID on each half's HCA).
# Options: --layout both|one   both halves addressed (default, the playbook's), or only the first (NCCL then uses
#                                 one RDMA device: topo.nccl.ib_hca=rocep1s0f1)
#          --apply netplan|ip  netplan: persistent, as the playbook writes it (default); ip: `ip addr`/`ip link` now,
#                                 gone after a reboot (the playbook's option 2)
#          --ifname enp1s0f1np1 --twin enP2p1s0f1np1 --addr-a 192.168.100.10 --addr-b 192.168.100.11
#          --twin-addr-a 192.168.101.10 --twin-addr-b 192.168.101.11 --prefix 24 --mtu 9000 --name-a pgx-a
#          --name-b pgx-b --share DIR --python PATH --sysfs /sys --sysfs-b /sys (where A's and B's RDMA trees are
#          read: tests give fake ones)
set -euo pipefail

IFNAME=enp1s0f1np1 TWIN=enP2p1s0f1np1 ADDR_A=192.168.100.10 ADDR_B=192.168.100.11 TWIN_A=192.168.101.10
TWIN_B=192.168.101.11 PREFIX=24 MTU=9000 NAME_A=pgx-a NAME_B=pgx-b PEER="" SHARE="" DRY=0 LAYOUT=both APPLY=netplan
STEPS=ssh,cable,link,names,keys,share,check SYSFS=/sys SYSFS_B=""
PYTHON_BIN=${PYTHON:-$(command -v python3 || echo python3)}
NETPLAN=/etc/netplan/40-cx7.yaml OLD_NETPLAN=/etc/netplan/40-launcher-cx7.yaml  # the latter: this script's before
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --peer) PEER=$2; shift ;;           --ifname) IFNAME=$2; shift ;;        --twin) TWIN=$2; shift ;;
      --addr-a) ADDR_A=$2; shift ;;       --addr-b) ADDR_B=$2; shift ;;        --prefix) PREFIX=$2; shift ;;
      --twin-addr-a) TWIN_A=$2; shift ;;  --twin-addr-b) TWIN_B=$2; shift ;;   --mtu) MTU=$2; shift ;;
      --name-a) NAME_A=$2; shift ;;       --name-b) NAME_B=$2; shift ;;        --share) SHARE=$2; shift ;;
      --python) PYTHON_BIN=$2; shift ;;   --layout) LAYOUT=$2; shift ;;        --apply) APPLY=$2; shift ;;
      --steps) STEPS=$2; shift ;;         --sysfs) SYSFS=$2; shift ;;          --sysfs-b) SYSFS_B=$2; shift ;;
      --dry-run) DRY=1 ;;
      -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
      *) die 2 "unknown option $1 (see --help)" ;;
    esac
    shift
  done
  [ -n "$PEER" ] || die 2 "give --peer HOST (box B's current address or name)"
  case "$LAYOUT" in both|one) ;; *) die 2 "--layout $LAYOUT: use both (the playbook's) or one" ;; esac
  case "$APPLY" in netplan|ip) ;; *) die 2 "--apply $APPLY: use netplan (persistent) or ip (until a reboot)" ;; esac
  case "$MTU" in ''|*[!0-9]*) die 2 "--mtu $MTU: give a number such as 9000" ;; esac
}

die() { echo "setup_dual_pgx: $2" >&2; exit "$1"; }
say() { echo "== $*"; }
want() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
run_sh() { if [ "$DRY" = 1 ]; then echo "+ $1"; else bash -c "$1"; fi; }  # a shell line here, or print it
on_b() {  # a shell line on B over its management address; stdin is B's (sudo there may ask for a password)
  local tty=(); [ -t 0 ] && tty=(-t)
  if [ "$DRY" = 1 ]; then echo "+ ssh $PEER $1"; else ssh "${tty[@]}" -o ConnectTimeout=10 "$PEER" "$1"; fi
}
on_b_fn() {  # run one of this script's functions on B: its definition travels on stdin
  if [ "$DRY" = 1 ]; then echo "+ ssh $PEER: $*"; return 0; fi
  { declare -p MTU PREFIX; echo "SYSFS=$(printf %q "${SYSFS_B:-$SYSFS}")"; declare -f "$1" link_facts roce_gid gid_hex
    printf '%q ' "$@"; echo; } |
    ssh -o ConnectTimeout=10 -o BatchMode=yes "$PEER" bash -s
}
halves() { echo "$IFNAME"; [ "$LAYOUT" = one ] || echo "$TWIN"; }  # the interfaces that get an address

# --- the link ------------------------------------------------------------------------------------------------------
netplan_yaml() {  # $1 = this box's first-half address, $2 = its second-half address
  printf 'network:\n  version: 2\n  ethernets:\n'
  printf '    %s:\n      addresses:\n        - %s/%s\n      dhcp4: no\n      mtu: %s\n' "$IFNAME" "$1" "$PREFIX" "$MTU"
  if [ "$LAYOUT" = both ]; then
    printf '    %s:\n      addresses:\n        - %s/%s\n      dhcp4: no\n      mtu: %s\n' "$TWIN" "$2" "$PREFIX" "$MTU"
  else
    printf '    %s:\n      dhcp4: no\n      mtu: %s\n' "$TWIN" "$MTU"
  fi
}
link_cmd() {  # the shell line that configures one box: $1, $2 = its addresses of the two halves
  if [ "$APPLY" = ip ]; then
    local line="$SUDO ip link set dev $IFNAME mtu $MTU up && $SUDO ip addr replace $1/$PREFIX dev $IFNAME"
    line+=" && $SUDO ip link set dev $TWIN mtu $MTU up"
    [ "$LAYOUT" = both ] && line+=" && $SUDO ip addr replace $2/$PREFIX dev $TWIN"
    echo "$line"; return
  fi
  local want; want=$(netplan_yaml "$1" "$2")
  echo "$SUDO rm -f $OLD_NETPLAN; if [ \"\$($SUDO cat $NETPLAN 2>/dev/null)\" != $(printf %q "$want") ]; then" \
       "printf '%s\n' $(printf %q "$want") | $SUDO tee $NETPLAN >/dev/null && $SUDO chmod 600 $NETPLAN &&" \
       "$SUDO netplan apply && echo '   $NETPLAN written and applied'; else echo '   $NETPLAN unchanged'; fi"
}
step_link() {
  local what="$IFNAME $ADDR_A|$ADDR_B/$PREFIX"
  [ "$LAYOUT" = both ] && what+=", $TWIN $TWIN_A|$TWIN_B/$PREFIX" || what+=", $TWIN unaddressed (--layout one)"
  say "link ($APPLY): $what, MTU $MTU on both halves (A|B)"
  if [ "$DRY" = 1 ] && [ "$APPLY" = netplan ]; then
    echo "+ on A: write $NETPLAN (when it differs), then netplan apply:"
    netplan_yaml "$ADDR_A" "$TWIN_A" | sed 's/^/    /'
    echo "+ on B ($PEER): the same with its addresses:"
    netplan_yaml "$ADDR_B" "$TWIN_B" | sed 's/^/    /'
    return
  fi
  run_sh "$(link_cmd "$ADDR_A" "$TWIN_A")"
  on_b "$(link_cmd "$ADDR_B" "$TWIN_B")"
}

# --- the cable -----------------------------------------------------------------------------------------------------
up_ports() {  # the ConnectX-7 interfaces (names ending npN) with a carrier on this box
  local i; for i in /sys/class/net/*np[0-9]; do
    [ "$(cat "$i/carrier" 2>/dev/null)" = 1 ] && echo "${i##*/}"
  done | LC_ALL=C sort | paste -sd ' ' -
}
step_cable() {
  say "cable: the same port Up on both boxes (the playbook: use the same physical port on each device)"
  [ "$DRY" = 1 ] && { echo "+ compare the CX-7 interfaces with a carrier on A and on B ($PEER)"; return; }
  local a b; a=$(up_ports); b=$(on_b_fn up_ports)
  echo "   A: ${a:-none} | B: ${b:-none}"
  [ -n "$a" ] || die 1 "no CX-7 interface of A has a carrier: check the QSFP cable (ibdev2netdev shows Up/Down)"
  [ "$a" = "$b" ] || die 1 "A and B have different ports Up (A: $a; B: ${b:-none}): cable the same port on both boxes"
  case " $a " in
    *" $IFNAME "*) ;;
    *) die 1 "$IFNAME is not Up (Up: $a): pass --ifname/--twin of the cabled port" ;;
  esac
}

# --- the check -----------------------------------------------------------------------------------------------------
gid_hex() {  # 192.168.100.10 -> the IPv4-mapped GID as sysfs writes it
  local a b c d; IFS=. read -r a b c d <<<"$1"
  printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$a" "$b" "$c" "$d"
}
roce_gid() {  # $1 = netdev, $2 = address: "HCA port N GID I" when its RDMA port has a RoCE v2 GID for it
  local nd i base want; want=$(gid_hex "$2")
  for nd in "$SYSFS"/class/infiniband/*/ports/*/gid_attrs/ndevs/*; do
    [ "$(cat "$nd" 2>/dev/null)" = "$1" ] || continue
    i=${nd##*/}; base=${nd%/gid_attrs/ndevs/*}
    if [ "$(cat "$base/gids/$i" 2>/dev/null)" = "$want" ] &&
       [ "$(cat "$base/gid_attrs/types/$i" 2>/dev/null)" = "RoCE v2" ]; then
      base=${base#"$SYSFS"/class/infiniband/}; echo "${base%%/*} port ${base##*/} GID $i"; return 0
    fi
  done
  return 1
}
link_facts() {  # $1 = netdev, $2 = the address it should carry ('' = none): one line per finding, "FAIL" or "ok"
  local dev=$1 addr=$2 mtu carrier gid
  [ -e "/sys/class/net/$dev" ] || { echo "FAIL $(hostname) has no interface $dev"; return; }
  carrier=$(cat "/sys/class/net/$dev/carrier" 2>/dev/null || echo 0); mtu=$(cat "/sys/class/net/$dev/mtu")
  [ "$carrier" = 1 ] && echo "ok $dev has a carrier" || echo "FAIL $dev has no carrier (down or not cabled)"
  [ "$mtu" = "$MTU" ] && echo "ok $dev MTU $mtu" || echo "FAIL $dev MTU $mtu, want $MTU"
  [ -n "$addr" ] || return 0
  ip -o -4 addr show dev "$dev" | grep -q " $addr/$PREFIX " && echo "ok $dev has $addr/$PREFIX" ||
    echo "FAIL $dev lacks $addr/$PREFIX"
  if gid=$(roce_gid "$dev" "$addr"); then echo "ok $gid is RoCE v2 $addr (the GID NCCL selects)"
  elif ls "$SYSFS"/class/infiniband/*/ports/*/gid_attrs/ndevs/* >/dev/null 2>&1; then
    echo "FAIL no RoCE v2 GID for $addr on $dev's RDMA device: NCCL cannot use this half"
  else echo "warn no RDMA device on this box: NCCL would run over TCP sockets"; fi
}
report() {  # prefix each finding with its box; count the failures
  local box=$1 line; while IFS= read -r line; do
    echo "   $box: $line"; case "$line" in FAIL*) FAILS=$((FAILS + 1)) ;; esac
  done
}
step_check() {
  say "check: both boxes, each half in use: carrier, MTU $MTU, address, RoCE v2 GID; jumbo ping A -> B"
  [ "$DRY" = 1 ] && { echo "+ on A and B ($PEER): the link facts; ping -M do -s $((MTU - 28)) over each half"; return; }
  FAILS=0
  local dev a b
  while read -r dev; do
    [ "$dev" = "$IFNAME" ] && { a=$ADDR_A; b=$ADDR_B; } || { a=$TWIN_A; b=$TWIN_B; }
    report A < <(link_facts "$dev" "$a")
    report B < <(on_b_fn link_facts "$dev" "$b")
    if ping -c 3 -i 0.2 -W 2 -M "do" -s $((MTU - 28)) -I "$dev" "$b" >/dev/null 2>&1; then
      echo "   A: ok $MTU-byte ping over $dev to $b"
    else echo "   A: FAIL no $MTU-byte ping over $dev to $b"; FAILS=$((FAILS + 1)); fi
  done < <(halves)
  [ "$LAYOUT" = both ] || { report A < <(link_facts "$TWIN" ""); report B < <(on_b_fn link_facts "$TWIN" ""); }
  if want keys; then
    ssh -o BatchMode=yes -o ConnectTimeout=10 "$ADDR_B" true && echo "   A: ok ssh to $ADDR_B without a password" ||
      { echo "   A: FAIL ssh to $ADDR_B asks for a password"; FAILS=$((FAILS + 1)); }
  fi
  on_b "test -x '$PYTHON_BIN' && test -d '$PWD'" >/dev/null 2>&1 && echo "   B: ok has $PYTHON_BIN and $PWD" ||
    echo "   B: warn lacks $PYTHON_BIN or $PWD (install the environment at the same path, or --share it)"
  [ "$FAILS" = 0 ] || die 1 "$FAILS check(s) failed above"
}

# --- the other steps -----------------------------------------------------------------------------------------------
step_ssh() {
  say "ssh: passwordless from A to B ($PEER); asks B's password once"
  [ -f ~/.ssh/id_ed25519 ] || run_sh "ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519"
  run_sh "ssh-copy-id -i ~/.ssh/id_ed25519.pub $(printf %q "$PEER")"
}
hosts_line() {
  echo "grep -q '^$ADDR_A $NAME_A\$' /etc/hosts || echo '$ADDR_A $NAME_A' | $SUDO tee -a /etc/hosts >/dev/null;" \
       "grep -q '^$ADDR_B $NAME_B\$' /etc/hosts || echo '$ADDR_B $NAME_B' | $SUDO tee -a /etc/hosts >/dev/null"
}
step_names() {
  say "names: $NAME_A=$ADDR_A, $NAME_B=$ADDR_B in /etc/hosts on both"
  run_sh "$(hosts_line)"; on_b "$(hosts_line)"
}
step_keys() {
  say "keys: ssh over the link from A to $ADDR_A and $ADDR_B (pdsh starts the ranks of both boxes, A included)"
  local target; for target in "$ADDR_A" "$ADDR_B" "$NAME_A" "$NAME_B"; do
    run_sh "ssh-keygen -F $target >/dev/null || ssh-keyscan -T 10 $target >> ~/.ssh/known_hosts 2>/dev/null"
  done
  run_sh "grep -qF \"\$(cat ~/.ssh/id_ed25519.pub)\" ~/.ssh/authorized_keys 2>/dev/null || cat ~/.ssh/id_ed25519.pub >> ~/.ssh/authorized_keys"
}
step_share() {
  [ -n "$SHARE" ] || return 0
  say "share: $SHARE from A to B over NFS on the link, mounted at the same path"
  run_sh "dpkg -s nfs-kernel-server >/dev/null 2>&1 || $SUDO apt-get install -y nfs-kernel-server"
  run_sh "grep -q '^$SHARE $ADDR_B(' /etc/exports || echo '$SHARE $ADDR_B(rw,sync,no_subtree_check,no_root_squash)' | $SUDO tee -a /etc/exports >/dev/null; $SUDO exportfs -ra"
  on_b "dpkg -s nfs-common >/dev/null 2>&1 || $SUDO apt-get install -y nfs-common; $SUDO mkdir -p '$SHARE'; grep -q ' $SHARE nfs ' /etc/fstab || echo '$ADDR_A:$SHARE $SHARE nfs defaults,_netdev 0 0' | $SUDO tee -a /etc/fstab >/dev/null; mountpoint -q '$SHARE' || $SUDO mount '$SHARE'"
}

# --- what to launch with -------------------------------------------------------------------------------------------
hca_of() {  # the RDMA device behind a netdev: from sysfs, else by ibdev2netdev's naming (enp1s0f1np1 -> rocep1s0f1)
  local nd; for nd in "$SYSFS"/class/infiniband/*/ports/*/gid_attrs/ndevs/*; do
    [ "$(cat "$nd" 2>/dev/null)" = "$1" ] && { nd=${nd#"$SYSFS"/class/infiniband/}; echo "${nd%%/*}"; return; }
  done
  nd="roce${1#en}"; echo "${nd%np*}"
}
launch_line() {
  local hca="" dev over=""
  while read -r dev; do hca+="${hca:+,}$(hca_of "$dev")"; done < <(halves)
  [ "$hca" = rocep1s0f1,roceP2p1s0f1 ] || over+=" topo.nccl.ib_hca=$hca"
  [ "$IFNAME" = enp1s0f1np1 ] || over+=" topo.socket_ifname=$IFNAME topo.nccl.socket_ifname=$IFNAME"
  [ "$ADDR_A,$ADDR_B" = 192.168.100.10,192.168.100.11 ] ||
    over+=" topo.hosts=[$ADDR_A,$ADDR_B] topo.master_addr=$ADDR_A"
  [ "$MTU" = 9000 ] || over+=" topo.mtu=$MTU"
  echo "== done. NCCL_IB_HCA for the cabled port ($LAYOUT layout): $hca"
  echo "   launch: python -m launcher +topo=dual_pgx$over +plan=zero2"
}

main() {
  parse_args "$@"
  local step; for step in ssh cable link names keys share check; do if want "$step"; then "step_$step"; fi; done
  launch_line
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
