#!/usr/bin/env bash
# Debian packages the build and the tests need: gcc and clang, with gcc's
# sanitizer runtimes (ASan, UBSan, TSan), Python's headers and venv.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
# clang: the tests build the extension with it too (warnings as errors), as a user on another compiler would
command -v clang >/dev/null || need+=(clang)
# the sanitizer runtimes ship with gcc's libgcc-N-dev; check they link
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'int main(void){return 0;}' > "$probe/p.c"
for s in address,undefined thread; do
  gcc -fsanitize=$s "$probe/p.c" -o "$probe/p" 2>/dev/null || need+=(libasan8 libubsan1 libtsan2)
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
