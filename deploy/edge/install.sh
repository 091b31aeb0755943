#!/usr/bin/env bash
# Install the gapwatch edge agent from this directory, with no network.
#
#   sudo ./install.sh [--prefix DIR] [--python PYTHON3.11] [--no-systemd]
#
# Creates the system user gapwatch, /etc/gapwatch (agent.toml, agent.env 0600), /var/lib/gapwatch
# (spool, bundles), a venv in /opt/gapwatch filled from ./wheelhouse (pip --no-index), installs
# and enables gapwatch-agent.service. Re-running upgrades the venv and keeps your agent.toml (the
# new example goes to agent.toml.new). --prefix DIR installs under DIR (paths in the unit are
# rewritten; for tests and staging images); --no-systemd skips the user and systemctl.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
prefix=""
py=""
systemd=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2%/}; shift 2 ;;
    --python) py=$2; shift 2 ;;
    --no-systemd) systemd=0; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$py" ]; then
  py=$(command -v python3.11 || command -v python3 || true)
fi
[ -n "$py" ] || { echo "install.sh: no python3.11 found (apt install python3 python3-venv)" >&2; exit 1; }
pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = "3.11" ] || { echo "install.sh: $py is Python $pyver; the wheelhouse is for 3.11" >&2; exit 1; }
want=$(cat "$here/ARCH")
have=$(uname -m)
[ "$have" = "$want" ] || [ "$have:$want" = "arm64:aarch64" ] || {
  echo "install.sh: this tarball is for $want, this machine is $have" >&2; exit 1; }

venv="$prefix/opt/gapwatch"
etc="$prefix/etc/gapwatch"
state="$prefix/var/lib/gapwatch"
unitdir="$prefix/etc/systemd/system"

if [ "$systemd" = 1 ] && ! id gapwatch >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /var/lib/gapwatch --shell /usr/sbin/nologin gapwatch
fi
install -d -m 0755 "$etc" "$unitdir" "$prefix/opt"
install -d -m 0750 "$state" "$state/bundles"
[ "$systemd" = 1 ] && chown -R gapwatch:gapwatch "$state"

"$py" -m venv --clear "$venv"
PIP_NO_INDEX=1 "$venv/bin/python" -m pip install -q --no-index --find-links "$here/wheelhouse" \
  --disable-pip-version-check 'gapwatch[edge]'

if [ -e "$etc/agent.toml" ]; then
  install -m 0644 "$here/agent.toml" "$etc/agent.toml.new"
  echo "install.sh: kept $etc/agent.toml; the new example is agent.toml.new"
else
  sed -e "s#\"/var/lib/gapwatch#\"$state#" "$here/agent.toml" > "$etc/agent.toml"
  chmod 0644 "$etc/agent.toml"
fi
[ -e "$etc/agent.env" ] || install -m 0600 /dev/null "$etc/agent.env"
sed -e "s#/opt/gapwatch#$venv#g" -e "s#/etc/gapwatch#$etc#g" -e "s#/var/lib/gapwatch#$state#g" \
  "$here/gapwatch-agent.service" > "$unitdir/gapwatch-agent.service"
chmod 0644 "$unitdir/gapwatch-agent.service"

if [ "$systemd" = 1 ] && [ -z "$prefix" ] && command -v systemctl >/dev/null; then
  systemctl daemon-reload
  systemctl enable gapwatch-agent.service
  echo "install.sh: enabled gapwatch-agent; add a bundle under $state/bundles, then"
  echo "            systemctl start gapwatch-agent"
fi
"$venv/bin/gapwatch" agent --config "$etc/agent.toml" --help >/dev/null
echo "install.sh: installed $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("gapwatch"))') into $venv"
