#!/usr/bin/env bash
# Install the Debian packages listed in .ci/apt-packages.txt when they are missing (needs root
# and apt-get). Without them the tests that need them skip with a reason; nothing else breaks.
set -u
list="$(dirname "$0")/../.ci/apt-packages.txt"
[ -f "$list" ] || exit 0
missing=""
while read -r pkg; do
  [ -z "$pkg" ] && continue
  case "$pkg" in \#*) continue ;; esac
  command -v "$pkg" >/dev/null 2>&1 || dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done < "$list"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages:$missing"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null 2>&1 \
    || echo "warning: could not install$missing; tests that need them will skip"
else
  echo "note: missing system packages:$missing (install them to run the streaming tests; they skip otherwise)"
fi
exit 0
