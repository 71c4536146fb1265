#!/usr/bin/env bash
# Set up two GB10 boxes (DGX Spark / ThinkStation PGX) cabled back to back over ConnectX-7 for `+topo=dual_pgx`.
# Run it on box A (the one you launch from); it configures A locally and B over ssh, and is safe to rerun:
# every step checks first and changes only what differs.
#
#   bash scripts/setup_dual_pgx.sh --peer spark-b.local            # B's current (management) address or name
#   bash scripts/setup_dual_pgx.sh --peer spark-b.local --dry-run  # print what it would do; change and contact nothing
#
# Steps: 0. ssh A->B (once, with B's password); 1. the link: static address + MTU on the cabled CX-7 port (netplan), on A and B; 2. host names for the link
# addresses in /etc/hosts on both; 3. passwordless ssh A->A and A->B over the link (pdsh reaches both, A included);
# 4. optionally share a directory from A to B over NFS at the same path (--share DIR: the checkout, venv and runs);
# 5. checks: jumbo ping over the link, ssh, the same python on B; then it prints the NCCL_IB_HCA that matches the
# port actually cabled and the launch command.
# Options (defaults = conf/topo/dual_pgx.yaml): --ifname enp1s0f1np1 --twin enP2p1s0f1np1 --addr-a 192.168.100.10
#   --addr-b 192.168.100.11 --prefix 24 --mtu 9000 --name-a pgx-a --name-b pgx-b --share DIR --python PATH
set -euo pipefail

IFNAME=enp1s0f1np1 TWIN=enP2p1s0f1np1 ADDR_A=192.168.100.10 ADDR_B=192.168.100.11 PREFIX=24 MTU=9000
NAME_A=pgx-a NAME_B=pgx-b PEER="" SHARE="" DRY=0 PYTHON_BIN=${PYTHON:-$(command -v python3 || echo python3)}
NETPLAN=/etc/netplan/40-launcher-cx7.yaml
while [ $# -gt 0 ]; do
  case "$1" in
    --peer) PEER=$2; shift ;;          --ifname) IFNAME=$2; shift ;;    --twin) TWIN=$2; shift ;;
    --addr-a) ADDR_A=$2; shift ;;      --addr-b) ADDR_B=$2; shift ;;    --prefix) PREFIX=$2; shift ;;
    --mtu) MTU=$2; shift ;;            --name-a) NAME_A=$2; shift ;;    --name-b) NAME_B=$2; shift ;;
    --share) SHARE=$2; shift ;;        --python) PYTHON_BIN=$2; shift ;; --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "setup_dual_pgx: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$PEER" ] || { echo "setup_dual_pgx: give --peer HOST (box B's current address or name)" >&2; exit 2; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

say() { echo "== $*"; }
run() {  # run a command here, or print it on a dry run
  if [ "$DRY" = 1 ]; then printf '+'; printf ' %q' "$@"; echo; else "$@"; fi
}
run_sh() {  # a shell line here, or print it on a dry run
  if [ "$DRY" = 1 ]; then echo "+ $1"; else bash -c "$1"; fi
}
on_b() {  # run a shell command on B (over the management address until the link is up)
  local target=${B_TARGET:-$PEER}
  local tty=(); [ -t 0 ] && tty=(-t)  # sudo on B may ask for a password
  if [ "$DRY" = 1 ]; then echo "+ ssh $target $1"; else ssh "${tty[@]}" -o ConnectTimeout=10 "$target" "$1"; fi
}
netplan_yaml() {  # $1 = this box's link address
  printf 'network:\n  version: 2\n  ethernets:\n    %s:\n      dhcp4: false\n      addresses: [%s/%s]\n      mtu: %s\n' \
    "$IFNAME" "$1" "$PREFIX" "$MTU"
  printf '    %s:\n      dhcp4: false\n      optional: true\n      mtu: %s\n' "$TWIN" "$MTU"
}
apply_netplan() {  # $1 = address, $2 = "A" or "B (...)": write the file only when it differs, then apply
  local want; want=$(netplan_yaml "$1")
  local cmd="if [ \"\$(cat $NETPLAN 2>/dev/null)\" != $(printf %q "$want") ]; then printf '%s\n' $(printf %q "$want") | $SUDO tee $NETPLAN >/dev/null && $SUDO chmod 600 $NETPLAN && $SUDO netplan apply && echo changed; else echo unchanged; fi"
  if [ "$DRY" = 1 ]; then
    echo "+ on $2: write $NETPLAN (when it differs), then netplan apply:"; echo "$want" | sed 's/^/    /'
  elif [ "$2" = A ]; then bash -c "$cmd"
  else on_b "$cmd"; fi
}
hosts_line() { echo "grep -q '^$ADDR_A $NAME_A\$' /etc/hosts || echo '$ADDR_A $NAME_A' | $SUDO tee -a /etc/hosts >/dev/null; grep -q '^$ADDR_B $NAME_B\$' /etc/hosts || echo '$ADDR_B $NAME_B' | $SUDO tee -a /etc/hosts >/dev/null"; }

say "0. passwordless ssh from A to B ($PEER): asks B's password once"
[ -f ~/.ssh/id_ed25519 ] || run ssh-keygen -q -t ed25519 -N "" -f ~/.ssh/id_ed25519
run ssh-copy-id -i ~/.ssh/id_ed25519.pub "$PEER"

say "1. link: $IFNAME (+ twin $TWIN) at $ADDR_A/$PREFIX (A) and $ADDR_B/$PREFIX (B), MTU $MTU"
if [ ! -e "/sys/class/net/$IFNAME" ]; then
  msg="this box has no interface $IFNAME: run \`ibdev2netdev\` and pass --ifname/--twin of the port that is Up"
  if [ "$DRY" = 1 ]; then echo "   note: $msg"; else echo "setup_dual_pgx: $msg" >&2; exit 1; fi
fi
apply_netplan "$ADDR_A" A
apply_netplan "$ADDR_B" "B ($PEER)"

say "2. host names: $NAME_A=$ADDR_A, $NAME_B=$ADDR_B in /etc/hosts on both"
run_sh "$(hosts_line)"
on_b "$(hosts_line)"


say "3. ssh over the link from A to $ADDR_A and $ADDR_B (pdsh starts the ranks of both boxes, A included)"
for target in "$ADDR_A" "$ADDR_B" "$NAME_A" "$NAME_B"; do
  run_sh "ssh-keygen -F $target >/dev/null || ssh-keyscan -T 10 $target >> ~/.ssh/known_hosts 2>/dev/null"
done
run_sh "grep -qF \"\$(cat ~/.ssh/id_ed25519.pub)\" ~/.ssh/authorized_keys 2>/dev/null || cat ~/.ssh/id_ed25519.pub >> ~/.ssh/authorized_keys"
B_TARGET=$ADDR_B

if [ -n "$SHARE" ]; then
  say "4. share $SHARE from A to B over NFS on the link, mounted at the same path"
  run_sh "dpkg -s nfs-kernel-server >/dev/null 2>&1 || $SUDO apt-get install -y nfs-kernel-server"
  run_sh "grep -q '^$SHARE $ADDR_B(' /etc/exports || echo '$SHARE $ADDR_B(rw,sync,no_subtree_check,no_root_squash)' | $SUDO tee -a /etc/exports >/dev/null; $SUDO exportfs -ra"
  on_b "dpkg -s nfs-common >/dev/null 2>&1 || $SUDO apt-get install -y nfs-common; $SUDO mkdir -p '$SHARE'; grep -q ' $SHARE nfs ' /etc/fstab || echo '$ADDR_A:$SHARE $SHARE nfs defaults,_netdev 0 0' | $SUDO tee -a /etc/fstab >/dev/null; mountpoint -q '$SHARE' || $SUDO mount '$SHARE'"
fi

say "5. checks over the link"
run ping -c 3 -W 2 -M do -s $((MTU - 28)) "$ADDR_B"
run ssh -o BatchMode=yes -o ConnectTimeout=10 "$ADDR_A" true
on_b "test -x '$PYTHON_BIN' && test -d '$PWD' && echo 'B has $PYTHON_BIN and $PWD'"
hca=""
for dev in "$IFNAME" "$TWIN"; do
  for ib in /sys/class/net/"$dev"/device/infiniband/*; do [ -e "$ib" ] && hca="${hca:+$hca,}$(basename "$ib")"; done
done
say "done. NCCL_IB_HCA for the cabled port: ${hca:-rocep1s0f1,roceP2p1s0f1 (default; not found on this box)}"
echo "   launch: python -m launcher +topo=dual_pgx${hca:+ topo.nccl.ib_hca=$hca} +plan=zero2"
